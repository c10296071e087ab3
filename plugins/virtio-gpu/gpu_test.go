//go:build !wasip1

package main

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"testing"

	"wasmvmm/host/display"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

func TestDisplayInfoAndEDID(t *testing.T) {
	e := start(t, nil, map[string]any{"max_outputs": 2, "xres": 1280, "yres": 800})
	if got := e.drv.Bus.Read(virtio.RegDeviceID, 4); got != deviceID {
		t.Errorf("device id %d", got)
	}
	if e.drv.DeviceFeatures()&(1<<fEDID) == 0 {
		t.Error("VIRTIO_GPU_F_EDID not offered")
	}
	e.up()
	if n := e.drv.Config(8, 4); n != 2 {
		t.Errorf("num_scanouts %d, want 2", n)
	}
	if n := e.drv.Config(12, 4); n != 0 {
		t.Errorf("num_capsets %d", n)
	}
	// events_clear is the only writable field; num_scanouts stays.
	e.drv.Bus.Write(virtio.RegConfig+4, 4, 1)
	e.drv.Bus.Write(virtio.RegConfig+8, 4, 9)
	if n, ev := e.drv.Config(8, 4), e.drv.Config(0, 4); n != 2 || ev != 0 {
		t.Errorf("after config writes: num_scanouts %d, events_read %d", n, ev)
	}

	r := e.exec(hdr(cmdGetDisplayInfo, 0), displayInfoSize)
	if len(r) != displayInfoSize || le.Uint32(r) != respOKDisplayInfo {
		t.Fatalf("display info: %d bytes, type %#x", len(r), le.Uint32(r))
	}
	for i := 0; i < maxScanouts; i++ {
		p := r[hdrSize+i*displayOneSize:]
		w, h, enabled := le.Uint32(p[8:]), le.Uint32(p[12:]), le.Uint32(p[16:])
		if i < 2 && (w != 1280 || h != 800 || enabled != 1) {
			t.Errorf("pmode %d: %dx%d enabled %d", i, w, h, enabled)
		}
		if i >= 2 && (w != 0 || enabled != 0) {
			t.Errorf("pmode %d beyond max_outputs: %dx%d enabled %d", i, w, h, enabled)
		}
	}

	r = e.exec(words(hdr(cmdGetEDID, 0), 1, 0), edidRespSize)
	if len(r) != edidRespSize || le.Uint32(r) != respOKEDID || le.Uint32(r[hdrSize:]) != 128 {
		t.Fatalf("edid: %d bytes, type %#x, size %d", len(r), le.Uint32(r), le.Uint32(r[hdrSize:]))
	}
	checkEDID(t, r[hdrSize+8:hdrSize+8+128], 1280, 800)
	if !bytes.Equal(r[hdrSize+8+128:], make([]byte, 1024-128)) {
		t.Error("EDID response not zero after the block")
	}
	if got := e.status(words(hdr(cmdGetEDID, 0), 2, 0)); got != respErrInvalidParameter {
		t.Errorf("EDID of scanout 2 of 2: %#x", got)
	}
}

// checkEDID checks an EDID 1.3 base block: header, version, checksum, the
// preferred detailed timing and a range-limits descriptor that includes it.
func checkEDID(t *testing.T, b []byte, w, h uint32) {
	t.Helper()
	if !bytes.Equal(b[:8], []byte{0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}) {
		t.Errorf("EDID header % x", b[:8])
	}
	if b[18] != 1 || b[19] != 3 {
		t.Errorf("EDID version %d.%d", b[18], b[19])
	}
	var sum byte
	for _, v := range b[:128] {
		sum += v
	}
	if sum != 0 {
		t.Errorf("EDID checksum: bytes sum to %d mod 256", sum)
	}
	if b[24]&0x02 == 0 {
		t.Error("preferred timing flag clear")
	}
	d := b[54:72]
	clock := uint32(le.Uint16(d)) * 10000
	hActive := uint32(d[2]) | uint32(d[4]>>4)<<8
	hBlank := uint32(d[3]) | uint32(d[4]&0xf)<<8
	vActive := uint32(d[5]) | uint32(d[7]>>4)<<8
	vBlank := uint32(d[6]) | uint32(d[7]&0xf)<<8
	if clock == 0 || hActive != w || vActive != h {
		t.Fatalf("detailed timing: clock %d, %dx%d, want %dx%d", clock, hActive, vActive, w, h)
	}
	hfp, hsync := uint32(d[8])|uint32(d[11]>>6)<<8, uint32(d[9])|uint32(d[11]>>4&3)<<8
	vfp, vsync := uint32(d[10]>>4)|uint32(d[11]>>2&3)<<4, uint32(d[10]&0xf)|uint32(d[11]&3)<<4
	if hfp+hsync > hBlank || vfp+vsync > vBlank {
		t.Errorf("porches and syncs exceed the blanking: h %d+%d > %d or v %d+%d > %d", hfp, hsync, hBlank, vfp, vsync, vBlank)
	}
	refresh := float64(clock) / float64((hActive+hBlank)*(vActive+vBlank))
	if refresh < 59 || refresh > 61 {
		t.Errorf("refresh %.2f Hz", refresh)
	}
	wmm, hmm := uint32(d[12])|uint32(d[14]>>4)<<8, uint32(d[13])|uint32(d[14]&0xf)<<8
	if wmm == 0 || hmm == 0 || uint32(b[21]) != (wmm+5)/10 || uint32(b[22]) != (hmm+5)/10 {
		t.Errorf("image size %dx%d mm, basic block %dx%d cm", wmm, hmm, b[21], b[22])
	}
	var rangeOK, nameOK bool
	for _, desc := range [][]byte{b[72:90], b[90:108], b[108:126]} {
		switch desc[3] {
		case 0xfd:
			hkHz := float64(clock) / float64(hActive+hBlank) / 1000
			rangeOK = float64(desc[5]) <= refresh && refresh <= float64(desc[6]) &&
				float64(desc[7]) <= hkHz && hkHz <= float64(desc[8]) && uint32(desc[9])*10000000 >= clock
		case 0xfc:
			nameOK = bytes.HasPrefix(desc[5:], []byte("wasmvmm\n"))
		}
	}
	if !rangeOK || !nameOK {
		t.Errorf("range limits present and consistent: %v; monitor name: %v", rangeOK, nameOK)
	}
}

