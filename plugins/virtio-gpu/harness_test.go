//go:build !wasip1

package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"image"
	"os"
	"strings"
	"sync"
	"testing"
	"wasmvmm/testsuite/plugintest"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/display"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// These tests load the built plugin into the real host runtime with real
// guest RAM and act as the guest driver through the instance's MMIO calls:
// a Go driver lays out queues, builds commands in guest memory, draws into
// guest pages and reads the responses.

var (
	wasmPath  string
	cacheRoot string
)

func TestMain(m *testing.M) {
	os.Exit(plugintest.Main(m, "virtio-gpu", &wasmPath, &cacheRoot))
}

// host is a plugin.Host over real guest RAM, recording the interrupt line.
type host struct {
	mem   *guestmem.Memory
	clock *plugin.VMClock
	mu    sync.Mutex
	level bool
}

func (h *host) Memory() *guestmem.Memory { return h.mem }
func (h *host) Clock() plugin.Clock      { return h.clock }

func (h *host) SetIRQ(line int, level bool) error {
	if line != 0 {
		return fmt.Errorf("one interrupt line, not %d", line+1)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.level = level
	return nil
}

func (h *host) Backend(abi.BackendKind, string) (plugin.Backend, error) {
	return nil, plugin.ErrNoBackend
}

type bus = plugintest.Bus

type ram = plugintest.RAM

// Guest memory layout of the tests.
const (
	ramSize     = 64 << 20
	ctrlRing    = 0x10000
	cursorRing  = 0x40000
	cmdAddr     = 0x100000
	respAddr    = 0x101000
	entriesAddr = 0x110000 // attach-backing entries (up to 64 KiB)
	fbBase      = 0x1000000
)

type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t      testing.TB
	h      *host
	inst   *plugin.Instance
	drv    *virtiotest.Driver
	ctrl   *virtiotest.Queue
	cursor *virtiotest.Queue
	guest  ram
	logs   *logBuf
}

