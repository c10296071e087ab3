package virtio

import (
	"encoding/binary"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
)

// Handler is the device behind a transport.
type Handler interface {
	// ReadConfig fills p with the config space bytes at offset; the
	// transport keeps offset+len(p) within Config.ConfigSize.
	ReadConfig(offset uint32, p []byte)
	// WriteConfig handles a driver write to config space. An error (e.g. a
	// write to a read-only field) is logged, rate-limited, and the write is
	// dropped.
	WriteConfig(offset uint32, p []byte) error
	// QueueNotify runs when the driver notified a ready queue while the
	// device is live (DRIVER_OK, no NEEDS_RESET). The device pops chains,
	// pushes used entries and calls Queue.Signal.
	QueueNotify(q *Queue)
	// Reset returns the device-specific state to its power-on values; the
	// transport has reset its own state.
	Reset()
}

// VendorID is the vendor id the transport reports unless configured: "WVMM".
const VendorID = 0x4d4d5657

// TransportFeatures are the transport features every device offers.
const TransportFeatures = 1<<FVersion1 | 1<<FIndirectDesc | 1<<FEventIdx

// Config describes a device to its transport.
type Config struct {
	Name       string // for log messages, e.g. "virtio-blk"
	DeviceID   uint32 // virtio device id (§5), e.g. 2 for block
	VendorID   uint32 // zero means VendorID
	Features   uint64 // device-specific feature bits; TransportFeatures are added
	ConfigSize uint32 // bytes of config space, at most MaxConfigSize
	// QueueSizes is the maximum size of each queue (a power of two, at most
	// MaxQueueSize); the device has len(QueueSizes) queues.
	QueueSizes []uint16
	// Limits bounds every chain (Indirect is set from the negotiated
	// features).
	Limits Limits
	// Memory, IRQ, Log and Now default to the SDK's host calls: guest
	// memory, interrupt line 0, the host log and the VM clock.
	Memory Memory
	IRQ    func(level bool) error
	Log    func(level abi.LogLevel, msg string)
	Now    func() int64
}

// Transport is one virtio-mmio transport instance.
type Transport struct {
	cfg      Config
	st       *TransportState
	queues   []Queue
	h        Handler
	offered  uint64
	irqLevel bool
	irqKnown bool
	scratch  []byte // ring checks
	cfgBuf   [8]byte
	limit    rateLimiter
}

// NewTransport creates a transport over state st and one QueueState per
// queue (len(queues) must equal len(cfg.QueueSizes)); both live in the
// device's vmstate struct. The transport starts in its reset state.
func NewTransport(cfg Config, st *TransportState, queues []QueueState, h Handler) (*Transport, error) {
	if st == nil || h == nil {
		return nil, errors.New("virtio: nil state or handler")
	}
	if len(queues) != len(cfg.QueueSizes) || len(queues) == 0 {
		return nil, tinyfmt.Errorf("virtio %s: %d queue states for %d queues", cfg.Name, len(queues), len(cfg.QueueSizes))
	}
	if cfg.ConfigSize > MaxConfigSize {
		return nil, tinyfmt.Errorf("virtio %s: config space of %d bytes exceeds %d", cfg.Name, cfg.ConfigSize, MaxConfigSize)
	}
	largest := uint16(0)
	for i, n := range cfg.QueueSizes {
		if n == 0 || n&(n-1) != 0 || n > MaxQueueSize {
			return nil, tinyfmt.Errorf("virtio %s: queue %d size %d is not a power of two up to %d", cfg.Name, i, n, MaxQueueSize)
		}
		largest = max(largest, n)
	}
	if cfg.VendorID == 0 {
		cfg.VendorID = VendorID
	}
	if cfg.Memory == nil {
		cfg.Memory = HostMemory{}
	}
	if cfg.IRQ == nil {
		cfg.IRQ = sdk.IRQ(0).Set
	}
	if cfg.Log == nil {
		cfg.Log = sdk.Log
	}
	if cfg.Now == nil {
		cfg.Now = sdk.Now
	}
	t := &Transport{cfg: cfg, st: st, h: h, offered: cfg.Features | TransportFeatures}
	t.scratch = make([]byte, DescTableSize(largest))
	t.limit.now = cfg.Now
	t.queues = make([]Queue, len(queues))
	for i := range queues {
		q := &t.queues[i]
		q.t, q.index, q.st, q.max = t, i, &queues[i], cfg.QueueSizes[i]
		q.walker.Mem = cfg.Memory
		md := cfg.Limits.maxDescriptors()
		q.chain.Readable = make([]sdk.SGEntry, 0, md)
		q.chain.Writable = make([]sdk.SGEntry, 0, md)
	}
	t.resetState()
	return t, nil
}

