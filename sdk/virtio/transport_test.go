package virtio_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"wasmvmm/abi"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// echoDevice copies each chain's readable bytes into its writable buffers.
type echoDevice struct {
	mem       *virtio.ByteMemory
	t         *virtio.Transport
	config    [16]byte
	resets    int
	processed int
}

func (e *echoDevice) ReadConfig(off uint32, p []byte) { copy(p, e.config[off:]) }

func (e *echoDevice) WriteConfig(off uint32, p []byte) error {
	if off < 8 {
		return errors.New("read-only field")
	}
	copy(e.config[off:], p)
	return nil
}

func (e *echoDevice) Reset() { e.resets++ }

func (e *echoDevice) QueueNotify(q *virtio.Queue) {
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			break
		}
		var data []byte
		for _, s := range c.Readable {
			b := make([]byte, min(s.Len, 1<<16))
			if e.mem.Read(s.GPA, b) != nil {
				continue // a buffer outside RAM contributes nothing
			}
			data = append(data, b...)
		}
		n := 0
		for _, s := range c.Writable {
			k := min(int(s.Len), len(data)-n)
			if e.mem.Write(s.GPA, data[n:n+k]) != nil {
				continue
			}
			n += k
		}
		e.processed++
		if err := q.Push(c.Head, uint32(n)); err != nil {
			break
		}
	}
	q.Signal()
}

// rig is a transport over ByteMemory with a recording IRQ line and log.
type rig struct {
	t      *testing.T
	mem    *virtio.ByteMemory
	dev    *echoDevice
	tr     *virtio.Transport
	st     virtio.TransportState
	qs     [2]virtio.QueueState
	irq    bool
	raises int
	logs   []string
	drv    *virtiotest.Driver
	now    int64
}

func (r *rig) Read(off uint64, size int) uint64     { return r.tr.MMIORead(off, size) }
func (r *rig) Write(off uint64, size int, v uint64) { r.tr.MMIOWrite(off, size, v) }

const ramSize = 1 << 20

func newRig(t *testing.T, features uint64, lim virtio.Limits) *rig {
	t.Helper()
	r := &rig{t: t, mem: &virtio.ByteMemory{Base: 0x10000, Mem: make([]byte, ramSize)}}
	r.dev = &echoDevice{mem: r.mem}
	copy(r.dev.config[:], "ABCDEFGH")
	tr, err := virtio.NewTransport(virtio.Config{
		Name: "echo", DeviceID: 42, Features: features, ConfigSize: 16,
		QueueSizes: []uint16{16, 8}, Limits: lim, Memory: r.mem,
		IRQ: func(level bool) error {
			if level && !r.irq {
				r.raises++
			}
			r.irq = level
			return nil
		},
		Log: func(_ abi.LogLevel, msg string) { r.logs = append(r.logs, msg) },
		Now: func() int64 { return r.now },
	}, &r.st, r.qs[:], r.dev)
	if err != nil {
		t.Fatal(err)
	}
	r.tr, r.dev.t = tr, tr
	r.drv = &virtiotest.Driver{Bus: r, RAM: r.mem}
	return r
}

