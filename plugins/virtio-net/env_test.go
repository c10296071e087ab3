//go:build !wasip1

package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"wasmvmm/testsuite/plugintest"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// These tests load the built plugin into the real host runtime, give it
// real guest RAM and real backends from host/netdev, and act as the guest
// driver through the instance's MMIO calls.

var (
	wasmPath  string
	cacheRoot string
)

func TestMain(m *testing.M) {
	os.Exit(plugintest.Main(m, "virtio-net", &wasmPath, &cacheRoot))
}

// host is a plugin.Host over real guest RAM and one net backend,
// recording the interrupt line.
type host struct {
	mem   *guestmem.Memory
	clock *plugin.VMClock
	net   plugin.Backend
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
	if name == "net" && h.net != nil {
		return h.net, nil
	}
	return nil, plugin.ErrNoBackend
}

func (h *host) irq() (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.level, h.edges
}

type bus = plugintest.Bus

type ram = plugintest.RAM

// patience bounds every wait for the device or the kernel; the machine is
// shared, so it is generous (waits end as soon as the condition holds).
const patience = 30 * time.Second

// Guest memory layout of the tests.
const (
	ramSize    = 64 << 20
	rxRingAddr = 0x10000
	txRingAddr = 0x20000
	tableAddr  = 0x40000 // indirect tables
	txData     = 0x100000
	rxData     = 0x1000000
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

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t     testing.TB
	h     *host
	inst  *plugin.Instance
	drv   *virtiotest.Driver
	rx    *virtiotest.Queue
	tx    *virtiotest.Queue
	logs  *logBuf
	guest ram
	// rxNext is where the next posted receive buffer goes.
	rxNext uint64
	// posted are the receive chains the device has not used yet.
	posted map[uint16]rxBuf
}

func newRuntime(t testing.TB, logs *logBuf, cfg plugin.Config) *plugin.Runtime {
	cfg.CacheDir = cacheRoot
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	rt, err := plugin.NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	return rt
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

// start instantiates and realizes a device over backend be.
func start(t testing.TB, be plugin.Backend, props plugin.PropertyValues) *env {
	return startWith(t, be, props, nil, plugin.Config{})
}

func startWith(t testing.TB, be plugin.Backend, props plugin.PropertyValues, mem *guestmem.Memory, cfg plugin.Config) *env {
	t.Helper()
	logs := &logBuf{}
	rt := newRuntime(t, logs, cfg)
	if mem == nil {
		mem = newRAM(t)
	}
	h := &host{mem: mem, clock: plugin.NewVMClock(true), net: be}
	mod, err := rt.Load(context.Background(), wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "net0", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	if err := inst.Realize(props); err != nil {
		t.Fatalf("realize: %v\n%s", err, logs)
	}
	e := &env{t: t, h: h, inst: inst, logs: logs, guest: ram{M: mem}, rxNext: rxData}
	e.drv = &virtiotest.Driver{Bus: bus{I: inst}, RAM: e.guest}
	return e
}

// up negotiates want and sets up both queues.
func (e *env) up(want uint64) {
	e.t.Helper()
	if err := e.drv.Init(want); err != nil {
		e.t.Fatal(err)
	}
	l, _ := virtiotest.LayoutAt(rxRingAddr, queueSize)
	rx, err := e.drv.SetupQueue(rxQ, queueSize, l)
	if err != nil {
		e.t.Fatal(err)
	}
	l, _ = virtiotest.LayoutAt(txRingAddr, queueSize)
	tx, err := e.drv.SetupQueue(txQ, queueSize, l)
	if err != nil {
		e.t.Fatal(err)
	}
	e.drv.DriverOK()
	e.rx, e.tx = rx, tx
	e.rxNext = rxData
	e.posted = map[uint16]rxBuf{}
}

// allFeatures is every bit a driver could accept, except EVENT_IDX (the
// tests want an interrupt for every batch).
const allFeatures = ^uint64(0) &^ (1 << virtio.FEventIdx)

// transmit sends frames, each behind a zero header, each in one chain of
// buffers cut at the given sizes, with one notification; it returns the
// used entries.
func (e *env) transmit(frames [][]byte, cuts ...int) []virtiotest.Used {
	e.t.Helper()
	addr := uint64(txData)
	var heads []uint16
	for _, f := range frames {
		pkt := append(make([]byte, hdrLen), f...)
		var bufs []virtiotest.Buf
		rest := pkt
		for _, c := range append(cuts, len(pkt)) {
			c = min(c, len(rest))
			if c == 0 {
				continue
			}
			e.guest.Write(addr, rest[:c])
			bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(c)})
			addr += uint64(c) + 64 // not adjacent: separate buffers
			rest = rest[c:]
		}
		head, err := e.tx.Add(bufs)
		if err != nil {
			e.t.Fatal(err)
		}
		heads = append(heads, head)
		addr = (addr + 4095) &^ 4095
	}
	e.tx.Publish(heads...)
	e.tx.Notify()
	used, err := e.tx.TakeUsed()
	if err != nil || len(used) != len(frames) {
		e.t.Fatalf("used %+v %v (want %d; status %#x; instance %v)\n%s", used, err, len(frames), e.drv.Status(), e.inst.Err(), e.logs)
	}
	return used
}

