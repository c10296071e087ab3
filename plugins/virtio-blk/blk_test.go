//go:build !wasip1

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"wasmvmm/testsuite/plugintest"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/blockdev"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// These tests load the built plugin into the real host runtime, give it a
// real image through host/blockdev and real guest RAM, and act as the guest
// driver through the instance's MMIO calls.

var (
	wasmPath  string
	cacheRoot string
)

func TestMain(m *testing.M) {
	os.Exit(plugintest.Main(m, "virtio-blk", &wasmPath, &cacheRoot))
}

// host is a plugin.Host over real guest RAM and a real image, recording the
// interrupt line.
type host struct {
	mem   *guestmem.Memory
	clock *plugin.VMClock
	disk  plugin.Backend
	mu    sync.Mutex
	level bool
	edges int
}

func (h *host) Memory() *guestmem.Memory { return h.mem }
func (h *host) Clock() plugin.Clock      { return h.clock }

func (h *host) SetIRQ(line int, level bool) error {
	if line != 0 {
		return fmt.Errorf("one interrupt line, not %d", line+1)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if level && !h.level {
		h.edges++
	}
	h.level = level
	return nil
}

func (h *host) Backend(kind abi.BackendKind, name string) (plugin.Backend, error) {
	if name == "disk" && h.disk != nil {
		return h.disk, nil
	}
	return nil, plugin.ErrNoBackend
}

func (h *host) irq() (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.level, h.edges
}

// bus and ram adapt the instance and guestmem to virtiotest.
type bus = plugintest.Bus

type ram = plugintest.RAM

const (
	ramSize    = 32 << 20
	imageSize  = 8 << 20
	ringBase   = 0x10000
	hdrAddr    = 0x100000
	statusAddr = 0x101000
	tableAddr  = 0x102000
	dataAddr   = 0x200000
)

type env struct {
	t     testing.TB
	h     *host
	inst  *plugin.Instance
	img   *blockdev.Image
	path  string
	drv   *virtiotest.Driver
	q     *virtiotest.Queue
	logs  *logBuf
	rt    *plugin.Runtime
	guest ram
}

type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func newImage(t testing.TB, size int) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i / 512)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newRuntime(t testing.TB, logs *logBuf) *plugin.Runtime {
	rt, err := plugin.NewRuntime(context.Background(), plugin.Config{
		CacheDir: cacheRoot,
		Logger:   hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	return rt
}

// start instantiates and realizes the device over an image at path.
func start(t testing.TB, path string, img *blockdev.Image, mem *guestmem.Memory, props plugin.PropertyValues) *env {
	t.Helper()
	logs := &logBuf{}
	rt := newRuntime(t, logs)
	if mem == nil {
		blk, err := guestmem.Alloc("ram", 0, ramSize, guestmem.AllocOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mem, err = guestmem.New(blk)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mem.Close() })
	}
	h := &host{mem: mem, clock: plugin.NewVMClock(true), disk: img}
	mod, err := rt.Load(context.Background(), wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "vblk0", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	if err := inst.Realize(props); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, h: h, inst: inst, img: img, path: path, logs: logs, rt: rt, guest: ram{M: mem}}
	e.drv = &virtiotest.Driver{Bus: bus{I: inst}, RAM: e.guest}
	return e
}

func (e *env) up(features uint64) {
	e.t.Helper()
	if err := e.drv.Init(features); err != nil {
		e.t.Fatal(err)
	}
	l, _ := virtiotest.LayoutAt(ringBase, queueSize)
	q, err := e.drv.SetupQueue(0, queueSize, l)
	if err != nil {
		e.t.Fatal(err)
	}
	e.drv.DriverOK()
	e.q = q
}

// request submits one request: header, data buffers, status byte; it
// returns the used entry and the status byte.
func (e *env) request(typ uint32, sector uint64, data []virtiotest.Buf, indirect bool) (virtiotest.Used, byte) {
	e.t.Helper()
	var hdr [16]byte
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint64(hdr[8:], sector)
	e.guest.Write(hdrAddr, hdr[:])
	e.guest.Write(statusAddr, []byte{0xee})
	bufs := append([]virtiotest.Buf{{Addr: hdrAddr, Len: 16}}, data...)
	bufs = append(bufs, virtiotest.Buf{Addr: statusAddr, Len: 1, Write: true})
	return e.submit(bufs, indirect)
}

func (e *env) submit(bufs []virtiotest.Buf, indirect bool) (virtiotest.Used, byte) {
	e.t.Helper()
	var head uint16
	var err error
	if indirect {
		head, err = e.q.AddIndirect(tableAddr, bufs)
	} else {
		head, err = e.q.Add(bufs)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.q.Publish(head)
	e.q.Notify()
	used, err := e.q.TakeUsed()
	if err != nil || len(used) != 1 || used[0].ID != uint32(head) {
		e.t.Fatalf("used %+v %v (head %d; device status %#x; instance %v)", used, err, head, e.drv.Status(), e.inst.Err())
	}
	var st [1]byte
	e.guest.Read(statusAddr, st[:])
	return used[0], st[0]
}

func (e *env) imageBytes(off, n int) []byte {
	b, err := os.ReadFile(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	return b[off : off+n]
}

func openImage(t testing.TB, path string, opt blockdev.Options) *blockdev.Image {
	img, err := blockdev.Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

const wantFeatures = 1<<virtio.FVersion1 | 1<<virtio.FIndirectDesc | 1<<virtio.FEventIdx |
	1<<fSegMax | 1<<fBlkSize | 1<<fFlush | 1<<fDiscard | 1<<fWriteZeroes | 1<<fRO

func TestRequests(t *testing.T) {
	path := newImage(t, imageSize)
	e := start(t, path, openImage(t, path, blockdev.Options{Owner: "test"}), nil, plugin.PropertyValues{"serial": "wasmvmm-disk-0001"})
	offered := e.drv.DeviceFeatures()
	for _, f := range []uint{fSegMax, fBlkSize, fFlush, fDiscard, fWriteZeroes, virtio.FVersion1, virtio.FIndirectDesc, virtio.FEventIdx} {
		if offered&(1<<f) == 0 {
			t.Errorf("feature %d not offered (%#x)", f, offered)
		}
	}
	if offered&(1<<fRO) != 0 {
		t.Error("RO offered on a writable disk")
	}
	if got := e.drv.Bus.Read(virtio.RegDeviceID, 4); got != deviceID {
		t.Errorf("device id %d", got)
	}
	e.up(wantFeatures)
	for off, want := range map[uint64]uint64{cfgCapacity: imageSize / 512, cfgSegMax: segMax, cfgBlkSize: 512,
		cfgMaxDiscardSectors: maxDiscardSectors, cfgMaxWriteZeroesSectors: maxWriteZeroesSectors, cfgMaxDiscardSeg: maxRangeSegs} {
		size := 4
		if off == cfgCapacity {
			size = 8
		}
		if got := e.drv.Config(off, size); got != want {
			t.Errorf("config at %d = %d, want %d", off, got, want)
		}
	}

	// Write 8 KiB at sector 10 from two buffers.
	payload := make([]byte, 8192)
	for i := range payload {
		payload[i] = byte(i*13 + 5)
	}
	e.guest.Write(dataAddr, payload[:3072])
	e.guest.Write(dataAddr+0x10000, payload[3072:])
	u, st := e.request(reqOut, 10, []virtiotest.Buf{{Addr: dataAddr, Len: 3072}, {Addr: dataAddr + 0x10000, Len: 8192 - 3072}}, false)
	if st != statusOK || u.Len != 1 {
		t.Fatalf("write: status %d len %d", st, u.Len)
	}
	if !bytes.Equal(e.imageBytes(10*512, 8192), payload) {
		t.Fatal("image does not hold the written data")
	}
	if level, _ := e.h.irq(); !level || e.drv.ISR()&virtio.InterruptUsedBuffer == 0 {
		t.Fatal("no used-buffer interrupt")
	}
	e.drv.Ack(virtio.InterruptUsedBuffer)
	if level, _ := e.h.irq(); level {
		t.Fatal("line high after ACK")
	}

	// Read it back through an indirect table into 16 scattered 512-byte
	// buffers; the pages are dirty for migration.
	blk := e.h.mem.Blocks()[0]
	blk.TakeDirty(make([]uint64, (blk.Pages()+63)/64))
	var rd []virtiotest.Buf
	for i := 0; i < 16; i++ {
		rd = append(rd, virtiotest.Buf{Addr: dataAddr + 0x100000 + uint64(i)*0x1000, Len: 512, Write: true})
	}
	u, st = e.request(reqIn, 10, rd, true)
	if st != statusOK || u.Len != 8193 {
		t.Fatalf("read: status %d len %d", st, u.Len)
	}
	for i := 0; i < 16; i++ {
		got := make([]byte, 512)
		e.guest.Read(rd[i].Addr, got)
		if !bytes.Equal(got, payload[512*i:512*(i+1)]) {
			t.Fatalf("read buffer %d differs", i)
		}
	}
	dirty := make([]uint64, (blk.Pages()+63)/64)
	blk.TakeDirty(dirty)
	for i := 0; i < 16; i++ {
		p := (rd[i].Addr) / guestmem.PageSize
		if dirty[p/64]&(1<<(p%64)) == 0 {
			t.Errorf("page of read buffer %d not dirty", i)
		}
	}

	if _, st := e.request(reqFlush, 0, nil, false); st != statusOK {
		t.Errorf("flush: status %d", st)
	}

	// GET_ID: 20 bytes, zero padded.
	e.guest.Write(dataAddr, bytes.Repeat([]byte{0xff}, 32))
	u, st = e.request(reqGetID, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 32, Write: true}}, false)
	id := make([]byte, 20)
	e.guest.Read(dataAddr, id)
	if st != statusOK || u.Len != 21 || string(bytes.TrimRight(id, "\x00")) != "wasmvmm-disk-0001" {
		t.Errorf("get id: status %d len %d id %q", st, u.Len, id)
	}

	// DISCARD and WRITE_ZEROES: two segments each.
	seg := func(sector uint64, n uint32, flags uint32) []byte {
		var b [16]byte
		binary.LittleEndian.PutUint64(b[:], sector)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint32(b[12:], flags)
		return b[:]
	}
	e.guest.Write(dataAddr, append(seg(2048, 2048, 0), seg(8192, 8, 0)...))
	if _, st := e.request(reqDiscard, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 32}}, false); st != statusOK {
		t.Errorf("discard: status %d", st)
	}
	if !bytes.Equal(e.imageBytes(2048*512, 1<<20), make([]byte, 1<<20)) || !bytes.Equal(e.imageBytes(8192*512, 4096), make([]byte, 4096)) {
		t.Error("discarded ranges do not read as zeroes")
	}
	if b := e.imageBytes(4097*512, 1); b[0] != 4097%256 {
		t.Error("discard touched a sector outside its ranges")
	}
	e.guest.Write(dataAddr, append(seg(100, 4, 0), seg(200, 1, 1)...))
	if _, st := e.request(reqWriteZeroes, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 32}}, false); st != statusOK {
		t.Errorf("write zeroes: status %d", st)
	}
	if !bytes.Equal(e.imageBytes(100*512, 2048), make([]byte, 2048)) || !bytes.Equal(e.imageBytes(200*512, 512), make([]byte, 512)) {
		t.Error("write-zeroes ranges are not zero")
	}
	// Unknown flags are unsupported; ranges past the end are errors.
	e.guest.Write(dataAddr, seg(0, 1, 1))
	if _, st := e.request(reqDiscard, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 16}}, false); st != statusUnsupp {
		t.Errorf("discard with unmap flag: status %d", st)
	}
	e.guest.Write(dataAddr, seg(imageSize/512-1, 2, 0))
	if _, st := e.request(reqWriteZeroes, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 16}}, false); st != statusIOErr {
		t.Errorf("write zeroes past the end: status %d", st)
	}

	// Requests outside the disk, partial sectors, unknown types.
	if _, st := e.request(reqIn, imageSize/512-1, []virtiotest.Buf{{Addr: dataAddr, Len: 1024, Write: true}}, false); st != statusIOErr {
		t.Errorf("read past the end: status %d", st)
	}
	if _, st := e.request(reqOut, 1<<62, []virtiotest.Buf{{Addr: dataAddr, Len: 512}}, false); st != statusIOErr {
		t.Errorf("write at a huge sector: status %d", st)
	}
	if _, st := e.request(reqOut, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 100}}, false); st != statusIOErr {
		t.Errorf("write of a partial sector: status %d", st)
	}
	if _, st := e.request(99, 0, nil, false); st != statusUnsupp {
		t.Errorf("unknown request type: status %d", st)
	}
	if e.inst.Err() != nil || e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Errorf("device broken after ordinary errors: %v, status %#x", e.inst.Err(), e.drv.Status())
	}
}