func (r *rig) logged(substr string) int {
	n := 0
	for _, l := range r.logs {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// up negotiates want and sets up queue 0 of size 16 at 0x10000.
func (r *rig) up(want uint64) *virtiotest.Queue {
	r.t.Helper()
	if err := r.drv.Init(want); err != nil {
		r.t.Fatal(err)
	}
	l, _ := virtiotest.LayoutAt(0x10000, 16)
	q, err := r.drv.SetupQueue(0, 16, l)
	if err != nil {
		r.t.Fatal(err)
	}
	r.drv.DriverOK()
	return q
}

const allFeatures = virtio.TransportFeatures

func TestRegistersAndNegotiation(t *testing.T) {
	r := newRig(t, 1<<3, virtio.Limits{})
	d := r.drv
	for _, c := range []struct {
		off  uint64
		want uint64
	}{{virtio.RegMagicValue, virtio.MagicValue}, {virtio.RegVersion, 2}, {virtio.RegDeviceID, 42}, {virtio.RegVendorID, virtio.VendorID}} {
		if got := r.Read(c.off, 4); got != c.want {
			t.Errorf("register %#x = %#x, want %#x", c.off, got, c.want)
		}
	}
	if got, want := d.DeviceFeatures(), uint64(1<<3|allFeatures); got != want {
		t.Errorf("device features %#x, want %#x", got, want)
	}
	// Not offered, or no VERSION_1: FEATURES_OK stays clear.
	d.Init(0)
	for _, f := range []uint64{1 << 4, 1 << 3} {
		if err := d.WriteFeatures(f); err == nil {
			t.Errorf("features %#x accepted", f)
		}
	}
	if r.logged("FEATURES_OK refused") == 0 {
		t.Error("refusal not logged")
	}
	if err := d.Init(1<<3 | 1<<virtio.FVersion1); err != nil {
		t.Fatal(err)
	}
	if !r.tr.HasFeature(3) || !r.tr.HasFeature(virtio.FVersion1) || r.tr.HasFeature(virtio.FEventIdx) {
		t.Errorf("negotiated %#x", r.tr.Features())
	}
	// Features after FEATURES_OK are ignored.
	r.Write(virtio.RegDriverFeaturesSel, 4, 0)
	r.Write(virtio.RegDriverFeatures, 4, 0)
	if !r.tr.HasFeature(3) {
		t.Error("driver features changed after FEATURES_OK")
	}
	// Config space: bytes, widths, generation, read-only field.
	if got := d.Config(0, 4); got != 0x44434241 {
		t.Errorf("config dword %#x", got)
	}
	if got := d.Config(2, 1); got != 'C' {
		t.Errorf("config byte %#x", got)
	}
	if got := d.Config(14, 4); got != 0 {
		t.Errorf("config read across the end %#x", got)
	}
	r.Write(virtio.RegConfig+0, 4, 0x11111111)
	r.Write(virtio.RegConfig+1, 1, 0x22)
	if got := d.Config(0, 8); got != 0x4847464544434241 {
		t.Errorf("read-only config changed: %#x", got)
	}
	if n := r.logged("config write at 0x0 ignored"); n != 1 {
		t.Errorf("read-only config writes logged %d times, want 1 (rate-limited)", n)
	}
	r.Write(virtio.RegConfig+8, 2, 0x5a5a)
	if got := d.Config(8, 2); got != 0x5a5a {
		t.Errorf("writable config %#x", got)
	}
	gen := r.Read(virtio.RegConfigGeneration, 4)
	r.tr.ConfigChanged()
	if r.Read(virtio.RegConfigGeneration, 4) != gen+1 {
		t.Error("generation did not move")
	}
	if r.irq {
		t.Error("config interrupt before DRIVER_OK")
	}
	// Narrow register accesses are refused.
	if got := r.Read(virtio.RegMagicValue, 2); got != 0 {
		t.Errorf("16-bit magic read %#x", got)
	}
	// Reset through status 0.
	before := r.dev.resets
	r.Write(virtio.RegStatus, 4, 0)
	if r.tr.Features() != 0 || d.Status() != 0 || r.dev.resets != before+1 {
		t.Errorf("after reset: features %#x status %#x resets %d", r.tr.Features(), d.Status(), r.dev.resets)
	}
}

func TestDriverOKWithoutFeaturesOK(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	r.Write(virtio.RegStatus, 4, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
	st := r.drv.Status()
	if st&virtio.StatusDeviceNeedsReset == 0 || st&virtio.StatusDriverOK != 0 {
		t.Errorf("status %#x", st)
	}
}

func echoRoundTrip(t *testing.T, r *rig, q *virtiotest.Queue, indirect bool) {
	t.Helper()
	msg := []byte("hello, virtio queue")
	src, dst := uint64(0x40000), uint64(0x50000)
	r.mem.Write(src, msg)
	r.mem.Write(dst, make([]byte, 64))
	bufs := []virtiotest.Buf{{Addr: src, Len: 5}, {Addr: src + 5, Len: uint32(len(msg) - 5)}, {Addr: dst, Len: 10, Write: true}, {Addr: dst + 10, Len: 54, Write: true}}
	var head uint16
	var err error
	if indirect {
		head, err = q.AddIndirect(0x60000, bufs)
	} else {
		head, err = q.Add(bufs)
	}
	if err != nil {
		t.Fatal(err)
	}
	q.Publish(head)
	q.Notify()
	used, err := q.TakeUsed()
	if err != nil || len(used) != 1 || used[0].ID != uint32(head) || used[0].Len != uint32(len(msg)) {
		t.Fatalf("used %+v %v, want head %d len %d", used, err, head, len(msg))
	}
	got := make([]byte, len(msg))
	r.mem.Read(dst, got)
	if !bytes.Equal(got, msg) {
		t.Errorf("echoed %q", got)
	}
}

func TestQueueRoundTripAndInterrupt(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	q := r.up(1<<virtio.FVersion1 | 1<<virtio.FIndirectDesc)
	echoRoundTrip(t, r, q, false)
	if !r.irq || r.drv.ISR() != virtio.InterruptUsedBuffer {
		t.Fatalf("irq %v isr %#x after a used buffer", r.irq, r.drv.ISR())
	}
	r.drv.Ack(virtio.InterruptUsedBuffer)
	if r.irq {
		t.Fatal("line still high after ACK")
	}
	echoRoundTrip(t, r, q, true)
	// 40 requests through a 16-entry ring wrap the indices.
	for i := 0; i < 40; i++ {
		echoRoundTrip(t, r, q, i%2 == 0)
	}
	if q.UsedIdx() != 42 {
		t.Errorf("used idx %d", q.UsedIdx())
	}
	// Notifying a missing queue is logged and ignored.
	r.Write(virtio.RegQueueNotify, 4, 7)
	if r.logged("queue 7, which does not exist") != 1 {
		t.Error("bad notify not logged")
	}
}

func TestNoInterruptFlag(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	q := r.up(1 << virtio.FVersion1)
	q.SetAvailFlags(virtio.AvailFNoInterrupt)
	echoRoundTrip(t, r, q, false)
	if r.raises != 0 || r.drv.ISR() != 0 {
		t.Errorf("interrupted %d times with NO_INTERRUPT", r.raises)
	}
	q.SetAvailFlags(0)
	echoRoundTrip(t, r, q, false)
	if r.raises != 1 {
		t.Errorf("raises %d", r.raises)
	}
}

func TestEventIdx(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	q := r.up(1<<virtio.FVersion1 | 1<<virtio.FEventIdx)
	if !r.tr.HasFeature(virtio.FEventIdx) {
		t.Fatal("EVENT_IDX not negotiated")
	}
	// First completion always interrupts (nothing signalled yet).
	echoRoundTrip(t, r, q, false)
	if r.raises != 1 {
		t.Fatalf("raises %d", r.raises)
	}
	r.drv.Ack(1)
	if got := q.AvailEvent(); got != 1 {
		t.Errorf("avail_event %d, want 1 (the next index the device waits for)", got)
	}
	// Ask for an interrupt only when used idx passes 4 (used_event = 4).
	q.SetUsedEvent(4)
	for i := 0; i < 3; i++ { // used idx 2, 3, 4
		echoRoundTrip(t, r, q, false)
	}
	if r.raises != 1 {
		t.Fatalf("interrupted before used_event was passed: raises %d", r.raises)
	}
	echoRoundTrip(t, r, q, false) // used idx 5 passes event 4
	if r.raises != 2 {
		t.Fatalf("no interrupt when used idx passed used_event: raises %d", r.raises)
	}
	if got := q.AvailEvent(); got != 5 {
		t.Errorf("avail_event %d, want 5", got)
	}
}

func TestNeedEvent(t *testing.T) {
	for _, c := range []struct {
		event, newIdx, old uint16
		want               bool
	}{{0, 1, 0, true}, {4, 4, 3, false}, {4, 5, 4, true}, {4, 8, 2, true}, {0xffff, 0, 0xfffe, true}, {10, 3, 1, false}} {
		if got := virtio.NeedEvent(c.event, c.newIdx, c.old); got != c.want {
			t.Errorf("NeedEvent(%d, %d, %d) = %v", c.event, c.newIdx, c.old, got)
		}
	}
}

func TestHostileQueueSetup(t *testing.T) {
	for _, c := range []struct {
		name string
		num  uint16
		l    virtiotest.Layout
	}{
		{"outside RAM", 16, virtiotest.Layout{Desc: 0x10000 + ramSize, Driver: 0x20000, Device: 0x30000}},
		{"straddles the end", 16, virtiotest.Layout{Desc: 0x10000, Driver: 0x20000, Device: 0x10000 + ramSize - 16}},
		{"below RAM", 16, virtiotest.Layout{Desc: 0x0, Driver: 0x20000, Device: 0x30000}},
		{"unaligned", 16, virtiotest.Layout{Desc: 0x10008, Driver: 0x20000, Device: 0x30000}},
		{"wraps", 16, virtiotest.Layout{Desc: 0xfffffffffffffff0, Driver: 0x20000, Device: 0x30000}},
		{"not a power of two", 12, virtiotest.Layout{Desc: 0x10000, Driver: 0x20000, Device: 0x30000}},
		{"over max", 32, virtiotest.Layout{Desc: 0x10000, Driver: 0x20000, Device: 0x30000}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, 0, virtio.Limits{})
			r.drv.Init(1 << virtio.FVersion1)
			r.drv.DriverOK()
			r.Write(virtio.RegQueueSel, 4, 0)
			r.Write(virtio.RegQueueNum, 4, uint64(c.num))
			r.Write(virtio.RegQueueDescLow, 4, c.l.Desc&0xffffffff)
			r.Write(virtio.RegQueueDescHigh, 4, c.l.Desc>>32)
			r.Write(virtio.RegQueueDriverLow, 4, c.l.Driver)
			r.Write(virtio.RegQueueDeviceLow, 4, c.l.Device)
			r.Write(virtio.RegQueueReady, 4, 1)
			if r.Read(virtio.RegQueueReady, 4) != 0 {
				t.Error("queue enabled")
			}
			if r.drv.Status()&virtio.StatusDeviceNeedsReset == 0 || r.drv.ISR()&virtio.InterruptConfigChange == 0 || !r.irq {
				t.Errorf("status %#x isr %#x irq %v: want NEEDS_RESET and a config interrupt", r.drv.Status(), r.drv.ISR(), r.irq)
			}
		})
	}
}

// hostile describes a malformed submission on queue 0 (size 16, layout
// from LayoutAt(0x10000, 16)).
type hostile struct {
	name     string
	features uint64
	lim      virtio.Limits
	setup    func(r *rig, q *virtiotest.Queue) // writes descriptors and publishes
	want     error
}

func desc(q *virtiotest.Queue, idx uint16, d virtio.Desc) {
	if err := q.WriteDesc(idx, d); err != nil {
		panic(err)
	}
}

func publishRaw(q *virtiotest.Queue, r *rig, head uint16) {
	var b [2]byte
	b[0], b[1] = byte(head), byte(head>>8)
	r.mem.Write(q.L.Driver+4, b[:])
	q.SetAvailIdx(1)
}

var hostileCases = []hostile{
	{name: "descriptor loop", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 1})
		desc(q, 1, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 0})
		publishRaw(q, r, 0)
	}, want: virtio.ErrChainLoop},
	{name: "self loop", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 3, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 3})
		publishRaw(q, r, 3)
	}, want: virtio.ErrChainLoop},
	{name: "next out of range", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 16})
		publishRaw(q, r, 0)
	}, want: virtio.ErrNextOutOfRange},
	{name: "head out of range", setup: func(r *rig, q *virtiotest.Queue) {
		publishRaw(q, r, 0xffff)
	}, want: virtio.ErrHeadOutOfRange},
	{name: "avail index jump", setup: func(r *rig, q *virtiotest.Queue) {
		q.SetAvailIdx(17)
	}, want: virtio.ErrAvailIndex},
	{name: "indirect not negotiated", features: 1 << virtio.FVersion1, setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x60000, Len: 32, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrIndirectNotNegotiated},
	{name: "indirect with next", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x60000, Len: 32, Flags: virtio.DescFIndirect | virtio.DescFNext, Next: 1})
		publishRaw(q, r, 0)
	}, want: virtio.ErrIndirectWithNext},
	{name: "indirect length", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x60000, Len: 24, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrIndirectLength},
	{name: "indirect table outside RAM", setup: func(r *rig, q *virtiotest.Queue) {
		desc(q, 0, virtio.Desc{Addr: 0x10000 + ramSize - 16, Len: 32, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrDescOutOfRAM},
	{name: "indirect inside indirect", setup: func(r *rig, q *virtiotest.Queue) {
		var tbl [32]byte
		virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 1}.Encode(tbl[:])
		virtio.Desc{Addr: 0x60100, Len: 16, Flags: virtio.DescFIndirect}.Encode(tbl[16:])
		r.mem.Write(0x60000, tbl[:])
		desc(q, 0, virtio.Desc{Addr: 0x60000, Len: 32, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrNestedIndirect},
	{name: "loop inside indirect", setup: func(r *rig, q *virtiotest.Queue) {
		var tbl [32]byte
		virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 1}.Encode(tbl[:])
		virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 0}.Encode(tbl[16:])
		r.mem.Write(0x60000, tbl[:])
		desc(q, 0, virtio.Desc{Addr: 0x60000, Len: 32, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrChainLoop},
	{name: "too many descriptors", lim: virtio.Limits{MaxDescriptors: 4}, setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.Add(bufsOf(5))
		q.Publish(h)
	}, want: virtio.ErrTooManyDescriptors},
	{name: "indirect table over the descriptor limit", lim: virtio.Limits{MaxDescriptors: 4}, setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.AddIndirect(0x60000, bufsOf(5))
		q.Publish(h)
	}, want: virtio.ErrIndirectLength},
	{name: "direct plus indirect over the descriptor limit", lim: virtio.Limits{MaxDescriptors: 4}, setup: func(r *rig, q *virtiotest.Queue) {
		var tbl [48]byte
		for i := 0; i < 3; i++ {
			virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: uint16(i + 1)}.Encode(tbl[16*i:])
		}
		tbl[16*2+12] = 0 // last: no NEXT
		r.mem.Write(0x60000, tbl[:])
		desc(q, 0, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 1})
		desc(q, 1, virtio.Desc{Addr: 0x40000, Len: 4, Flags: virtio.DescFNext, Next: 2})
		desc(q, 2, virtio.Desc{Addr: 0x60000, Len: 48, Flags: virtio.DescFIndirect})
		publishRaw(q, r, 0)
	}, want: virtio.ErrTooManyDescriptors},
	{name: "chain over 4 GiB", setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.Add([]virtiotest.Buf{{Addr: 0x40000, Len: 0xffffffff}, {Addr: 0x40000, Len: 0xffffffff, Write: true}})
		q.Publish(h)
	}, want: virtio.ErrChainTooLarge},
	{name: "over the device byte limit", lim: virtio.Limits{MaxBytes: 4096}, setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.Add([]virtiotest.Buf{{Addr: 0x40000, Len: 4096}, {Addr: 0x50000, Len: 1, Write: true}})
		q.Publish(h)
	}, want: virtio.ErrChainTooLarge},
	{name: "address wraps", setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.Add([]virtiotest.Buf{{Addr: 0xffffffffffffff00, Len: 0x200}})
		q.Publish(h)
	}, want: virtio.ErrAddressWrap},
	{name: "readable after writable", setup: func(r *rig, q *virtiotest.Queue) {
		h, _ := q.Add([]virtiotest.Buf{{Addr: 0x40000, Len: 8, Write: true}, {Addr: 0x50000, Len: 8}})
		q.Publish(h)
	}, want: virtio.ErrReadableAfterWritable},
}

