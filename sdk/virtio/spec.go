// Package virtio is the plugin side of virtio devices for wasmvmm: the
// modern virtio-mmio transport (version 2, virtio 1.2 §4.2.2) and split
// virtqueues (§2.7), with feature negotiation, config space with a
// generation counter, interrupt status on a level-triggered line, and
// DEVICE_NEEDS_RESET for guest errors the device cannot recover from.
//
// A device (virtio-blk, virtio-net, ...) creates one Transport in Realize,
// gives it the places of its migrated state (a TransportState and one
// QueueState per queue, both fields of the device's package-level vmstate
// struct), and forwards its MMIO accesses to Transport.MMIORead and
// MMIOWrite. The transport calls the device back through Handler: config
// space reads and writes, queue notifications, reset.
//
// Guest memory is reached only through Memory: HostMemory uses the SDK's
// host calls (guest_read, guest_load, guest_store); ByteMemory is a []byte
// for tests and fuzzing on the developer's machine. The chain walker
// (Queue.Pop, WalkChain) trusts nothing it reads from guest memory:
// descriptor loops, chains longer than the queue, nested indirect tables,
// out-of-range indices, addresses that wrap and lengths over the limits
// are errors, never hangs or traps.
//
// Payloads never pass through the plugin: a Chain carries its driver-readable
// and device-writable buffers as sdk.SGEntry lists for the host's
// scatter-gather calls (backend_pread_sg, guest_read_sg, ...).
package virtio

// MMIO register offsets of the modern (version 2) transport.
const (
	RegMagicValue        = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegSHMSel            = 0x0ac
	RegSHMLenLow         = 0x0b0
	RegSHMLenHigh        = 0x0b4
	RegSHMBaseLow        = 0x0b8
	RegSHMBaseHigh       = 0x0bc
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100
)

// MagicValue is "virt" in little endian; MMIOVersion is the modern
// transport's version register.
const (
	MagicValue  = 0x74726976
	MMIOVersion = 2
)

// RegionSize is the size of a virtio-mmio register window: registers up to
// 0x100, then up to 0x100 bytes of device config space.
const RegionSize = 0x200

// MaxConfigSize is the largest config space a device behind this transport
// can have.
const MaxConfigSize = RegionSize - RegConfig

// Device status bits (§2.1).
const (
	StatusAcknowledge      = 0x01
	StatusDriver           = 0x02
	StatusDriverOK         = 0x04
	StatusFeaturesOK       = 0x08
	StatusDeviceNeedsReset = 0x40
	StatusFailed           = 0x80
)

// Interrupt status bits.
const (
	InterruptUsedBuffer   = 0x1
	InterruptConfigChange = 0x2
)

// Transport feature bits (§6).
const (
	FIndirectDesc = 28
	FEventIdx     = 29
	FVersion1     = 32
)

// Descriptor flags (§2.7.5).
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4
)

// Ring flags.
const (
	AvailFNoInterrupt = 1 // driver → device: do not interrupt (no EVENT_IDX)
	UsedFNoNotify     = 1 // device → driver: do not notify (no EVENT_IDX)
)

// Sizes of split-ring structures.
const (
	DescSize      = 16
	UsedElemSize  = 8
	MaxQueueSize  = 32768
	descAlign     = 16
	availAlign    = 2
	usedAlign     = 4
	ringHeaderLen = 4 // flags u16 + idx u16
)

// Feature returns the feature bit mask of bit.
func Feature(bit uint) uint64 { return 1 << bit }

// AvailSize returns the bytes of a driver area (available ring) for a
// queue of n entries, including used_event.
func AvailSize(n uint16) uint64 { return ringHeaderLen + 2*uint64(n) + 2 }

// UsedSize returns the bytes of a device area (used ring) for a queue of n
// entries, including avail_event.
func UsedSize(n uint16) uint64 { return ringHeaderLen + UsedElemSize*uint64(n) + 2 }

// DescTableSize returns the bytes of a descriptor table of n entries.
func DescTableSize(n uint16) uint64 { return DescSize * uint64(n) }

// NeedEvent is vring_need_event (§2.7.7.2): whether moving the index from
// old to newIdx passes event, with 16-bit wrap-around.
func NeedEvent(event, newIdx, old uint16) bool {
	return newIdx-event-1 < newIdx-old
}