func TestReadOnly(t *testing.T) {
	path := newImage(t, imageSize)
	e := start(t, path, openImage(t, path, blockdev.Options{ReadOnly: true}), nil, plugin.PropertyValues{"readonly": true})
	offered := e.drv.DeviceFeatures()
	if offered&(1<<fRO) == 0 || offered&(1<<fDiscard|1<<fWriteZeroes) != 0 {
		t.Errorf("read-only device offers %#x", offered)
	}
	e.up(wantFeatures)
	before := e.imageBytes(0, 4096)
	e.guest.Write(dataAddr, bytes.Repeat([]byte{0xab}, 4096))
	if _, st := e.request(reqOut, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 4096}}, false); st != statusIOErr {
		t.Errorf("write to a read-only disk: status %d", st)
	}
	if !bytes.Equal(e.imageBytes(0, 4096), before) {
		t.Error("read-only image changed")
	}
	if _, st := e.request(reqIn, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 4096, Write: true}}, false); st != statusOK {
		t.Errorf("read from a read-only disk: status %d", st)
	}
}

func TestBadProperties(t *testing.T) {
	path := newImage(t, imageSize)
	img := openImage(t, path, blockdev.Options{})
	logs := &logBuf{}
	rt := newRuntime(t, logs)
	mod, err := rt.Load(context.Background(), wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		props plugin.PropertyValues
		disk  plugin.Backend
		want  string
	}{
		{plugin.PropertyValues{"serial": strings.Repeat("x", 21)}, img, "at most 20 fit"},
		{plugin.PropertyValues{"num_queues": 2}, img, "supports 1 queue"},
		{nil, nil, `block backend named "disk"`},
	} {
		inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "vblk0", Host: &host{clock: plugin.NewVMClock(true), disk: c.disk}})
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Realize(c.props); err == nil {
			t.Errorf("%v: realized", c.props)
		}
		if logs.count(c.want) == 0 {
			t.Errorf("%v: log lacks %q:\n%s", c.props, c.want, logs.b.String())
		}
		inst.Close()
	}
}

