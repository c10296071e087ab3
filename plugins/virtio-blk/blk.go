// Command virtio-blk is the wasmvmm plugin for a virtio block device
// (virtio 1.2 §5.2) on the modern virtio-mmio transport (sdk/virtio): one
// MMIO region of virtio.RegionSize (0x200) bytes, one level-triggered
// interrupt line, one request queue of 256 entries, and a block backend
// named "disk" (a raw image).
//
// Requests: IN, OUT, FLUSH, GET_ID (the "serial" property, 20 bytes),
// DISCARD and WRITE_ZEROES. Features: VIRTIO_BLK_F_SEG_MAX, BLK_SIZE (512),
// FLUSH, DISCARD and WRITE_ZEROES, and RO when the "readonly" property is
// set (then without DISCARD and WRITE_ZEROES); VIRTIO_F_VERSION_1,
// INDIRECT_DESC and EVENT_IDX from the transport. Payloads move between
// guest memory and the image in the host (backend_pread_sg,
// backend_pwrite_sg); the plugin only walks descriptors.
//
// Every request completes synchronously inside the queue notification that
// submitted it: nothing is ever in flight between two calls into the plugin,
// so there is nothing to drain before a migration saves the state.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (see
// host/pluginbuild).
package main

import (
	"encoding/binary"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

func main() {}

// Device id and feature bits (§5.2.3).
const (
	deviceID = 2

	fSegMax      = 2
	fRO          = 5
	fBlkSize     = 6
	fFlush       = 9
	fDiscard     = 13
	fWriteZeroes = 14
)

// Request types and status values (§5.2.6).
const (
	reqIn          = 0
	reqOut         = 1
	reqFlush       = 4
	reqGetID       = 8
	reqDiscard     = 11
	reqWriteZeroes = 13

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2
)

// Limits of this device.
const (
	sectorSize = 512
	queueSize  = 256
	// segMax is the most data segments per request the driver may use: the
	// queue size less the header and status descriptors.
	segMax = queueSize - 2
	// maxRequestBytes bounds the data of one read or write, so that one
	// request stays far inside the host's per-call deadline. Linux sends at
	// most max_sectors_kb (1280 KiB by default).
	maxRequestBytes = 64 << 20
	// maxDiscardSectors and maxWriteZeroesSectors bound one segment of a
	// discard or write-zeroes request (1 GiB and 64 MiB).
	maxDiscardSectors     = 1 << 21
	maxWriteZeroesSectors = 1 << 17
	// notifyBudget bounds the data one call into the plugin moves, so that a
	// guest queueing many large requests cannot run a call past the host's
	// deadline; the rest continues from a timer (continueTimer).
	notifyBudget = 128 << 20
	// maxRangeSegs bounds the segments of one discard or write-zeroes
	// request.
	maxRangeSegs = 16
	rangeSegSize = 16
	headerSize   = 16
	idBytes      = 20
	// configSize covers struct virtio_blk_config up to write_zeroes_may_unmap
	// and its padding.
	configSize = 60
)

// continueTimer resumes queue processing that stopped at notifyBudget.
const continueTimer sdk.Timer = 0

// Offsets in the config space (struct virtio_blk_config).
const (
	cfgCapacity              = 0
	cfgSegMax                = 12
	cfgBlkSize               = 20
	cfgMaxDiscardSectors     = 36
	cfgMaxDiscardSeg         = 40
	cfgDiscardAlignment      = 44
	cfgMaxWriteZeroesSectors = 48
	cfgMaxWriteZeroesSeg     = 52
)

// blkState is the migrated state: section "virtio-blk".
type blkState struct {
	Transport virtio.TransportState `vmstate:"transport"`
	Queues    [1]virtio.QueueState  `vmstate:"queues"`
	// Capacity in sectors when saved: a destination whose image has
	// another size refuses the state.
	Capacity uint64 `vmstate:"capacity"`
}

var (
	st blkState

	readonly = sdk.Bool("readonly", false, "refuse writes and offer VIRTIO_BLK_F_RO")
	serial   = sdk.String("serial", "", "device serial number returned by GET_ID (at most 20 bytes)")
	numQ     = sdk.U16("num_queues", 1, "number of request queues (only 1 is supported)")

	_ = sdk.VMState("virtio-blk", &st, sdk.Version(1), sdk.InstanceAny)
)

// blk holds what is not migrated: the backend, the transport and scratch
// buffers, all set up again by realize.
type blk struct {
	disk     *sdk.Backend
	t        *virtio.Transport
	capacity uint64 // sectors
	config   [configSize]byte
	id       [idBytes]byte
	hdr      [headerSize]byte
	ranges   [maxRangeSegs * rangeSegSize]byte
	sg       []sdk.SGEntry
	moved    uint64 // data bytes moved in the current call
}

func init() {
	sdk.Register("virtio-blk", "1.0.0", &blk{sg: make([]sdk.SGEntry, 0, abi.MaxSGEntries)})
}

// Realize adds the register window, opens the "disk" backend and sets up the
// transport.
func (d *blk) Realize(r *sdk.Realizer) error {
	if numQ.Get() != 1 {
		return tinyfmt.Errorf("property num_queues is %d; this device supports 1 queue", numQ.Get())
	}
	if len(serial.Get()) > idBytes {
		return tinyfmt.Errorf("property serial %q is %d bytes; at most %d fit", serial.Get(), len(serial.Get()), idBytes)
	}
	copy(d.id[:], serial.Get())
	if _, err := r.AddMMIO(virtio.RegionSize); err != nil {
		return err
	}
	disk, err := sdk.OpenBackend(abi.BackendBlock, "disk")
	if err != nil {
		return tinyfmt.Errorf("virtio-blk needs a block backend named \"disk\": %w", err)
	}
	size, err := disk.Size()
	if err != nil {
		return err
	}
	d.disk, d.capacity = disk, uint64(size)/sectorSize
	if err := disk.PreserveFD("disk", 0); err != nil && !errors.Is(err, abi.ErrUnsupported) {
		return err
	}
	features := virtio.Feature(fSegMax) | virtio.Feature(fBlkSize) | virtio.Feature(fFlush)
	if readonly.Get() {
		features |= virtio.Feature(fRO)
	} else {
		features |= virtio.Feature(fDiscard) | virtio.Feature(fWriteZeroes)
	}
	d.fillConfig()
	d.t, err = virtio.NewTransport(virtio.Config{
		Name: "virtio-blk", DeviceID: deviceID, Features: features, ConfigSize: configSize,
		QueueSizes: []uint16{queueSize},
	}, &st.Transport, st.Queues[:], blkHandler{d})
	if err != nil {
		return err
	}
	st.Capacity = d.capacity
	return nil
}

func (d *blk) fillConfig() {
	c := d.config[:]
	le := binary.LittleEndian
	le.PutUint64(c[cfgCapacity:], d.capacity)
	le.PutUint32(c[cfgSegMax:], segMax)
	le.PutUint32(c[cfgBlkSize:], sectorSize)
	le.PutUint32(c[cfgMaxDiscardSectors:], maxDiscardSectors)
	le.PutUint32(c[cfgMaxDiscardSeg:], maxRangeSegs)
	le.PutUint32(c[cfgDiscardAlignment:], 1)
	le.PutUint32(c[cfgMaxWriteZeroesSectors:], maxWriteZeroesSectors)
	le.PutUint32(c[cfgMaxWriteZeroesSeg:], maxRangeSegs)
}

// Reset is the system reset (sdk.Device): the transport and its queues go
// back to their power-on state, which calls blkHandler.Reset.
func (d *blk) Reset() { d.t.Reset() }

// blkHandler is the device as the transport's virtio.Handler; its Reset is
// the device part of a transport reset (driver-initiated or system).
type blkHandler struct{ *blk }

// Reset implements virtio.Handler: the block device keeps no state beyond
// the transport's; a pending continuation is dropped.
func (h blkHandler) Reset() { _ = continueTimer.Cancel() }

// MMIORead forwards to the transport.
func (d *blk) MMIORead(_ sdk.Region, offset uint64, size int) uint64 {
	return d.t.MMIORead(offset, size)
}

// MMIOWrite forwards to the transport.
func (d *blk) MMIOWrite(_ sdk.Region, offset uint64, size int, value uint64) {
	d.t.MMIOWrite(offset, size, value)
}

// ReadConfig implements virtio.Handler.
func (d *blk) ReadConfig(offset uint32, p []byte) { copy(p, d.config[offset:]) }

// errReadOnlyConfig answers config writes: without VIRTIO_BLK_F_CONFIG_WCE
// every field is read-only.
var errReadOnlyConfig = errors.New("virtio-blk config space is read-only")

// WriteConfig implements virtio.Handler.
func (d *blk) WriteConfig(uint32, []byte) error { return errReadOnlyConfig }

// PreSave has nothing to drain: requests complete inside the notification
// that submitted them, so no request is in flight between calls.
func (d *blk) PreSave() error { return nil }

// PostLoad checks the loaded transport state and that the image has the
// size the source had.
func (d *blk) PostLoad(uint32) error {
	if st.Capacity != d.capacity {
		return tinyfmt.Errorf("virtio-blk: the source's disk had %d sectors, this image has %d", st.Capacity, d.capacity)
	}
	return d.t.PostLoad()
}

// QueueNotify implements virtio.Handler: it runs available requests to
// completion, then interrupts the driver unless it suppressed that. One call
// serves at most four rings' worth of requests and notifyBudget bytes; the
// rest is served from continueTimer, armed for right away, so a driver that
// keeps the queue full (possibly from another vCPU) cannot hold one call
// past the host's deadline.
func (d *blk) QueueNotify(q *virtio.Queue) {
	d.moved = 0
	for n := 0; n < 4*queueSize; n++ {
		if d.moved >= notifyBudget {
			if err := continueTimer.Arm(sdk.Now()); err != nil {
				d.t.Logf(abi.LogError, "timer", "cannot arm the continuation timer: %v", err)
			}
			break
		}
		c, err := q.Pop()
		if err != nil || c == nil {
			break
		}
		if err := q.Push(c.Head, d.handle(c)); err != nil {
			break
		}
	}
	q.Signal()
}

// TimerFired continues processing after QueueNotify used its budget.
func (d *blk) TimerFired(sdk.Timer) {
	if q := d.t.Queue(0); q.Ready() && d.t.Live() {
		d.QueueNotify(q)
	}
}

// handle runs one request and returns the bytes written into its writable
// buffers (data and status byte).
func (d *blk) handle(c *virtio.Chain) uint32 {
	if c.WritableLen == 0 {
		d.t.Logf(abi.LogWarn, "no-status", "request at head %d has no status byte; completed without status", c.Head)
		return 0
	}
	statusGPA, _ := virtio.SGAt(c.Writable, c.WritableLen-1)
	status, written := d.execute(c)
	if err := sdk.GuestStore(statusGPA, 1, uint64(status)); err != nil {
		d.t.Logf(abi.LogWarn, "status", "request at head %d: status byte at %#x not writable: %v", c.Head, statusGPA, err)
		return 0
	}
	return written + 1
}

// execute runs the request and returns its status and the data bytes it
// wrote into guest memory.
func (d *blk) execute(c *virtio.Chain) (uint8, uint32) {
	if c.ReadableLen < headerSize {
		d.t.Logf(abi.LogWarn, "header", "request at head %d: header of %d bytes, want %d", c.Head, c.ReadableLen, headerSize)
		return statusIOErr, 0
	}
	hdr, _ := virtio.SGRange(d.sg, c.Readable, 0, headerSize, c.ReadableLen)
	if _, err := sdk.GuestReadSG(hdr, d.hdr[:]); err != nil {
		d.t.Logf(abi.LogWarn, "header", "request at head %d: header not readable: %v", c.Head, err)
		return statusIOErr, 0
	}
	typ := binary.LittleEndian.Uint32(d.hdr[0:])
	sector := binary.LittleEndian.Uint64(d.hdr[8:])
	inLen := c.WritableLen - 1 // data the device may write
	outLen := c.ReadableLen - headerSize
	switch typ {
	case reqIn:
		if !d.inRange(sector, inLen, "read") {
			return statusIOErr, 0
		}
		data, _ := virtio.SGRange(d.sg, c.Writable, 0, inLen, c.WritableLen)
		n, err := d.disk.PreadSG(int64(sector*sectorSize), data)
		if err != nil || uint64(n) != inLen {
			d.t.Logf(abi.LogWarn, "io", "read of %d bytes at sector %d: %d bytes, %v", inLen, sector, n, err)
			return statusIOErr, uint32(max(n, 0))
		}
		d.moved += inLen
		return statusOK, uint32(inLen)
	case reqOut:
		if readonly.Get() {
			return statusIOErr, 0
		}
		if !d.inRange(sector, outLen, "write") {
			return statusIOErr, 0
		}
		data, _ := virtio.SGRange(d.sg, c.Readable, headerSize, outLen, c.ReadableLen)
		n, err := d.disk.PwriteSG(int64(sector*sectorSize), data)
		if err != nil || uint64(n) != outLen {
			d.t.Logf(abi.LogWarn, "io", "write of %d bytes at sector %d: %d bytes, %v", outLen, sector, n, err)
			return statusIOErr, 0
		}
		d.moved += outLen
		return statusOK, 0
	case reqFlush:
		if err := d.disk.Flush(); err != nil {
			d.t.Logf(abi.LogWarn, "io", "flush: %v", err)
			return statusIOErr, 0
		}
		return statusOK, 0
	case reqGetID:
		d.sg, _ = virtio.SGSlice(d.sg[:0], c.Writable, 0, min(inLen, idBytes))
		n, err := sdk.GuestWriteSG(d.sg, d.id[:])
		if err != nil {
			return statusIOErr, 0
		}
		return statusOK, uint32(n)
	case reqDiscard, reqWriteZeroes:
		return d.rangeOp(c, typ, outLen), 0
	}
	d.t.Logf(abi.LogDebug, "unsupported", "request type %d unsupported", typ)
	return statusUnsupp, 0
}

// inRange checks a read or write of n bytes at sector: whole sectors, not
// over the request limit, inside the disk.
func (d *blk) inRange(sector, n uint64, what string) bool {
	ok := n%sectorSize == 0 && n <= maxRequestBytes && sector <= d.capacity && n/sectorSize <= d.capacity-sector
	if !ok {
		d.t.Logf(abi.LogWarn, "range", "%s of %d bytes at sector %d refused: the disk has %d sectors (requests: whole sectors, at most %d bytes)", what, n, sector, d.capacity, maxRequestBytes)
	}
	return ok
}

// rangeOp runs a discard or write-zeroes request: its data is an array of
// 16-byte segments {sector u64, num_sectors u32, flags u32}.
func (d *blk) rangeOp(c *virtio.Chain, typ uint32, outLen uint64) uint8 {
	if readonly.Get() {
		return statusUnsupp
	}
	if outLen == 0 || outLen%rangeSegSize != 0 || outLen > uint64(len(d.ranges)) {
		d.t.Logf(abi.LogWarn, "range", "discard/write-zeroes request with %d bytes of segments (want 1..%d segments of 16 bytes)", outLen, maxRangeSegs)
		return statusIOErr
	}
	buf := d.ranges[:outLen]
	d.sg, _ = virtio.SGSlice(d.sg[:0], c.Readable, headerSize, outLen)
	if _, err := sdk.GuestReadSG(d.sg, buf); err != nil {
		return statusIOErr
	}
	limit := uint64(maxDiscardSectors)
	if typ == reqWriteZeroes {
		limit = maxWriteZeroesSectors
	}
	for off := 0; off < len(buf); off += rangeSegSize {
		sector := binary.LittleEndian.Uint64(buf[off:])
		num := uint64(binary.LittleEndian.Uint32(buf[off+8:]))
		flags := binary.LittleEndian.Uint32(buf[off+12:])
		if (typ == reqDiscard && flags != 0) || flags&^1 != 0 {
			return statusUnsupp
		}
		if num > limit || sector > d.capacity || num > d.capacity-sector {
			d.t.Logf(abi.LogWarn, "range", "request type %d of %d sectors at sector %d refused: the disk has %d sectors, the limit is %d", typ, num, sector, d.capacity, limit)
			return statusIOErr
		}
		var err error
		if typ == reqDiscard {
			err = d.disk.Discard(int64(sector*sectorSize), int64(num*sectorSize))
			if errors.Is(err, abi.ErrUnsupported) {
				err = nil // discarding is a hint
			}
		} else {
			err = d.disk.WriteZeroes(int64(sector*sectorSize), int64(num*sectorSize))
		}
		if err != nil {
			d.t.Logf(abi.LogWarn, "io", "request type %d of %d sectors at sector %d: %v", typ, num, sector, err)
			return statusIOErr
		}
	}
	return statusOK
}