// Queue returns queue i, or nil.
func (t *Transport) Queue(i int) *Queue {
	if i < 0 || i >= len(t.queues) {
		return nil
	}
	return &t.queues[i]
}

// NumQueues returns the number of queues.
func (t *Transport) NumQueues() int { return len(t.queues) }

// OfferedFeatures returns every feature bit the device offers.
func (t *Transport) OfferedFeatures() uint64 { return t.offered }

// Features returns the negotiated features (zero before FEATURES_OK).
func (t *Transport) Features() uint64 {
	if t.st.Status&StatusFeaturesOK == 0 {
		return 0
	}
	return t.st.DriverFeatures
}

// HasFeature reports whether feature bit was negotiated.
func (t *Transport) HasFeature(bit uint) bool { return t.Features()&(1<<bit) != 0 }

// Live reports whether the driver is running the device: DRIVER_OK set
// and DEVICE_NEEDS_RESET clear.
func (t *Transport) Live() bool {
	return t.st.Status&(StatusDriverOK|StatusDeviceNeedsReset) == StatusDriverOK
}

// NeedsReset reports whether the device has set DEVICE_NEEDS_RESET.
func (t *Transport) NeedsReset() bool { return t.st.Status&StatusDeviceNeedsReset != 0 }

// Reset is a system reset: the transport and the device return to their
// power-on state and the interrupt line drops.
func (t *Transport) Reset() {
	t.resetState()
	t.h.Reset()
	t.irqKnown = false
	t.updateIRQ()
}

func (t *Transport) resetState() {
	gen := t.st.ConfigGeneration
	*t.st = TransportState{DeviceFeatures: t.offered, ConfigGeneration: gen}
	for i := range t.queues {
		q := &t.queues[i]
		*q.st = QueueState{Num: q.max}
	}
}

// ConfigChanged tells the driver that config space changed: the generation
// counter moves and, once the driver is running, a config-change
// interrupt is raised.
func (t *Transport) ConfigChanged() {
	t.st.ConfigGeneration++
	if t.st.Status&StatusDriverOK != 0 {
		t.interrupt(InterruptConfigChange)
	}
}

// SetNeedsReset marks the device broken after an error it cannot recover
// from: DEVICE_NEEDS_RESET is set, queues are no longer processed, and the
// driver gets a config-change interrupt if it is running (§2.1.2). The
// reason is logged, rate-limited by key.
func (t *Transport) SetNeedsReset(key, reason string) {
	t.Logf(abi.LogWarn, key, "%s", reason)
	if t.st.Status&StatusDeviceNeedsReset != 0 {
		return
	}
	t.st.Status |= StatusDeviceNeedsReset
	if t.st.Status&StatusDriverOK != 0 {
		t.interrupt(InterruptConfigChange)
	}
}

// interrupt sets ISR bits and raises the line.
func (t *Transport) interrupt(bits uint8) {
	t.st.ISR |= bits
	t.updateIRQ()
}

func (t *Transport) updateIRQ() {
	level := t.st.ISR != 0
	if t.irqKnown && level == t.irqLevel {
		return
	}
	if err := t.cfg.IRQ(level); err != nil {
		t.Logf(abi.LogError, "irq", "interrupt line: %v", err)
		return
	}
	t.irqLevel, t.irqKnown = level, true
}

// Logf logs a message about the guest's use of the device, rate-limited
// per key: the first one, then at most one per interval with the count of
// those suppressed. Keys are constant strings (e.g. "chain").
func (t *Transport) Logf(level abi.LogLevel, key, format string, args ...any) {
	ok, suppressed := t.limit.allow(key)
	if !ok {
		return
	}
	msg := tinyfmt.Sprintf(format, args...)
	if suppressed > 0 {
		msg = tinyfmt.Sprintf("%s (%d similar messages suppressed)", msg, suppressed)
	}
	t.cfg.Log(level, t.cfg.Name+": "+msg)
}

