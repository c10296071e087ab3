//go:build !wasip1

package main

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/display"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// TestHostileGuest sends commands a broken or malicious driver could send:
// every one is answered with an error response, the device stays usable and
// the instance alive.
func TestHostileGuest(t *testing.T) {
	e := start(t, nil, nil)
	e.up()
	check := func(what string, got, want uint32) {
		t.Helper()
		if got != want {
			t.Errorf("%s: response %#x, want %#x", what, got, want)
		}
	}
	// Resource ids.
	check("create id 0", e.create(0, formatB8G8R8X8, 64, 64), respErrInvalidResourceID)
	check("create", e.create(1, formatB8G8R8X8, 64, 64), respOKNoData)
	check("create a taken id", e.create(1, formatB8G8R8X8, 64, 64), respErrInvalidResourceID)
	check("create with format 5", e.create(2, 5, 64, 64), respErrInvalidParameter)
	check("create 0 wide", e.create(2, formatB8G8R8X8, 0, 64), respErrInvalidParameter)
	check("unref unknown", e.unref(99), respErrInvalidResourceID)
	check("transfer to unknown", e.transfer(99, 0, 0, 1, 1, 0), respErrInvalidResourceID)
	check("flush unknown", e.flush(99, 0, 0, 1, 1), respErrInvalidResourceID)
	check("set scanout to unknown", e.setScanout(0, 99, 0, 0, 64, 64), respErrInvalidResourceID)
	check("attach to unknown", e.attach(99, pageList(fbBase, 4096)), respErrInvalidResourceID)
	check("detach unknown", e.status(words(hdr(cmdResourceDetachBacking, 0), 99, 0)), respErrInvalidResourceID)

	// Backing.
	check("transfer without backing", e.transfer(1, 0, 0, 64, 64, 0), respErrUnspec)
	check("set scanout without backing", e.setScanout(0, 1, 0, 0, 64, 64), respErrUnspec)
	check("detach without backing", e.status(words(hdr(cmdResourceDetachBacking, 0), 1, 0)), respErrUnspec)
	check("attach outside RAM", e.attach(1, []virtiotest.Buf{{Addr: fbBase, Len: 4096}, {Addr: ramSize - 2048, Len: 4096}}), respErrUnspec)
	check("attach far outside RAM", e.attach(1, []virtiotest.Buf{{Addr: 1 << 62, Len: 4096}}), respErrUnspec)
	check("attach wrapping", e.attach(1, []virtiotest.Buf{{Addr: ^uint64(0) - 100, Len: 4096}}), respErrUnspec)
	check("attach 0 entries", e.attach(1, nil), respErrUnspec)
	// More entries announced than sent.
	check("attach short list", e.status(words(hdr(cmdResourceAttachBacking, 0), 1, 10),
		virtiotest.Buf{Addr: entriesAddr, Len: 32}), respErrUnspec)
	check("attach 20000 entries", e.status(words(hdr(cmdResourceAttachBacking, 0), 1, 20000)), respErrUnspec)
	pages := pageList(fbBase, 64*64*4)
	check("attach", e.attach(1, pages), respOKNoData)
	check("attach twice", e.attach(1, pages), respErrUnspec)

	// Rectangles.
	check("transfer outside", e.transfer(1, 32, 0, 64, 64, 0), respErrInvalidParameter)
	check("transfer wrapping", e.transfer(1, 0xffffffff, 0, 2, 1, 0), respErrInvalidParameter)
	check("transfer from past the backing", e.transfer(1, 0, 0, 64, 64, 4096), respErrInvalidParameter)
	check("transfer huge offset", e.transfer(1, 0, 0, 1, 1, ^uint64(0)-2), respErrInvalidParameter)
	check("flush outside", e.flush(1, 0, 60, 64, 8), respErrInvalidParameter)
	check("set scanout id 1 of 1", e.setScanout(1, 1, 0, 0, 64, 64), respErrInvalidScanoutID)
	check("set scanout id 2^31", e.setScanout(1<<31, 1, 0, 0, 64, 64), respErrInvalidScanoutID)
	check("set scanout larger than the resource", e.setScanout(0, 1, 0, 0, 65, 64), respErrInvalidParameter)
	check("set scanout below 16x16", e.setScanout(0, 1, 0, 0, 15, 64), respErrInvalidParameter)
	check("create 8x8", e.create(3, formatB8G8R8X8, 8, 8), respOKNoData)
	check("attach 8x8", e.attach(3, pageList(fbBase+0x100000, 256)), respOKNoData)
	check("set scanout to an 8x8 resource", e.setScanout(0, 3, 0, 0, 8, 8), respErrInvalidParameter)

	// Memory caps.
	check("create 16384x16384", e.create(4, formatB8G8R8X8, 16384, 16384), respErrOutOfMemory)
	check("create 100000x1", e.create(4, formatB8G8R8X8, 100000, 1), respErrOutOfMemory)
	check("create 0xffffffff square", e.create(4, formatB8G8R8X8, 0xffffffff, 0xffffffff), respErrOutOfMemory)

	// Commands that are not 2D, short or unknown.
	check("3D context command", e.status(words(hdr(cmdCtxDestroy, 0))), respErrInvalidContextID)
	check("submit 3D", e.status(words(hdr(cmdSubmit3D, 0), 0, 0)), respErrInvalidContextID)
	check("unknown command", e.status(hdr(0x999, 0)), respErrUnspec)
	check("short create", e.status(words(hdr(cmdResourceCreate2D, 0), 7, formatB8G8R8X8)), respErrUnspec)
	check("short header", e.status(make([]byte, 12)), respErrUnspec)
	// A response buffer too small: the device writes what fits.
	if r := e.exec(hdr(cmdGetDisplayInfo, 0), 100); len(r) != 100 || le.Uint32(r) != respOKDisplayInfo {
		t.Errorf("display info into 100 bytes: %d bytes, type %#x", len(r), le.Uint32(r))
	}
	// A command whose response buffer lies outside RAM completes without
	// a response.
	head, _ := e.ctrl.Add([]virtiotest.Buf{{Addr: cmdAddr, Len: hdrSize}, {Addr: 1 << 40, Len: hdrSize, Write: true}})
	e.guest.Write(cmdAddr, hdr(cmdGetDisplayInfo, 0))
	e.ctrl.Publish(head)
	e.ctrl.Notify()
	if used, _ := e.ctrl.TakeUsed(); len(used) != 1 || used[0].Len != 0 {
		t.Errorf("response outside RAM: used %+v", used)
	}

	if e.inst.Err() != nil || e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("device broken after command errors: %v, status %#x\n%s", e.inst.Err(), e.drv.Status(), e.logs)
	}
	// Still works.
	e.drawCard(pages, formatB8G8R8X8, 64, 64)
	check("transfer", e.transfer(1, 0, 0, 64, 64, 0), respOKNoData)
	check("set scanout", e.setScanout(0, 1, 0, 0, 64, 64), respOKNoData)
	got, err := display.Capture(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	comparePixels(t, got, display.TestCard(64, 64))
	// The guest's errors were logged, rate-limited, at warning level.
	if !strings.Contains(e.logs.String(), "SET_SCANOUT of resource 1, which has no backing") {
		t.Errorf("log lacks the scanout refusal:\n%s", e.logs)
	}
}