func bufsOf(n int) []virtiotest.Buf {
	bufs := make([]virtiotest.Buf, n)
	for i := range bufs {
		bufs[i] = virtiotest.Buf{Addr: 0x40000 + 64*uint64(i), Len: 8}
	}
	return bufs
}

func TestHostileChains(t *testing.T) {
	for _, c := range hostileCases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, 0, c.lim)
			f := c.features
			if f == 0 {
				f = allFeatures
			}
			q := r.up(f)
			c.setup(r, q)
			c2, err := r.tr.Queue(0).Pop()
			if c2 != nil || !errors.Is(err, c.want) {
				t.Fatalf("Pop = %v, %v; want error %v", c2, err, c.want)
			}
			st := r.drv.Status()
			if st&virtio.StatusDeviceNeedsReset == 0 || r.drv.ISR()&virtio.InterruptConfigChange == 0 || !r.irq {
				t.Fatalf("status %#x isr %#x irq %v: want NEEDS_RESET with a config interrupt", st, r.drv.ISR(), r.irq)
			}
			// Broken: notifications do nothing, one log line however often.
			for i := 0; i < 5; i++ {
				q.Notify()
			}
			if r.dev.processed != 0 || q.UsedIdx() != 0 {
				t.Errorf("processed %d requests on a broken device", r.dev.processed)
			}
			if n := r.logged("device needs reset"); n != 1 {
				t.Errorf("logged %d times, want once: %q", n, r.logs)
			}
			// A reset brings it back.
			q = r.up(allFeatures)
			echoRoundTrip(t, r, q, true)
		})
	}
}