func TestHostileGuest(t *testing.T) {
	path := newImage(t, imageSize)
	e := start(t, path, openImage(t, path, blockdev.Options{}), nil, nil)
	e.up(wantFeatures)
	// Request-level errors complete with a status.
	if _, st := e.request(reqIn, 0, []virtiotest.Buf{{Addr: ramSize - 256, Len: 512, Write: true}}, false); st != statusIOErr {
		t.Errorf("read into a buffer past guest RAM: status %d", st)
	}
	if _, st := e.request(reqOut, 0, []virtiotest.Buf{{Addr: 1 << 40, Len: 512}}, false); st != statusIOErr {
		t.Errorf("write from outside guest RAM: status %d", st)
	}
	if _, st := e.submit([]virtiotest.Buf{{Addr: hdrAddr, Len: 8}, {Addr: statusAddr, Len: 1, Write: true}}, false); st != statusIOErr {
		t.Errorf("short header: status %d", st)
	}
	if u, _ := e.submit([]virtiotest.Buf{{Addr: hdrAddr, Len: 16}}, false); u.Len != 0 {
		t.Errorf("request without a status byte: used len %d", u.Len)
	}
	if u, _ := e.submit([]virtiotest.Buf{{Addr: hdrAddr, Len: 16}, {Addr: 1 << 40, Len: 1, Write: true}}, false); u.Len != 0 {
		t.Errorf("status byte outside RAM: used len %d", u.Len)
	}
	if e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("NEEDS_RESET after request-level errors")
	}
	// A descriptor loop breaks the device: NEEDS_RESET, config interrupt,
	// one log line, instance alive.
	e.drv.Ack(3)
	l := e.q.L
	for _, d := range []struct {
		idx uint16
		d   virtio.Desc
	}{{0, virtio.Desc{Addr: hdrAddr, Len: 16, Flags: virtio.DescFNext, Next: 1}}, {1, virtio.Desc{Addr: dataAddr, Len: 512, Flags: virtio.DescFNext, Next: 0}}} {
		e.q.WriteDesc(d.idx, d.d)
	}
	idx := e.q.UsedIdx() // every request so far completed: avail idx == used idx
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], 0)
	e.guest.Write(l.Driver+4+2*uint64(idx%queueSize), b[:])
	e.q.SetAvailIdx(idx + 1)
	for i := 0; i < 3; i++ {
		e.q.Notify()
	}
	if e.inst.Err() != nil {
		t.Fatalf("instance failed: %v", e.inst.Err())
	}
	if e.drv.Status()&virtio.StatusDeviceNeedsReset == 0 || e.drv.ISR()&virtio.InterruptConfigChange == 0 {
		t.Fatalf("status %#x isr %#x after a descriptor loop", e.drv.Status(), e.drv.ISR())
	}
	if level, _ := e.h.irq(); !level {
		t.Error("no interrupt for NEEDS_RESET")
	}
	if n := e.logs.count("descriptor loop"); n != 1 {
		t.Errorf("descriptor loop logged %d times", n)
	}
	// Garbage register writes do not hurt.
	for off := uint64(0); off < virtio.RegionSize; off += 4 {
		e.drv.Bus.Write(off, 4, 0xffffffff)
		e.drv.Bus.Read(off, 4)
	}
	e.drv.Bus.Write(0x1000, 8, 1)
	if e.inst.Err() != nil {
		t.Fatalf("instance failed: %v", e.inst.Err())
	}
	// A reset brings it back.
	e.up(wantFeatures)
	if _, st := e.request(reqIn, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 512, Write: true}}, false); st != statusOK {
		t.Errorf("after reset: status %d", st)
	}
}

