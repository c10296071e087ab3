package display

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image/color"
	"image/png"
	"strings"
	"testing"

	"wasmvmm/abi"
)

// The end-to-end path (a real virtio-gpu plugin instance, guest RAM, a Go
// guest driver, PNG compared pixel for pixel) is tested in
// plugins/virtio-gpu. These tests give Capture schemas and memory a
// working plugin never produces: broken layouts, inconsistent values, and a
// device that changes the scanout while it is being read.

// memDevice is a Device over a byte slice: its schema is laid out like the
// plugin's (scanouts, resources, adjacent pixel chunks).
type memDevice struct {
	secs  []*abi.Section
	mem   []byte
	reads int
	// onRead runs before each ReadMemory (to change state between reads).
	onRead func(d *memDevice)
}

func (d *memDevice) Sections() []*abi.Section { return d.secs }

func (d *memDevice) ReadMemory(off, n uint32) ([]byte, error) {
	d.reads++
	if d.onRead != nil {
		d.onRead(d)
	}
	if uint64(off)+uint64(n) > uint64(len(d.mem)) {
		return nil, fmt.Errorf("read [%#x, +%#x) outside %#x bytes", off, n, len(d.mem))
	}
	return append([]byte(nil), d.mem[off:off+n]...), nil
}

// Layout of the test device's memory.
const (
	tScanouts   = 0x100 // 2 scanouts of 64 bytes
	tResources  = 0x200 // 4 resources of 32 bytes
	tArena      = 0x1000
	tChunk      = 0x10000
	tChunks     = 2
	tMemSize    = tArena + tChunks*tChunk
	tScanoutLen = 64
	tResLen     = 32
)

func u32(name string, off uint32) abi.Field {
	return abi.Field{Name: name, Type: abi.FieldU32, Offset: off, Size: 4, Count: 1}
}

func testSchema() *abi.Section {
	sec := &abi.Section{Name: SectionName, VersionID: 1, MinimumVersionID: 1, Fields: []abi.Field{
		{Name: "scanouts", Type: abi.FieldStruct, Offset: tScanouts, Size: tScanoutLen, Count: 2, Struct: &abi.Section{
			Name: "scanout", Fields: []abi.Field{u32("resource_id", 0), u32("width", 4), u32("height", 8),
				u32("fb.format", 40), u32("fb.stride", 56), u32("fb.offset", 60)},
		}},
		{Name: "resources", Type: abi.FieldStruct, Offset: tResources, Size: tResLen, Count: 4, Struct: &abi.Section{
			Name: "resource", Fields: []abi.Field{u32("resource_id", 0), u32("format", 4), u32("width", 8), u32("height", 12), u32("pixels", 16)},
		}},
	}}
	for i := 0; i < tChunks; i++ {
		sec.Subsections = append(sec.Subsections, abi.Section{Name: fmt.Sprintf("%s%d", pixelChunkPrefix, i), Fields: []abi.Field{
			{Name: "data", Type: abi.FieldBuffer, Offset: tArena + uint32(i)*tChunk, Size: tChunk, Count: 1}}})
	}
	return sec
}

func (d *memDevice) put(off, v uint32) { binary.LittleEndian.PutUint32(d.mem[off:], v) }

// setResource fills resource table entry slot.
func (d *memDevice) setResource(slot, id, format, w, h, pixels uint32) {
	base := uint32(tResources + slot*tResLen)
	for i, v := range []uint32{id, format, w, h, pixels} {
		d.put(base+uint32(4*i), v)
	}
}

// setScanout makes scanout s show a w x h rectangle at (x, y) of a
// resource resW pixels wide.
func (d *memDevice) setScanout(s, id, format, x, y, w, h, resW uint32) {
	base := uint32(tScanouts + s*tScanoutLen)
	d.put(base, id)
	d.put(base+4, w)
	d.put(base+8, h)
	d.put(base+40, format)
	d.put(base+56, resW*4)
	d.put(base+60, y*resW*4+x*4)
}