func TestLogRateLimit(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	for i := 0; i < 100; i++ {
		r.Write(virtio.RegConfig, 4, 1)
	}
	if n := r.logged("config write"); n != 1 {
		t.Fatalf("logged %d times", n)
	}
	r.now += 11e9
	r.Write(virtio.RegConfig, 4, 1)
	if n := r.logged("99 similar messages suppressed"); n != 1 {
		t.Fatalf("after the interval: %q", r.logs)
	}
}

// blkLikeState is how a device embeds the transport state in its vmstate.
type blkLikeState struct {
	Transport virtio.TransportState `vmstate:"transport"`
	Queues    [2]virtio.QueueState  `vmstate:"queues"`
	Extra     uint32                `vmstate:"extra"`
}

func TestVMStateSchema(t *testing.T) {
	var st blkLikeState
	s, err := sdk.NewSection("virtio-test", &st)
	if err != nil {
		t.Fatal(err)
	}
	l := s.Layout()
	if err := l.Validate(0); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range l.Fields {
		names[f.Name] = true
		if f.Name == "queues" && (f.Type != abi.FieldStruct || f.Count != 2) {
			t.Errorf("queues field %+v", f)
		}
		if f.Struct != nil {
			for _, m := range f.Struct.Fields {
				names[f.Name+"."+m.Name] = true
			}
		}
	}
	for _, want := range []string{"transport.driver_features", "transport.status", "transport.isr", "transport.config_generation",
		"queues.desc", "queues.driver", "queues.device", "queues.num", "queues.ready", "queues.last_avail_idx", "queues.used_idx", "queues.signalled_used", "extra"} {
		if !names[want] {
			t.Errorf("schema lacks %s (has %v)", want, names)
		}
	}
}