func newRAM(t testing.TB) *guestmem.Memory {
	blk, err := guestmem.Alloc("ram", 0, ramSize, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := guestmem.New(blk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// instantiate loads the plugin into a fresh runtime and instantiates it
// over guest RAM mem (nil: new RAM), not yet realized.
func instantiate(t testing.TB, mem *guestmem.Memory) (*plugin.Instance, *host, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	rt, err := plugin.NewRuntime(context.Background(), plugin.Config{
		CacheDir: cacheRoot,
		Logger:   hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	if mem == nil {
		mem = newRAM(t)
	}
	mod, err := rt.Load(context.Background(), wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	h := &host{mem: mem, clock: plugin.NewVMClock(true)}
	inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "gpu0", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	return inst, h, logs
}

// start instantiates and realizes the device over guest RAM mem (nil: new
// RAM) with property overrides.
func start(t testing.TB, mem *guestmem.Memory, props plugin.PropertyValues) *env {
	t.Helper()
	if mem == nil {
		mem = newRAM(t)
	}
	inst, h, logs := instantiate(t, mem)
	if err := inst.Realize(props); err != nil {
		t.Fatalf("realize: %v\n%s", err, logs)
	}
	e := &env{t: t, h: h, inst: inst, guest: ram{M: mem}, logs: logs}
	e.drv = &virtiotest.Driver{Bus: bus{I: inst}, RAM: e.guest}
	return e
}

const wantFeatures = 1<<virtio.FVersion1 | 1<<virtio.FIndirectDesc | 1<<virtio.FEventIdx | 1<<fEDID

// up negotiates features and sets both queues up.
func (e *env) up() {
	e.t.Helper()
	if err := e.drv.Init(wantFeatures); err != nil {
		e.t.Fatal(err)
	}
	l, _ := virtiotest.LayoutAt(ctrlRing, ctrlQueueSize)
	q, err := e.drv.SetupQueue(ctrlQueue, ctrlQueueSize, l)
	if err != nil {
		e.t.Fatal(err)
	}
	lc, _ := virtiotest.LayoutAt(cursorRing, cursorQueueSize)
	qc, err := e.drv.SetupQueue(cursorQueue, cursorQueueSize, lc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.drv.DriverOK()
	e.ctrl, e.cursor = q, qc
}

// hdr builds a control header.
func hdr(typ uint32, fence uint64) []byte {
	b := make([]byte, hdrSize)
	le.PutUint32(b[0:], typ)
	if fence != 0 {
		le.PutUint32(b[4:], flagFence)
		le.PutUint64(b[8:], fence)
		le.PutUint32(b[16:], 7) // ctx id, echoed
	}
	return b
}

// words appends little-endian u32s.
func words(b []byte, vs ...uint32) []byte {
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// exec submits a control command (cmd at cmdAddr, extra readable buffers
// after it) with a response buffer of respLen bytes and returns the
// response bytes the device wrote.
func (e *env) exec(cmd []byte, respLen uint32, extra ...virtiotest.Buf) []byte {
	e.t.Helper()
	if err := e.guest.Write(cmdAddr, cmd); err != nil {
		e.t.Fatal(err)
	}
	fill := make([]byte, respLen)
	for i := range fill {
		fill[i] = 0xee
	}
	e.guest.Write(respAddr, fill)
	bufs := append([]virtiotest.Buf{{Addr: cmdAddr, Len: uint32(len(cmd))}}, extra...)
	if respLen > 0 {
		bufs = append(bufs, virtiotest.Buf{Addr: respAddr, Len: respLen, Write: true})
	}
	head, err := e.ctrl.Add(bufs)
	if err != nil {
		e.t.Fatal(err)
	}
	e.ctrl.Publish(head)
	e.ctrl.Notify()
	used, err := e.ctrl.TakeUsed()
	if err != nil || len(used) != 1 || used[0].ID != uint32(head) {
		e.t.Fatalf("used %+v %v (head %d; status %#x; instance %v)\n%s", used, err, head, e.drv.Status(), e.inst.Err(), e.logs)
	}
	out := make([]byte, used[0].Len)
	e.guest.Read(respAddr, out)
	return out
}

// status runs a command with a header-sized response and returns the
// response type.
func (e *env) status(cmd []byte, extra ...virtiotest.Buf) uint32 {
	e.t.Helper()
	r := e.exec(cmd, hdrSize, extra...)
	if len(r) != hdrSize {
		e.t.Fatalf("response of %d bytes to command %#x", len(r), le.Uint32(cmd))
	}
	return le.Uint32(r)
}

func (e *env) create(id, format, w, h uint32) uint32 {
	return e.status(words(hdr(cmdResourceCreate2D, 0), id, format, w, h))
}

// pageList returns the guest pages backing n bytes: 4 KiB pages in
// reverse order, one free page between each, from base.
func pageList(base uint64, n uint32) []virtiotest.Buf {
	pages := (n + 4095) / 4096
	var l []virtiotest.Buf
	for i := uint32(0); i < pages; i++ {
		l = append(l, virtiotest.Buf{Addr: base + uint64(pages-1-i)*8192, Len: 4096})
	}
	return l
}

// attach sends RESOURCE_ATTACH_BACKING with the pages (its entries in a
// second readable buffer).
func (e *env) attach(id uint32, pages []virtiotest.Buf) uint32 {
	e.t.Helper()
	var ents []byte
	for _, p := range pages {
		ents = binary.LittleEndian.AppendUint64(ents, p.Addr)
		ents = words(ents, p.Len, 0xdeadbeef) // garbage padding
	}
	if err := e.guest.Write(entriesAddr, ents); err != nil {
		e.t.Fatal(err)
	}
	cmd := words(hdr(cmdResourceAttachBacking, 0), id, uint32(len(pages)))
	if len(pages) == 0 {
		return e.status(cmd)
	}
	return e.status(cmd, virtiotest.Buf{Addr: entriesAddr, Len: uint32(len(ents))})
}

func (e *env) transfer(id, x, y, w, h uint32, offset uint64) uint32 {
	b := words(hdr(cmdTransferToHost2D, 0), x, y, w, h)
	b = binary.LittleEndian.AppendUint64(b, offset)
	return e.status(words(b, id, 0))
}

func (e *env) setScanout(scanout, id, x, y, w, h uint32) uint32 {
	return e.status(words(hdr(cmdSetScanout, 0), x, y, w, h, scanout, id))
}

func (e *env) flush(id, x, y, w, h uint32) uint32 {
	return e.status(words(hdr(cmdResourceFlush, 0), x, y, w, h, id, 0))
}

func (e *env) unref(id uint32) uint32 {
	return e.status(words(hdr(cmdResourceUnref, 0), id, 0))
}

// byteOrder returns where red, green, blue and the fourth byte go in a
// pixel of format.
func byteOrder(format uint32) (r, g, b, x int) {
	switch format {
	case formatB8G8R8A8, formatB8G8R8X8:
		return 2, 1, 0, 3
	case formatA8R8G8B8, formatX8R8G8B8:
		return 1, 2, 3, 0
	case formatR8G8B8A8, formatR8G8B8X8:
		return 0, 1, 2, 3
	}
	return 3, 2, 1, 0 // A8B8G8R8, X8B8G8R8
}

// drawCard writes the w x h test card in format into the guest pages (the
// backing of a w x h resource, rows w*4 bytes apart) and returns the bytes.
func (e *env) drawCard(pages []virtiotest.Buf, format uint32, w, h int) []byte {
	e.t.Helper()
	ri, gi, bi, xi := byteOrder(format)
	fb := make([]byte, w*h*4)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, b := display.TestCardPixel(x, y, w, h)
			p := fb[(y*w+x)*4:]
			p[ri], p[gi], p[bi], p[xi] = r, g, b, 0xff
		}
	}
	e.writeBacking(pages, 0, fb)
	return fb
}

// writeBacking writes data at offset off of the backing made of pages.
func (e *env) writeBacking(pages []virtiotest.Buf, off uint64, data []byte) {
	e.t.Helper()
	var base uint64
	for _, p := range pages {
		end := base + uint64(p.Len)
		if len(data) > 0 && off < end {
			skip := off - base
			n := min(uint64(p.Len)-skip, uint64(len(data)))
			if err := e.guest.Write(p.Addr+skip, data[:n]); err != nil {
				e.t.Fatal(err)
			}
			data, off = data[n:], off+n
		}
		base = end
	}
	if len(data) != 0 {
		e.t.Fatalf("%d bytes past the backing", len(data))
	}
}

// scanoutField reads a member of scanout i through the registered schema.
func (e *env) scanoutField(i int, name string) uint32 {
	e.t.Helper()
	for _, f := range e.inst.Sections()[0].Fields {
		if f.Name != "scanouts" {
			continue
		}
		for _, m := range f.Struct.Fields {
			if m.Name == name {
				b, err := e.inst.ReadMemory(f.Offset+uint32(i)*f.Size+m.Offset, 4)
				if err != nil {
					e.t.Fatal(err)
				}
				return le.Uint32(b)
			}
		}
	}
	e.t.Fatalf("no scanout member %q", name)
	return 0
}

// comparePixels fails unless got equals want pixel for pixel, naming the
// first difference.
func comparePixels(t testing.TB, got, want *image.NRGBA) {
	t.Helper()
	if got.Bounds() != want.Bounds() {
		t.Fatalf("image %v, want %v", got.Bounds(), want.Bounds())
	}
	b := want.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if g, w := got.NRGBAAt(x, y), want.NRGBAAt(x, y); g != w {
				t.Fatalf("pixel (%d,%d) is %v, want %v", x, y, g, w)
			}
		}
	}
}
