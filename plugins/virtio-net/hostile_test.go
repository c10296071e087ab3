//go:build !wasip1

package main

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// publishRaw makes head available in q without the driver's bookkeeping
// (for chains written descriptor by descriptor).
func (e *env) publishRaw(q *virtiotest.Queue, head uint16) {
	e.t.Helper()
	idx := e.availIdx(q)
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], head)
	e.guest.Write(q.L.Driver+4+2*uint64(idx%q.Size), b[:])
	q.SetAvailIdx(idx + 1)
}

func (e *env) availIdx(q *virtiotest.Queue) uint16 {
	var b [2]byte
	e.guest.Read(q.L.Driver+2, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

func (e *env) mustBreak(what, logged string) {
	e.t.Helper()
	if err := e.inst.Err(); err != nil {
		e.t.Fatalf("%s: instance failed: %v", what, err)
	}
	if e.drv.Status()&virtio.StatusDeviceNeedsReset == 0 || e.drv.ISR()&virtio.InterruptConfigChange == 0 {
		e.t.Fatalf("%s: status %#x isr %#x, want NEEDS_RESET and a config interrupt", what, e.drv.Status(), e.drv.ISR())
	}
	if level, _ := e.h.irq(); !level {
		e.t.Errorf("%s: no interrupt for NEEDS_RESET", what)
	}
	if n := e.logs.count(logged); n != 1 {
		e.t.Errorf("%s: %q logged %d times, want once:\n%s", what, logged, n, e.logs)
	}
}

func TestHostileGuest(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)

	// Transmit buffers outside guest RAM: dropped and logged once, the
	// device goes on.
	var heads []uint16
	for _, b := range [][]virtiotest.Buf{
		{{Addr: 1 << 40, Len: 100}},
		{{Addr: ramSize - 50, Len: 100}},
		{{Addr: txData, Len: hdrLen}, {Addr: 1 << 50, Len: 60}},
	} {
		h, err := e.tx.Add(b)
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	e.tx.Publish(heads...)
	e.tx.Notify()
	used, _ := e.tx.TakeUsed()
	if len(used) != 3 {
		t.Fatalf("used %+v", used)
	}
	if n := e.logs.count("outside guest RAM; dropped"); n != 1 {
		t.Errorf("bad transmit buffers logged %d times:\n%s", n, e.logs)
	}
	// Too short to hold a header and an Ethernet header: dropped.
	e.guest.Write(txData, make([]byte, 20))
	h, _ := e.tx.Add([]virtiotest.Buf{{Addr: txData, Len: 20}})
	e.tx.Publish(h)
	e.tx.Notify()
	if u, _ := e.tx.TakeUsed(); len(u) != 1 {
		t.Fatalf("short frame not completed: %+v", u)
	}
	f := frame(100, 1)
	e.transmit([][]byte{f})
	if got := recvFrame(t, testEnd); !bytes.Equal(got, f) {
		t.Fatal("good frame after bad ones differs")
	}
	if e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("NEEDS_RESET after dropped frames")
	}

	// A descriptor loop in the transmit queue breaks the device.
	e.drv.Ack(3)
	e.tx.WriteDesc(0, virtio.Desc{Addr: txData, Len: 64, Flags: virtio.DescFNext, Next: 1})
	e.tx.WriteDesc(1, virtio.Desc{Addr: txData + 64, Len: 64, Flags: virtio.DescFNext, Next: 0})
	e.publishRaw(e.tx, 0)
	for i := 0; i < 3; i++ {
		e.tx.Notify()
	}
	e.mustBreak("descriptor loop", "descriptor loop")

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
	e.up(allFeatures)
	e.transmit([][]byte{f})
	if got := recvFrame(t, testEnd); !bytes.Equal(got, f) {
		t.Fatal("frame after reset differs")
	}
}

func TestHostileReceiveChains(t *testing.T) {
	for _, c := range []struct {
		name   string
		post   func(e *env)
		logged string
	}{
		{"loop", func(e *env) {
			e.rx.WriteDesc(5, virtio.Desc{Addr: rxData, Len: 1024, Flags: virtio.DescFWrite | virtio.DescFNext, Next: 6})
			e.rx.WriteDesc(6, virtio.Desc{Addr: rxData + 1024, Len: 1024, Flags: virtio.DescFWrite | virtio.DescFNext, Next: 5})
			e.publishRaw(e.rx, 5)
		}, "descriptor loop"},
		{"longer than the limit", func(e *env) {
			bufs := make([]virtiotest.Buf, 1500)
			for i := range bufs {
				bufs[i] = virtiotest.Buf{Addr: rxData + uint64(i)*8, Len: 8, Write: true}
			}
			h, err := e.rx.AddIndirect(tableAddr, bufs)
			if err != nil {
				e.t.Fatal(err)
			}
			e.rx.Publish(h)
		}, "indirect table length"},
		{"outside RAM", func(e *env) {
			h, _ := e.rx.Add([]virtiotest.Buf{{Addr: ramSize - 1000, Len: 2048, Write: true}})
			e.rx.Publish(h)
		}, "outside guest RAM"},
		{"readable buffer", func(e *env) {
			h, _ := e.rx.Add([]virtiotest.Buf{{Addr: rxData, Len: 10}, {Addr: rxData + 4096, Len: 2048, Write: true}})
			e.rx.Publish(h)
		}, "device-readable"},
		{"no room for the header", func(e *env) {
			h, _ := e.rx.Add([]virtiotest.Buf{{Addr: rxData, Len: 8, Write: true}})
			e.rx.Publish(h)
		}, "at least 12"},
	} {
		t.Run(c.name, func(t *testing.T) {
			devEnd, testEnd := peer(t)
			e := start(t, devEnd, nil)
			e.up(allFeatures)
			testEnd.SendSG([][]byte{frame(100, 1)})
			c.post(e)
			e.rx.Notify()
			deadline := time.Now().Add(patience)
			for e.drv.Status()&virtio.StatusDeviceNeedsReset == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			e.rx.Notify()
			e.mustBreak(c.name, c.logged)
			// Reset, post good buffers: the frame still waiting arrives.
			e.drv.Ack(3)
			e.up(allFeatures)
			e.postRx(4, 2048)
			if got := e.waitRx(1); !bytes.Equal(got[0].frame, frame(100, 1)) {
				t.Fatal("frame after reset differs")
			}
		})
	}
}

// TestHostileBatch: a loop among a batch of chains (the descriptor table
// is read in one piece for batches): the chains before it go out, then
// the device breaks.
func TestHostileBatch(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)
	var frames [][]byte
	for i := 0; i < 4; i++ {
		f := frame(100+i, byte(i))
		frames = append(frames, f)
		addr := txData + uint64(i)*0x1000
		e.guest.Write(addr, append(make([]byte, hdrLen), f...))
		e.tx.WriteDesc(uint16(10+i), virtio.Desc{Addr: addr, Len: uint32(hdrLen + len(f))})
		e.publishRaw(e.tx, uint16(10+i))
	}
	e.tx.WriteDesc(20, virtio.Desc{Addr: txData, Len: 64, Flags: virtio.DescFNext, Next: 21})
	e.tx.WriteDesc(21, virtio.Desc{Addr: txData, Len: 64, Flags: virtio.DescFNext, Next: 20})
	e.publishRaw(e.tx, 20)
	e.tx.Notify()
	for i, f := range frames {
		if got := recvFrame(t, testEnd); !bytes.Equal(got, f) {
			t.Fatalf("frame %d before the loop differs", i)
		}
	}
	if u := e.tx.UsedIdx(); u != 4 {
		t.Errorf("used idx %d, want 4", u)
	}
	e.mustBreak("loop in a batch", "descriptor loop")
}