func TestPostLoad(t *testing.T) {
	r := newRig(t, 0, virtio.Limits{})
	q := r.up(allFeatures)
	echoRoundTrip(t, r, q, false)
	saved, savedQ := r.st, r.qs
	// A fresh transport loads the state and continues the rings.
	r2 := newRig(t, 0, virtio.Limits{})
	r2.mem = r.mem
	r2.dev.mem = r.mem
	r2.tr, _ = virtio.NewTransport(virtio.Config{Name: "echo", DeviceID: 42, ConfigSize: 16, QueueSizes: []uint16{16, 8}, Memory: r.mem,
		IRQ: func(level bool) error { r2.irq = level; return nil }, Log: func(abi.LogLevel, string) {}}, &r2.st, r2.qs[:], r2.dev)
	r2.dev.t = r2.tr
	r2.st, r2.qs = saved, savedQ
	if err := r2.tr.PostLoad(); err != nil {
		t.Fatal(err)
	}
	if !r2.irq {
		t.Error("pending interrupt not raised after load")
	}
	r2.drv = &virtiotest.Driver{Bus: r2, RAM: r.mem}
	q.Notify() // nothing new
	for _, bad := range []func(){
		func() { r2.qs[0].Num = 12 },
		func() { r2.qs[0].DescAddr = 0x10000 + ramSize },
		func() { r2.st.DriverFeatures |= 1 << 40 },
	} {
		r2.st, r2.qs = saved, savedQ
		bad()
		if err := r2.tr.PostLoad(); err == nil {
			t.Errorf("bad state accepted: %+v %+v", r2.st, r2.qs[0])
		}
	}
}