// MMIORead handles a read of the transport's region.
func (t *Transport) MMIORead(offset uint64, size int) uint64 {
	if offset >= RegConfig {
		return t.readConfig(offset-RegConfig, size)
	}
	if size != 4 || offset%4 != 0 {
		t.Logf(abi.LogWarn, "access", "%d-byte read at register offset %#x: registers take aligned 32-bit accesses", size, offset)
		return 0
	}
	st := t.st
	q := t.selected()
	switch offset {
	case RegMagicValue:
		return MagicValue
	case RegVersion:
		return MMIOVersion
	case RegDeviceID:
		return uint64(t.cfg.DeviceID)
	case RegVendorID:
		return uint64(t.cfg.VendorID)
	case RegDeviceFeatures:
		switch st.DeviceFeaturesSel {
		case 0:
			return t.offered & 0xffffffff
		case 1:
			return t.offered >> 32
		}
		return 0
	case RegQueueNumMax:
		if q == nil {
			return 0
		}
		return uint64(q.max)
	case RegQueueNum:
		if q == nil {
			return 0
		}
		return uint64(q.st.Num)
	case RegQueueReady:
		if q != nil && q.st.Ready {
			return 1
		}
		return 0
	case RegInterruptStatus:
		return uint64(st.ISR)
	case RegStatus:
		return uint64(st.Status)
	case RegQueueDescLow, RegQueueDescHigh, RegQueueDriverLow, RegQueueDriverHigh, RegQueueDeviceLow, RegQueueDeviceHigh:
		if q == nil {
			return 0
		}
		return q.addrReg(offset)
	case RegSHMLenLow, RegSHMLenHigh:
		return 0xffffffff // no shared memory regions
	case RegConfigGeneration:
		return uint64(st.ConfigGeneration)
	}
	t.Logf(abi.LogWarn, "access", "read of write-only or unknown register %#x", offset)
	return 0
}

// MMIOWrite handles a write to the transport's region.
func (t *Transport) MMIOWrite(offset uint64, size int, v uint64) {
	if offset >= RegConfig {
		t.writeConfig(offset-RegConfig, size, v)
		return
	}
	if size != 4 || offset%4 != 0 {
		t.Logf(abi.LogWarn, "access", "%d-byte write at register offset %#x ignored: registers take aligned 32-bit accesses", size, offset)
		return
	}
	val := uint32(v)
	st := t.st
	switch offset {
	case RegDeviceFeaturesSel:
		st.DeviceFeaturesSel = val
	case RegDriverFeaturesSel:
		st.DriverFeaturesSel = val
	case RegDriverFeatures:
		t.writeDriverFeatures(val)
	case RegQueueSel:
		st.QueueSel = val
	case RegQueueNum, RegQueueDescLow, RegQueueDescHigh, RegQueueDriverLow, RegQueueDriverHigh, RegQueueDeviceLow, RegQueueDeviceHigh:
		q := t.selected()
		if q == nil {
			t.Logf(abi.LogWarn, "queue-sel", "write to register %#x for queue %d, which does not exist", offset, st.QueueSel)
			return
		}
		if q.st.Ready {
			t.Logf(abi.LogWarn, "queue-ready", "write to register %#x of queue %d while it is ready ignored", offset, q.index)
			return
		}
		if offset == RegQueueNum {
			if val > MaxQueueSize {
				val = 0 // refused when the queue is enabled
			}
			q.st.Num = uint16(val)
			return
		}
		q.setAddrReg(offset, val)
	case RegQueueReady:
		q := t.selected()
		if q == nil {
			t.Logf(abi.LogWarn, "queue-sel", "QueueReady for queue %d, which does not exist", st.QueueSel)
			return
		}
		q.setReady(val&1 != 0)
	case RegQueueNotify:
		t.notify(val)
	case RegInterruptACK:
		st.ISR &^= uint8(val)
		t.updateIRQ()
	case RegStatus:
		t.writeStatus(uint8(val))
	case RegSHMSel:
		// No shared memory regions: lengths read as -1 for every selector.
	default:
		t.Logf(abi.LogWarn, "access", "write of %#x to read-only or unknown register %#x ignored", val, offset)
	}
}

func (t *Transport) selected() *Queue {
	if t.st.QueueSel >= uint32(len(t.queues)) {
		return nil
	}
	return &t.queues[t.st.QueueSel]
}