// TestArenaLimitAndCompaction fills the pixel arena with full-HD resources,
// is refused one more, frees two that are not adjacent and then creates one
// larger than either gap: the device moves the images together, and the
// scanout still shows the right pixels.
func TestArenaLimitAndCompaction(t *testing.T) {
	const w, h = 1920, 1080
	e := start(t, nil, nil)
	e.up()
	for id := uint32(1); id <= 4; id++ {
		if st := e.create(id, formatB8G8R8X8, w, h); st != respOKNoData {
			t.Fatalf("full-HD resource %d: %#x", id, st)
		}
	}
	t.Logf("plugin linear memory with the arena full: %d MiB", e.inst.MemorySize()>>20)
	if st := e.create(5, formatB8G8R8X8, w, h); st != respErrOutOfMemory {
		t.Fatalf("fifth full-HD resource: %#x, want OUT_OF_MEMORY", st)
	}
	// Resource 2 shows the card; 1 and 3 go away.
	pages := pageList(fbBase, w*h*4)
	if st := e.attach(2, pages); st != respOKNoData {
		t.Fatalf("attach: %#x", st)
	}
	e.drawCard(pages, formatB8G8R8X8, w, h)
	e.transfer(2, 0, 0, w, h, 0)
	e.setScanout(0, 2, 0, 0, w, h)
	e.unref(1)
	e.unref(3)
	// 2560x1600 (15.6 MiB) fits in the free 16.3 MiB but in no gap.
	if st := e.create(6, formatB8G8R8X8, 2560, 1600); st != respOKNoData {
		t.Fatalf("resource after compaction: %#x\n%s", st, e.logs)
	}
	got, err := display.Capture(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	comparePixels(t, got, display.TestCard(w, h))
	// The table holds 256 resources at most.
	for id := uint32(100); id < 100+maxResources; id++ {
		st := e.create(id, formatB8G8R8X8, 16, 16)
		if id < 100+maxResources-3 && st != respOKNoData {
			t.Fatalf("small resource %d: %#x", id, st)
		}
		if id >= 100+maxResources-3 && st != respErrOutOfMemory {
			t.Fatalf("resource %d beyond the table: %#x", id, st)
		}
	}
}

// TestBackingPool attaches and detaches page lists so that the pool must
// stay compact, and checks each resource keeps its own pages.
func TestBackingPool(t *testing.T) {
	const w, h = 64, 64
	e := start(t, nil, nil)
	e.up()
	lists := map[uint32][]virtiotest.Buf{}
	for id := uint32(1); id <= 3; id++ {
		e.create(id, formatB8G8R8X8, w, h)
		lists[id] = pageList(fbBase+uint64(id)<<20, w*h*4)
		if st := e.attach(id, lists[id]); st != respOKNoData {
			t.Fatal(st)
		}
	}
	if st := e.status(words(hdr(cmdResourceDetachBacking, 0), 1, 0)); st != respOKNoData {
		t.Fatal(st)
	}
	e.unref(2)
	// Resource 3's entries moved down the pool; its transfer still reads
	// its own pages.
	e.drawCard(lists[3], formatB8G8R8X8, w, h)
	if st := e.transfer(3, 0, 0, w, h, 0); st != respOKNoData {
		t.Fatal(st)
	}
	e.setScanout(0, 3, 0, 0, w, h)
	got, err := display.Capture(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	comparePixels(t, got, display.TestCard(w, h))
	// One list of 16384 entries fills the pool: refused while 3 holds
	// entries, as the pool has room for 16384 in all.
	big := make([]virtiotest.Buf, maxBackingEntries)
	for i := range big {
		big[i] = virtiotest.Buf{Addr: fbBase + uint64(i)*16, Len: 16}
	}
	e.create(9, formatB8G8R8X8, 256, 256)
	var ents []byte
	for _, p := range big {
		ents = binary.LittleEndian.AppendUint64(ents, p.Addr)
		ents = words(ents, p.Len, 0)
	}
	e.guest.Write(entriesAddr, ents[:64<<10])
	e.guest.Write(entriesAddr+0x100000, ents[64<<10:])
	cmd := words(hdr(cmdResourceAttachBacking, 0), 9, maxBackingEntries)
	extra := []virtiotest.Buf{{Addr: entriesAddr, Len: 64 << 10}, {Addr: entriesAddr + 0x100000, Len: uint32(len(ents) - 64<<10)}}
	if st := e.status(cmd, extra...); st != respErrOutOfMemory {
		t.Fatalf("16384 entries with 4 in use: %#x", st)
	}
	e.unref(3)
	if st := e.status(cmd, extra...); st != respOKNoData {
		t.Fatalf("16384 entries in an empty pool: %#x\n%s", st, e.logs)
	}
}

// TestReset: a transport reset and a system reset destroy every resource.
func TestReset(t *testing.T) {
	e := start(t, nil, nil)
	e.up()
	e.create(1, formatB8G8R8X8, 64, 64)
	pages := pageList(fbBase, 64*64*4)
	e.attach(1, pages)
	e.setScanout(0, 1, 0, 0, 64, 64)
	if err := e.inst.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := display.Capture(e.inst, 0); err == nil {
		t.Fatal("scanout shows something after a system reset")
	}
	e.up()
	if st := e.create(1, formatB8G8R8X8, 64, 64); st != respOKNoData {
		t.Fatalf("resource 1 survived the reset: %#x", st)
	}
	e.attach(1, pages)
	e.setScanout(0, 1, 0, 0, 64, 64)
	e.up() // the driver's reset (status 0)
	if _, err := display.Capture(e.inst, 0); err == nil {
		t.Fatal("scanout shows something after a transport reset")
	}
}

func TestBadProperties(t *testing.T) {
	for _, c := range []struct {
		props map[string]any
		want  string
	}{
		{map[string]any{"max_outputs": 0}, "max_outputs is 0"},
		{map[string]any{"max_outputs": 17}, "max_outputs is 17"},
		{map[string]any{"xres": 8}, "xres is 8"},
		{map[string]any{"yres": 5000}, "yres is 5000"},
		{map[string]any{"scanout_vmstate_version": 3}, "scanout_vmstate_version is 3"},
	} {
		inst, _, logs := instantiate(t, nil)
		err := inst.Realize(c.props)
		if err == nil || !strings.Contains(logs.String(), c.want) {
			t.Errorf("%v: realize error %v; log:\n%s", c.props, err, logs)
		}
	}
}

// TestBudgetContinuesFromTimer: a driver queueing more pixel bytes than one
// call may move is served in several calls; the rest completes from the
// continuation timer without another notification.
func TestBudgetContinuesFromTimer(t *testing.T) {
	const w, h, n = 1920, 1080, 40 // 40 x 7.9 MiB > the 256 MiB budget
	e := start(t, nil, nil)
	e.up()
	pages := pageList(fbBase, w*h*4)
	e.create(1, formatB8G8R8X8, w, h)
	e.attach(1, pages)
	var heads []uint16
	for i := 0; i < n; i++ {
		b := words(hdr(cmdTransferToHost2D, uint64(i+1)), 0, 0, w, h)
		b = binary.LittleEndian.AppendUint64(b, 0)
		b = words(b, 1, 0)
		at := uint64(cmdAddr + 0x40*i)
		e.guest.Write(at, b)
		head, err := e.ctrl.Add([]virtiotest.Buf{{Addr: at, Len: uint32(len(b))}, {Addr: respAddr + 0x40*uint64(i), Len: hdrSize, Write: true}})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, head)
	}
	before := e.ctrl.UsedIdx()
	// The VM clock stands still: the continuation waits until it runs.
	e.h.clock.Pause()
	e.ctrl.Publish(heads...)
	e.ctrl.Notify()
	// The call stops once it moved the budget: after ceil(budget/frame)
	// transfers.
	want := uint16((notifyBudget + w*h*4 - 1) / (w * h * 4))
	if got := e.ctrl.UsedIdx() - before; got != want {
		t.Fatalf("the notification completed %d transfers, want %d (256 MiB budget)\n%s", got, want, e.logs)
	}
	e.h.clock.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for e.ctrl.UsedIdx()-before != n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	used, _ := e.ctrl.TakeUsed()
	if len(used) != n {
		t.Fatalf("%d of %d transfers completed (%v)", len(used), n, e.inst.Err())
	}
	// Fences complete in submission order.
	for i, u := range used {
		r := make([]byte, hdrSize)
		e.guest.Read(respAddr+0x40*uint64(i), r)
		if u.ID != uint32(heads[i]) || le.Uint32(r) != respOKNoData || le.Uint64(r[8:]) != uint64(i+1) {
			t.Fatalf("completion %d: used %+v, response type %#x fence %d", i, u, le.Uint32(r), le.Uint64(r[8:]))
		}
	}
}