// TestEDIDModes checks the EDID of extreme modes without the plugin runtime
// (the same code runs in the plugin).
func TestEDIDModes(t *testing.T) {
	for _, m := range [][2]uint32{{16, 16}, {640, 480}, {1920, 1080}, {2560, 1600}, {3840, 2160}, {4095, 4095}} {
		e := buildEDID(m[0], m[1])
		var sum byte
		for _, v := range e {
			sum += v
		}
		d := e[54:72]
		hActive := uint32(d[2]) | uint32(d[4]>>4)<<8
		vActive := uint32(d[5]) | uint32(d[7]>>4)<<8
		if sum != 0 || hActive != m[0] || vActive != m[1] || le.Uint16(d) == 0 {
			t.Errorf("%dx%d: checksum %d, timing %dx%d clock %d", m[0], m[1], sum, hActive, vActive, le.Uint16(d))
		}
	}
}

// TestTestCard draws the test card in guest pages, moves it through the
// device and compares the rendered scanout with the card computed in Go,
// pixel for pixel.
func TestTestCard(t *testing.T) {
	const w, h = 1024, 768
	e := start(t, nil, nil)
	e.up()
	if st := e.create(1, formatB8G8R8X8, w, h); st != respOKNoData {
		t.Fatalf("create: %#x", st)
	}
	pages := pageList(fbBase, w*h*4)
	if st := e.attach(1, pages); st != respOKNoData {
		t.Fatalf("attach %d pages: %#x", len(pages), st)
	}
	fb := e.drawCard(pages, formatB8G8R8X8, w, h)
	// A fenced transfer: the response carries the fence and context.
	b := words(hdr(cmdTransferToHost2D, 0x1234567890), 0, 0, w, h)
	b = append(b, make([]byte, 8)...)
	r := e.exec(words(b, 1, 0), hdrSize)
	if le.Uint32(r) != respOKNoData || le.Uint32(r[4:])&flagFence == 0 || le.Uint64(r[8:]) != 0x1234567890 || le.Uint32(r[16:]) != 7 {
		t.Fatalf("fenced transfer response % x", r)
	}
	if st := e.setScanout(0, 1, 0, 0, w, h); st != respOKNoData {
		t.Fatalf("set scanout: %#x", st)
	}
	if st := e.flush(1, 0, 0, w, h); st != respOKNoData {
		t.Fatalf("flush: %#x", st)
	}
	card := display.TestCard(w, h)
	pngBytes, err := display.PNG(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := png.Decode(bytes.NewReader(pngBytes))
	if err != nil {
		t.Fatal(err)
	}
	comparePixels(t, toNRGBA(decoded), card)
	if e.scanoutField(0, "fb.format") != formatB8G8R8X8 || e.scanoutField(0, "fb.stride") != w*4 {
		t.Errorf("scanout fb fields: format %d stride %d", e.scanoutField(0, "fb.format"), e.scanoutField(0, "fb.stride"))
	}

	// The guest changes a 100x50 rectangle at (37,41) and a pixel outside
	// it, but transfers only the rectangle: the display shows the
	// rectangle's new pixels and the old pixel.
	const rx, ry, rw, rh = 37, 41, 100, 50
	for y := ry; y < ry+rh; y++ {
		row := fb[(y*w+rx)*4 : (y*w+rx+rw)*4]
		for i := range row {
			if i%4 != 3 {
				row[i] = ^row[i]
			}
		}
		e.writeBacking(pages, uint64((y*w+rx)*4), row)
		for x := rx; x < rx+rw; x++ {
			p := card.Pix[y*card.Stride+x*4:]
			p[0], p[1], p[2] = ^p[0], ^p[1], ^p[2]
		}
	}
	e.writeBacking(pages, uint64((500*w+500)*4), []byte{1, 2, 3, 0xff})
	if st := e.transfer(1, rx, ry, rw, rh, uint64((ry*w+rx)*4)); st != respOKNoData {
		t.Fatalf("partial transfer: %#x", st)
	}
	got, err := display.Capture(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	comparePixels(t, got, card)

	// A scanout showing a sub-rectangle of the resource.
	if st := e.setScanout(0, 1, 16, 8, 512, 256); st != respOKNoData {
		t.Fatalf("set scanout to a sub-rectangle: %#x", st)
	}
	got, err = display.Capture(e.inst, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := image.NewNRGBA(image.Rect(0, 0, 512, 256))
	for y := 0; y < 256; y++ {
		copy(want.Pix[y*want.Stride:(y+1)*want.Stride], card.Pix[(y+8)*card.Stride+16*4:])
	}
	comparePixels(t, got, want)

	// Disabling the scanout, then unref.
	if st := e.setScanout(0, 0, 0, 0, 0, 0); st != respOKNoData {
		t.Fatalf("disable scanout: %#x", st)
	}
	if _, err := display.Capture(e.inst, 0); !errors.Is(err, display.ErrDisabled) {
		t.Errorf("capture of a disabled scanout: %v", err)
	}
	e.setScanout(0, 1, 0, 0, w, h)
	if st := e.unref(1); st != respOKNoData {
		t.Fatalf("unref: %#x", st)
	}
	if _, err := display.Capture(e.inst, 0); !errors.Is(err, display.ErrDisabled) {
		t.Errorf("capture after the scanout's resource was unref'd: %v", err)
	}
	e.h.mu.Lock()
	level := e.h.level
	e.h.mu.Unlock()
	if !level {
		t.Error("no interrupt after commands")
	}
}

func toNRGBA(m image.Image) *image.NRGBA {
	if n, ok := m.(*image.NRGBA); ok {
		return n
	}
	b := m.Bounds()
	out := image.NewNRGBA(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			out.Set(x, y, m.At(x, y))
		}
	}
	return out
}

// TestFormats shows a test card in each of the eight formats.
func TestFormats(t *testing.T) {
	const w, h = 96, 64
	e := start(t, nil, nil)
	e.up()
	for i, f := range []uint32{formatB8G8R8A8, formatB8G8R8X8, formatA8R8G8B8, formatX8R8G8B8,
		formatR8G8B8A8, formatX8B8G8R8, formatA8B8G8R8, formatR8G8B8X8} {
		id := uint32(10 + i)
		base := fbBase + uint64(i)<<20
		pages := pageList(base, w*h*4)
		if st := e.create(id, f, w, h); st != respOKNoData {
			t.Fatalf("format %d: create %#x", f, st)
		}
		if st := e.attach(id, pages); st != respOKNoData {
			t.Fatalf("format %d: attach %#x", f, st)
		}
		e.drawCard(pages, f, w, h)
		if st := e.transfer(id, 0, 0, w, h, 0); st != respOKNoData {
			t.Fatalf("format %d: transfer %#x", f, st)
		}
		if st := e.setScanout(0, id, 0, 0, w, h); st != respOKNoData {
			t.Fatalf("format %d: set scanout %#x", f, st)
		}
		got, err := display.Capture(e.inst, 0)
		if err != nil {
			t.Fatalf("format %d: %v", f, err)
		}
		comparePixels(t, got, display.TestCard(w, h))
	}
}

func TestCursor(t *testing.T) {
	e := start(t, nil, nil)
	e.up()
	e.create(5, formatB8G8R8A8, 64, 64)
	send := func(b []byte) {
		e.guest.Write(cmdAddr+0x800, b)
		head, err := e.cursor.Add([]virtiotest.Buf{{Addr: cmdAddr + 0x800, Len: uint32(len(b))}})
		if err != nil {
			t.Fatal(err)
		}
		e.cursor.Publish(head)
		e.cursor.Notify()
		used, err := e.cursor.TakeUsed()
		if err != nil || len(used) != 1 || used[0].Len != 0 {
			t.Fatalf("cursor used %+v %v", used, err)
		}
	}
	send(words(hdr(cmdUpdateCursor, 0), 0, 100, 200, 0, 5, 3, 4, 0))
	send(words(hdr(cmdMoveCursor, 0), 0, 300, 400, 0, 0, 0, 0, 0))
	send(words(hdr(cmdMoveCursor, 0), 9, 1, 1, 0, 0, 0, 0, 0)) // no such scanout: ignored
	send(hdr(cmdMoveCursor, 0))                                // short: ignored
	for name, want := range map[string]uint32{"cursor.resource_id": 5, "cursor.hot_x": 3, "cursor.hot_y": 4, "cursor.pos.x": 300, "cursor.pos.y": 400} {
		if got := e.scanoutField(0, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}