func TestMigrateState(t *testing.T) {
	path := newImage(t, imageSize)
	src := start(t, path, openImage(t, path, blockdev.Options{Owner: "source"}), nil, nil)
	src.up(wantFeatures)
	for i := 0; i < 5; i++ {
		if _, st := src.request(reqIn, uint64(i), []virtiotest.Buf{{Addr: dataAddr, Len: 512, Write: true}}, false); st != statusOK {
			t.Fatal(st)
		}
	}
	secs := src.inst.Sections()
	if len(secs) != 1 || secs[0].Name != "virtio-blk" {
		t.Fatalf("sections %+v", secs)
	}
	if err := src.inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	type chunk struct {
		off  uint32
		data []byte
	}
	var saved []chunk
	for _, f := range secs[0].Fields {
		b, err := src.inst.ReadMemory(f.Offset, f.Size*f.Count)
		if err != nil {
			t.Fatal(err)
		}
		saved = append(saved, chunk{f.Offset, b})
	}
	// The destination opens the image inactive and takes it over.
	dstImg := openImage(t, path, blockdev.Options{Inactive: true, Owner: "destination"})
	dst := start(t, path, dstImg, src.h.mem, nil)
	if err := src.img.Inactivate(); err != nil {
		t.Fatal(err)
	}
	if err := dstImg.Activate(); err != nil {
		t.Fatal(err)
	}
	dsec := dst.inst.Sections()[0]
	for i, f := range dsec.Fields {
		if err := dst.inst.WriteMemory(f.Offset, saved[i].data); err != nil {
			t.Fatal(err)
		}
	}
	if err := dst.inst.PostLoad(dsec.VersionID); err != nil {
		t.Fatal(err)
	}
	// The driver goes on with the same rings against the destination.
	src.drv.Bus, src.inst = bus{I: dst.inst}, dst.inst
	if _, st := src.request(reqOut, 1, []virtiotest.Buf{{Addr: dataAddr, Len: 512}}, false); st != statusOK {
		t.Fatalf("write after migration: status %d", st)
	}
	if src.q.UsedIdx() != 6 {
		t.Errorf("used idx %d after migration, want 6", src.q.UsedIdx())
	}
	// A destination with another image size refuses the state.
	small := newImage(t, imageSize/2)
	bad := start(t, small, openImage(t, small, blockdev.Options{}), src.h.mem, nil)
	bsec := bad.inst.Sections()[0]
	for i, f := range bsec.Fields {
		bad.inst.WriteMemory(f.Offset, saved[i].data)
	}
	if err := bad.inst.PostLoad(bsec.VersionID); err == nil {
		t.Error("state loaded over a smaller image")
	}
}