// transmitRaw sends one chain holding pkt (header included) as is.
func (e *env) transmitRaw(pkt []byte) {
	e.t.Helper()
	e.guest.Write(txData, pkt)
	head, err := e.tx.Add([]virtiotest.Buf{{Addr: txData, Len: uint32(len(pkt))}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.tx.Publish(head)
	e.tx.Notify()
	if used, err := e.tx.TakeUsed(); err != nil || len(used) != 1 {
		e.t.Fatalf("used %+v %v\n%s", used, err, e.logs)
	}
}

// rxBuf is one posted receive chain.
type rxBuf struct {
	head uint16
	bufs []virtiotest.Buf
}

// postRx posts n receive chains, each of buffers of the given sizes, and
// notifies the receive queue.
func (e *env) postRx(n int, sizes ...uint32) {
	e.t.Helper()
	var heads []uint16
	for i := 0; i < n; i++ {
		var bufs []virtiotest.Buf
		for _, s := range sizes {
			bufs = append(bufs, virtiotest.Buf{Addr: e.rxNext, Len: s, Write: true})
			e.guest.Write(e.rxNext, make([]byte, s))
			e.rxNext += (uint64(s) + 64 + 63) &^ 63
		}
		head, err := e.rx.Add(bufs)
		if err != nil {
			e.t.Fatal(err)
		}
		e.posted[head] = rxBuf{head, bufs}
		heads = append(heads, head)
	}
	e.rx.Publish(heads...)
	e.rx.Notify()
}

// received is one frame as the driver sees it.
type received struct {
	hdr   [hdrLen]byte
	frame []byte
	nbuf  int
}

// waitRx waits for want frames in the receive ring and reassembles them
// from the chains posted (mergeable frames span num_buffers chains).
func (e *env) waitRx(want int) []received {
	e.t.Helper()
	out, ok := e.tryRx(want, patience)
	if !ok {
		e.t.Fatalf("received %d of %d frames (status %#x, instance %v)\n%s", len(out), want, e.drv.Status(), e.inst.Err(), e.logs)
	}
	return out
}

// tryRx is waitRx giving up after within: it returns the frames received
// and whether there were want of them.
func (e *env) tryRx(want int, within time.Duration) ([]received, bool) {
	e.t.Helper()
	var used []virtiotest.Used
	deadline := time.Now().Add(within)
	var out []received
	for len(out) < want {
		u, err := e.rx.TakeUsed()
		if err != nil {
			e.t.Fatal(err)
		}
		used = append(used, u...)
		for len(used) > 0 {
			first := e.chainBytes(used[0])
			var r received
			copy(r.hdr[:], first)
			r.nbuf = int(binary.LittleEndian.Uint16(r.hdr[10:]))
			if r.nbuf == 0 || r.nbuf > len(used) {
				if r.nbuf == 0 {
					e.t.Fatalf("num_buffers 0 in %x", r.hdr)
				}
				break // the rest is not in the ring yet
			}
			data := first[hdrLen:]
			for _, u := range used[1:r.nbuf] {
				data = append(data, e.chainBytes(u)...)
			}
			r.frame = data
			used = used[r.nbuf:]
			out = append(out, r)
		}
		if len(out) < want {
			if time.Now().After(deadline) {
				return out, false
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	return out, true
}

// chainBytes returns the bytes the device wrote into a used chain.
func (e *env) chainBytes(u virtiotest.Used) []byte {
	e.t.Helper()
	c, ok := e.posted[uint16(u.ID)]
	if !ok {
		e.t.Fatalf("used entry for head %d, which was not posted", u.ID)
	}
	delete(e.posted, uint16(u.ID))
	var out []byte
	left := int(u.Len)
	for _, b := range c.bufs {
		n := min(left, int(b.Len))
		p := make([]byte, n)
		e.guest.Read(b.Addr, p)
		out = append(out, p...)
		left -= n
	}
	if left != 0 {
		e.t.Fatalf("used length %d exceeds the chain at head %d", u.Len, u.ID)
	}
	return out
}

// frame builds an Ethernet frame of n bytes from src to dst with a
// recognizable payload.
func frame(n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f[0:6], []byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc})
	copy(f[6:12], []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56})
	binary.BigEndian.PutUint16(f[12:], 0x88b5) // local experimental ethertype
	for i := 14; i < n; i++ {
		f[i] = byte(i)*31 + seed
	}
	return f
}