// newTestDevice has resource 7 (40x30, test card in format) at arena
// offset 0x100 on scanout 0.
func newTestDevice(format uint32) *memDevice {
	d := &memDevice{secs: []*abi.Section{testSchema()}, mem: make([]byte, tMemSize)}
	d.setResource(1, 7, format, 40, 30, 0x100)
	ri, gi, bi, _ := channels(format)
	for y := 0; y < 30; y++ {
		for x := 0; x < 40; x++ {
			r, g, b := TestCardPixel(x, y, 40, 30)
			p := d.mem[tArena+0x100+(y*40+x)*4:]
			p[0], p[1], p[2], p[3] = 0x55, 0x55, 0x55, 0x55
			p[ri], p[gi], p[bi] = r, g, b
		}
	}
	d.setScanout(0, 7, format, 0, 0, 40, 30, 40)
	return d
}

func TestCaptureEveryFormat(t *testing.T) {
	for _, f := range []uint32{FormatB8G8R8A8, FormatB8G8R8X8, FormatA8R8G8B8, FormatX8R8G8B8,
		FormatR8G8B8A8, FormatX8B8G8R8, FormatA8B8G8R8, FormatR8G8B8X8} {
		img, err := Capture(newTestDevice(f), 0)
		if err != nil {
			t.Fatalf("format %d: %v", f, err)
		}
		if !bytes.Equal(img.Pix, TestCard(40, 30).Pix) {
			t.Errorf("format %d: picture differs from the test card", f)
		}
	}
}

func TestConvertKnownBytes(t *testing.T) {
	px := []byte{0x11, 0x22, 0x33, 0x44}
	for f, want := range map[uint32]color.NRGBA{
		FormatB8G8R8X8: {0x33, 0x22, 0x11, 0xff}, FormatX8R8G8B8: {0x22, 0x33, 0x44, 0xff},
		FormatR8G8B8A8: {0x11, 0x22, 0x33, 0xff}, FormatA8B8G8R8: {0x44, 0x33, 0x22, 0xff},
	} {
		img, err := Convert(f, px, 1, 1, 4)
		if err != nil || img.NRGBAAt(0, 0) != want {
			t.Errorf("format %d: %v %v, want %v", f, img.NRGBAAt(0, 0), err, want)
		}
	}
	if _, err := Convert(5, px, 1, 1, 4); err == nil {
		t.Error("format 5 converted")
	}
	if _, err := Convert(FormatB8G8R8X8, px, 2, 1, 8); err == nil {
		t.Error("4 bytes converted as 2 pixels")
	}
}

func TestSubRectangleAndPNG(t *testing.T) {
	d := newTestDevice(FormatB8G8R8X8)
	d.setScanout(1, 7, FormatB8G8R8X8, 5, 3, 20, 16, 40)
	var buf bytes.Buffer
	if err := WritePNG(&buf, d, 1); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 20 || img.Bounds().Dy() != 16 {
		t.Fatalf("bounds %v", img.Bounds())
	}
	card := TestCard(40, 30)
	for y := 0; y < 16; y++ {
		for x := 0; x < 20; x++ {
			if got, want := color.NRGBAModel.Convert(img.At(x, y)), card.NRGBAAt(x+5, y+3); got != want {
				t.Fatalf("(%d,%d) = %v, want %v", x, y, got, want)
			}
		}
	}
}

func TestTestCardFormula(t *testing.T) {
	c := TestCard(64, 48)
	for _, p := range []struct {
		x, y    int
		r, g, b uint8
	}{{0, 0, 0, 0, 0}, {63, 47, 255, 255, 0}, {63, 0, 255, 0, 255}, {32, 0, 129, 0, 255}, {32, 32, 129, 173, 0}, {0, 32, 0, 173, 255}} {
		if got := c.NRGBAAt(p.x, p.y); got != (color.NRGBA{p.r, p.g, p.b, 255}) {
			t.Errorf("(%d,%d) = %v, want %d %d %d", p.x, p.y, got, p.r, p.g, p.b)
		}
	}
	if r, g, _ := TestCardPixel(0, 0, 1, 1); r != 0 || g != 0 {
		t.Error("1x1 card not black")
	}
}