func (t *Transport) writeDriverFeatures(val uint32) {
	st := t.st
	if st.Status&StatusFeaturesOK != 0 {
		t.Logf(abi.LogWarn, "features", "driver features written after FEATURES_OK ignored")
		return
	}
	switch st.DriverFeaturesSel {
	case 0:
		st.DriverFeatures = st.DriverFeatures&^0xffffffff | uint64(val)
	case 1:
		st.DriverFeatures = st.DriverFeatures&0xffffffff | uint64(val)<<32
	default:
		if val != 0 {
			t.Logf(abi.LogWarn, "features", "driver accepts features %#x in bank %d, which the device does not offer", val, st.DriverFeaturesSel)
		}
	}
}

func (t *Transport) writeStatus(v uint8) {
	st := t.st
	if v == 0 {
		t.resetState()
		t.h.Reset()
		t.updateIRQ()
		return
	}
	v |= st.Status // bits stay set until a reset (§2.1: the driver never clears them)
	if v&StatusFeaturesOK != 0 && st.Status&StatusFeaturesOK == 0 {
		if err := t.checkFeatures(st.DriverFeatures); err != nil {
			t.Logf(abi.LogWarn, "features", "FEATURES_OK refused: %v", err)
			v &^= StatusFeaturesOK
		}
	}
	if v&StatusDriverOK != 0 && v&StatusFeaturesOK == 0 && st.Status&StatusDriverOK == 0 {
		st.Status = v &^ StatusDriverOK
		t.SetNeedsReset("status", "DRIVER_OK without FEATURES_OK")
		return
	}
	st.Status = v
}

// checkFeatures says why a driver's feature set is unacceptable, or nil.
func (t *Transport) checkFeatures(f uint64) error {
	if extra := f &^ t.offered; extra != 0 {
		return tinyfmt.Errorf("driver accepts features %#x the device does not offer (offered %#x)", extra, t.offered)
	}
	if f&(1<<FVersion1) == 0 {
		return errors.New("VIRTIO_F_VERSION_1 not accepted (legacy drivers are not supported)")
	}
	return nil
}

func (t *Transport) notify(v uint32) {
	idx := v & 0xffff
	if idx >= uint32(len(t.queues)) {
		t.Logf(abi.LogWarn, "notify", "notification for queue %d, which does not exist", idx)
		return
	}
	q := &t.queues[idx]
	if !t.Live() || !q.st.Ready {
		return
	}
	t.h.QueueNotify(q)
}

func (t *Transport) readConfig(off uint64, size int) uint64 {
	if !validSize(size) {
		return 0
	}
	buf := t.cfgBuf[:size]
	clear(buf)
	if off < uint64(t.cfg.ConfigSize) {
		n := min(uint64(size), uint64(t.cfg.ConfigSize)-off)
		t.h.ReadConfig(uint32(off), buf[:n])
	}
	var w [8]byte
	copy(w[:], buf)
	return binary.LittleEndian.Uint64(w[:])
}

func (t *Transport) writeConfig(off uint64, size int, v uint64) {
	if !validSize(size) || off+uint64(size) > uint64(t.cfg.ConfigSize) {
		t.Logf(abi.LogWarn, "config", "%d-byte config write at %#x outside the %d-byte config space ignored", size, off, t.cfg.ConfigSize)
		return
	}
	binary.LittleEndian.PutUint64(t.cfgBuf[:], v)
	if err := t.h.WriteConfig(uint32(off), t.cfgBuf[:size]); err != nil {
		t.Logf(abi.LogWarn, "config", "config write at %#x ignored: %v", off, err)
	}
}

// PostLoad checks state just loaded from a migration stream and brings the
// interrupt line to its level. A device calls it from its PostLoad.
func (t *Transport) PostLoad() error {
	st := t.st
	if st.Status&StatusFeaturesOK != 0 {
		if err := t.checkFeatures(st.DriverFeatures); err != nil {
			return tinyfmt.Errorf("virtio %s: loaded state: %w", t.cfg.Name, err)
		}
	}
	st.DeviceFeatures = t.offered
	for i := range t.queues {
		q := &t.queues[i]
		if !q.st.Ready {
			continue
		}
		if err := q.check(); err != nil {
			return tinyfmt.Errorf("virtio %s: loaded state: queue %d: %w", t.cfg.Name, i, err)
		}
	}
	t.irqKnown = false
	t.updateIRQ()
	return nil
}