// A driver queueing more data than one call may move is served in several
// calls: the rest completes from the continuation timer without a new
// notification.
func TestBudgetContinuesFromTimer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 64<<20); err != nil { // sparse: reads are cheap
		t.Fatal(err)
	}
	e := start(t, path, openImage(t, path, blockdev.Options{}), nil, nil)
	e.up(wantFeatures)
	// Three 64 MiB reads, each into the same 4 MiB of guest RAM 16 times.
	var heads []uint16
	for r := 0; r < 3; r++ {
		hdr := uint64(hdrAddr + 0x100*r)
		var h [16]byte
		binary.LittleEndian.PutUint32(h[0:], reqIn)
		e.guest.Write(hdr, h[:])
		bufs := []virtiotest.Buf{{Addr: hdr, Len: 16}}
		for i := 0; i < 16; i++ {
			bufs = append(bufs, virtiotest.Buf{Addr: dataAddr, Len: 4 << 20, Write: true})
		}
		bufs = append(bufs, virtiotest.Buf{Addr: statusAddr + uint64(r), Len: 1, Write: true})
		head, err := e.q.AddIndirect(tableAddr+uint64(0x1000*r), bufs)
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, head)
	}
	e.q.Publish(heads...)
	e.q.Notify()
	if got := e.q.UsedIdx(); got != 2 {
		t.Fatalf("the notification completed %d requests, want 2 (128 MiB budget)", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.q.UsedIdx() != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := e.q.UsedIdx(); got != 3 {
		t.Fatalf("the continuation did not complete the third request: used idx %d (%v)", got, e.inst.Err())
	}
	used, _ := e.q.TakeUsed()
	for _, u := range used {
		if u.Len != 64<<20+1 {
			t.Errorf("used %+v", u)
		}
	}
}

// TestSystemResetResetsTheTransport: a system reset (dev_reset) takes the
// device back to its power-on state, as a driver-initiated reset does.
func TestSystemResetResetsTheTransport(t *testing.T) {
	path := newImage(t, imageSize)
	e := start(t, path, openImage(t, path, blockdev.Options{}), nil, nil)
	e.up(wantFeatures)
	if e.drv.Status() == 0 {
		t.Fatal("device not live after setup")
	}
	if err := e.inst.Reset(); err != nil {
		t.Fatal(err)
	}
	if st := e.drv.Status(); st != 0 {
		t.Fatalf("status after a system reset: %#x, want 0", st)
	}
	// The driver can bring it up again and use it.
	e.up(wantFeatures)
	if _, st := e.request(reqIn, 0, []virtiotest.Buf{{Addr: dataAddr, Len: 512, Write: true}}, false); st != statusOK {
		t.Fatalf("request after reset: status %d", st)
	}
}