func TestCaptureErrors(t *testing.T) {
	for _, c := range []struct {
		name   string
		break_ func(d *memDevice)
		want   string
	}{
		{"disabled", func(d *memDevice) { d.put(tScanouts+tScanoutLen, 0) }, "no resource"},
		{"no section", func(d *memDevice) { d.secs[0].Name = "other" }, "no \"virtio-gpu\" vmstate section"},
		{"no fb.offset", func(d *memDevice) {
			f := d.secs[0].Fields[0].Struct
			f.Fields = f.Fields[:5]
		}, "no member \"fb.offset\""},
		{"chunks apart", func(d *memDevice) { d.secs[0].Subsections[1].Fields[0].Offset += 4096 }, "not adjacent"},
		{"no chunks", func(d *memDevice) { d.secs[0].Subsections = nil }, "no virtio-gpu/pixels/"},
		{"resource gone", func(d *memDevice) { d.setResource(1, 0, 0, 0, 0, 0) }, "not in the resource table"},
		{"format differs", func(d *memDevice) { d.put(tScanouts+tScanoutLen+40, FormatR8G8B8X8) }, "has format"},
		{"outside resource", func(d *memDevice) { d.put(tScanouts+tScanoutLen+60, 40*4*29) }, "outside resource 7"},
		{"outside arena", func(d *memDevice) { d.setResource(1, 7, FormatB8G8R8X8, 40, 30, 2*tChunk-100) }, "outside the"},
		{"stride", func(d *memDevice) { d.put(tScanouts+tScanoutLen+56, 100) }, "stride"},
		{"memory fails", func(d *memDevice) { d.mem = d.mem[:tArena] }, "reading pixels"},
	} {
		d := newTestDevice(FormatB8G8R8X8)
		d.setScanout(1, 7, FormatB8G8R8X8, 0, 0, 40, 30, 40)
		c.break_(d)
		_, err := Capture(d, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	if _, err := Capture(newTestDevice(FormatB8G8R8X8), 2); err == nil {
		t.Error("scanout 2 of 2 captured")
	}
	d := newTestDevice(FormatB8G8R8X8)
	d.put(tScanouts, 0)
	if _, err := Capture(d, 0); !errors.Is(err, ErrDisabled) {
		t.Errorf("disabled scanout: %v", err)
	}
}

// TestCaptureRetries: a scanout switched to another resource between the
// reads is read again; one that never settles is an error.
func TestCaptureRetries(t *testing.T) {
	d := newTestDevice(FormatB8G8R8X8)
	// Resource 9: 40x30, all white, at arena offset 0x8000.
	d.setResource(2, 9, FormatB8G8R8X8, 40, 30, 0x8000)
	for i := 0; i < 40*30*4; i++ {
		d.mem[tArena+0x8000+i] = 0xff
	}
	// The first pixel read sees resource 7's pixels; right after it the
	// guest switches the scanout to 9.
	d.onRead = func(d *memDevice) {
		if d.reads == 3 { // scanout, table, then pixels
			d.setScanout(0, 9, FormatB8G8R8X8, 0, 0, 40, 30, 40)
		}
	}
	img, err := Capture(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if img.NRGBAAt(0, 0) != (color.NRGBA{255, 255, 255, 255}) {
		t.Errorf("captured %v: the pixels of the resource shown before the switch", img.NRGBAAt(0, 0))
	}
	flip := uint32(7)
	d.onRead = func(d *memDevice) {
		flip = 16 - flip // 7, 9, 7, ...
		d.setScanout(0, flip, FormatB8G8R8X8, 0, 0, 40, 30, 40)
	}
	if _, err := Capture(d, 0); err == nil || !strings.Contains(err.Error(), "kept changing") {
		t.Errorf("a scanout that never settles: %v", err)
	}
}
