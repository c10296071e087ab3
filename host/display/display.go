// Package display renders what a virtio-gpu device shows: it reads a
// scanout's pixels out of the device plugin's linear memory and returns them
// as an image, or writes them as a PNG (the future QMP screendump).
//
// The plugin exports nothing for this. The host finds everything through the
// vmstate schema the device registered (the same description migration
// uses), by field name:
//
//   - section "virtio-gpu", field "scanouts": an array of structs with
//     "resource_id", "width", "height" and the framebuffer fields
//     "fb.format", "fb.stride", "fb.offset" (kept current in memory even
//     when scanout_vmstate_version=1 leaves them off the wire);
//   - field "resources": an array of structs with "resource_id", "format",
//     "width", "height" and "pixels", the image's offset in the pixel arena;
//   - subsections "virtio-gpu/pixels/N", each with one buffer field "data":
//     the pixel arena, chunk N, adjacent in memory.
//
// Reading is not atomic with the device's commands: Capture reads the
// scanout and resource entries again after the pixels and starts over if
// they changed (a resource moved, the scanout switched), so the picture
// always comes from the resource the scanout showed, though it may mix two
// transfers, as a real display can.
package display

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"sort"
	"strconv"
	"strings"

	"wasmvmm/abi"
)

// Device is what the display reads of a virtio-gpu plugin instance: its
// registered vmstate sections and its linear memory. *plugin.Instance
// implements it.
type Device interface {
	Sections() []*abi.Section
	ReadMemory(off, n uint32) ([]byte, error)
}

// SectionName is the vmstate section of a virtio-gpu device.
const SectionName = "virtio-gpu"

// pixelChunkPrefix names the pixel arena's subsections.
const pixelChunkPrefix = SectionName + "/pixels/"

// ErrDisabled is returned for a scanout that shows no resource.
var ErrDisabled = errors.New("scanout shows no resource")

// maxAttempts bounds the re-reads when the device changes the scanout
// while it is being read.
const maxAttempts = 4

// Virtio GPU formats (enum virtio_gpu_formats). The name lists the bytes of
// a pixel in memory order; A and X are ignored (a display is opaque).
const (
	FormatB8G8R8A8 = 1
	FormatB8G8R8X8 = 2
	FormatA8R8G8B8 = 3
	FormatX8R8G8B8 = 4
	FormatR8G8B8A8 = 67
	FormatX8B8G8R8 = 68
	FormatA8B8G8R8 = 121
	FormatR8G8B8X8 = 134
)

// channels returns the byte offsets of red, green and blue in a pixel of a
// format.
func channels(format uint32) (r, g, b int, ok bool) {
	switch format {
	case FormatB8G8R8A8, FormatB8G8R8X8:
		return 2, 1, 0, true
	case FormatA8R8G8B8, FormatX8R8G8B8:
		return 1, 2, 3, true
	case FormatR8G8B8A8, FormatR8G8B8X8:
		return 0, 1, 2, true
	case FormatA8B8G8R8, FormatX8B8G8R8:
		return 3, 2, 1, true
	}
	return 0, 0, 0, false
}

// Convert turns w x h pixels of a virtio format, rows stride bytes apart in
// pix, into an opaque image.
func Convert(format uint32, pix []byte, w, h, stride int) (*image.NRGBA, error) {
	ri, gi, bi, ok := channels(format)
	if !ok {
		return nil, fmt.Errorf("display: unknown pixel format %d", format)
	}
	if w <= 0 || h <= 0 || stride < 4*w || len(pix) < (h-1)*stride+4*w {
		return nil, fmt.Errorf("display: %d bytes do not hold %dx%d pixels with stride %d", len(pix), w, h, stride)
	}
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		src := pix[y*stride : y*stride+4*w]
		dst := img.Pix[y*img.Stride : y*img.Stride+4*w]
		for x := 0; x < 4*w; x += 4 {
			dst[x] = src[x+ri]
			dst[x+1] = src[x+gi]
			dst[x+2] = src[x+bi]
			dst[x+3] = 0xff
		}
	}
	return img, nil
}

// Capture returns what scanout shows.
func Capture(dev Device, scanout int) (*image.NRGBA, error) {
	l, err := findLayout(dev.Sections(), scanout)
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		fr, err := l.frame(dev)
		if err != nil {
			return nil, err
		}
		pix, err := dev.ReadMemory(fr.addr, fr.n)
		if err != nil {
			return nil, fmt.Errorf("display: scanout %d: reading pixels: %w", scanout, err)
		}
		again, err := l.frame(dev)
		if err != nil {
			return nil, err
		}
		if again != fr {
			continue // the scanout or its resource changed meanwhile
		}
		return Convert(fr.format, pix, int(fr.width), int(fr.height), int(fr.stride))
	}
	return nil, fmt.Errorf("display: scanout %d kept changing while it was read", scanout)
}

// WritePNG writes what scanout shows as a PNG (fast compression).
func WritePNG(w io.Writer, dev Device, scanout int) error {
	img, err := Capture(dev, scanout)
	if err != nil {
		return err
	}
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(w, img); err != nil {
		return fmt.Errorf("display: encoding PNG: %w", err)
	}
	return nil
}

// PNG returns what scanout shows as PNG bytes.
func PNG(dev Device, scanout int) ([]byte, error) {
	var b bytes.Buffer
	if err := WritePNG(&b, dev, scanout); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// member is a u32 or i32 member of a struct layout.
type member struct{ off uint32 }

func (m member) get(b []byte) uint32 { return binary.LittleEndian.Uint32(b[m.off:]) }

// layout is where the display finds one scanout in plugin memory.
type layout struct {
	scanout     int
	scanoutAddr uint32 // the scanout's struct
	scanoutSize uint32
	resAddr     uint32 // the resource table
	resSize     uint32 // one entry
	resCount    uint32
	arenaAddr   uint32
	arenaSize   uint32

	sResource, sWidth, sHeight, sFormat, sStride, sOffset member
	rID, rFormat, rWidth, rHeight, rPixels                member
}

// frame is the pixels one read of the schema's fields points to.
type frame struct {
	addr, n                       uint32 // bytes to read
	format, width, height, stride uint32
	resource                      uint32
	resEntry                      string // the resource entry's bytes
}

func findLayout(secs []*abi.Section, scanout int) (*layout, error) {
	var sec *abi.Section
	for _, s := range secs {
		if s.Name == SectionName {
			sec = s
			break
		}
	}
	if sec == nil {
		return nil, fmt.Errorf("display: the device has no %q vmstate section", SectionName)
	}
	l := &layout{scanout: scanout}
	scanouts, err := structField(sec, "scanouts")
	if err != nil {
		return nil, err
	}
	if scanout < 0 || uint32(scanout) >= scanouts.Count {
		return nil, fmt.Errorf("display: scanout %d: the device has %d", scanout, scanouts.Count)
	}
	l.scanoutAddr = scanouts.Offset + uint32(scanout)*scanouts.Size
	l.scanoutSize = scanouts.Size
	for _, m := range []struct {
		dst  *member
		name string
	}{{&l.sResource, "resource_id"}, {&l.sWidth, "width"}, {&l.sHeight, "height"},
		{&l.sFormat, "fb.format"}, {&l.sStride, "fb.stride"}, {&l.sOffset, "fb.offset"}} {
		if *m.dst, err = word(scanouts, m.name); err != nil {
			return nil, err
		}
	}
	res, err := structField(sec, "resources")
	if err != nil {
		return nil, err
	}
	l.resAddr, l.resSize, l.resCount = res.Offset, res.Size, res.Count
	for _, m := range []struct {
		dst  *member
		name string
	}{{&l.rID, "resource_id"}, {&l.rFormat, "format"}, {&l.rWidth, "width"}, {&l.rHeight, "height"}, {&l.rPixels, "pixels"}} {
		if *m.dst, err = word(res, m.name); err != nil {
			return nil, err
		}
	}
	if l.arenaAddr, l.arenaSize, err = arena(sec); err != nil {
		return nil, err
	}
	return l, nil
}

// structField returns the struct-array field name of sec.
func structField(sec *abi.Section, name string) (*abi.Field, error) {
	for i := range sec.Fields {
		f := &sec.Fields[i]
		if f.Name == name {
			if f.Type != abi.FieldStruct || f.Struct == nil {
				return nil, fmt.Errorf("display: field %s.%s is not a struct array", sec.Name, name)
			}
			return f, nil
		}
	}
	return nil, fmt.Errorf("display: section %s has no field %q", sec.Name, name)
}

// word returns a 32-bit member of a struct field.
func word(f *abi.Field, name string) (member, error) {
	for _, m := range f.Struct.Fields {
		if m.Name == name {
			if m.Count != 1 || (m.Type != abi.FieldU32 && m.Type != abi.FieldI32) || m.Offset+4 > f.Size {
				return member{}, fmt.Errorf("display: %s.%s is not a 32-bit integer inside the element", f.Name, name)
			}
			return member{m.Offset}, nil
		}
	}
	return member{}, fmt.Errorf("display: %s has no member %q", f.Name, name)
}

// arena returns the place and size of the pixel arena: the "data" buffers
// of the pixel subsections, which must be adjacent in order.
func arena(sec *abi.Section) (addr, size uint32, err error) {
	type chunk struct {
		n         int
		off, size uint32
	}
	var chunks []chunk
	for _, sub := range sec.Subsections {
		rest, ok := strings.CutPrefix(sub.Name, pixelChunkPrefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(rest)
		if err != nil || len(sub.Fields) != 1 || sub.Fields[0].Name != "data" || sub.Fields[0].Type != abi.FieldBuffer {
			return 0, 0, fmt.Errorf("display: subsection %s is not a pixel chunk", sub.Name)
		}
		f := sub.Fields[0]
		chunks = append(chunks, chunk{n, f.Offset, f.Size * f.Count})
	}
	if len(chunks) == 0 {
		return 0, 0, fmt.Errorf("display: section %s has no %s* subsections", sec.Name, pixelChunkPrefix)
	}
	sort.Slice(chunks, func(a, b int) bool { return chunks[a].n < chunks[b].n })
	addr = chunks[0].off
	var total uint64
	for i, c := range chunks {
		if c.n != i || uint64(c.off) != uint64(addr)+total {
			return 0, 0, fmt.Errorf("display: pixel chunk %d is not adjacent to the ones before it", c.n)
		}
		total += uint64(c.size)
	}
	if uint64(addr)+total > 1<<32 {
		return 0, 0, errors.New("display: pixel arena beyond 4 GiB")
	}
	return addr, uint32(total), nil
}

// frame reads the scanout and its resource entry and computes where the
// visible pixels are.
func (l *layout) frame(dev Device) (frame, error) {
	s, err := dev.ReadMemory(l.scanoutAddr, l.scanoutSize)
	if err != nil {
		return frame{}, fmt.Errorf("display: scanout %d: %w", l.scanout, err)
	}
	id := l.sResource.get(s)
	if id == 0 {
		return frame{}, fmt.Errorf("display: scanout %d: %w", l.scanout, ErrDisabled)
	}
	table, err := dev.ReadMemory(l.resAddr, l.resSize*l.resCount)
	if err != nil {
		return frame{}, fmt.Errorf("display: resource table: %w", err)
	}
	var entry []byte
	for i := uint32(0); i < l.resCount; i++ {
		e := table[i*l.resSize : (i+1)*l.resSize]
		if l.rID.get(e) == id {
			entry = e
			break
		}
	}
	if entry == nil {
		return frame{}, fmt.Errorf("display: scanout %d shows resource %d, which is not in the resource table", l.scanout, id)
	}
	fr := frame{
		format: l.sFormat.get(s), width: l.sWidth.get(s), height: l.sHeight.get(s), stride: l.sStride.get(s),
		resource: id, resEntry: string(entry),
	}
	rw, rh, rf, pixels := l.rWidth.get(entry), l.rHeight.get(entry), l.rFormat.get(entry), l.rPixels.get(entry)
	offset := uint64(l.sOffset.get(s))
	image := uint64(rw) * uint64(rh) * 4
	need := uint64(fr.height-1)*uint64(fr.stride) + 4*uint64(fr.width)
	switch {
	case fr.format != rf:
		return frame{}, fmt.Errorf("display: scanout %d has format %d, its resource %d has %d", l.scanout, fr.format, id, rf)
	case fr.width == 0 || fr.height == 0 || fr.stride != 4*rw:
		return frame{}, fmt.Errorf("display: scanout %d: %dx%d with stride %d over a resource %d pixels wide", l.scanout, fr.width, fr.height, fr.stride, rw)
	case offset+need > image:
		return frame{}, fmt.Errorf("display: scanout %d: bytes [%d, +%d) outside resource %d's %d bytes", l.scanout, offset, need, id, image)
	case uint64(pixels)+image > uint64(l.arenaSize):
		return frame{}, fmt.Errorf("display: resource %d: image [%d, +%d) outside the %d-byte pixel arena", id, pixels, image, l.arenaSize)
	}
	fr.addr = l.arenaAddr + pixels + uint32(offset)
	fr.n = uint32(need)
	return fr, nil
}

// TestCard returns the test card that guest drivers draw and tests compare
// with: for a w x h picture, pixel (x, y) has red x*255/(w-1), green
// y*255/(h-1) (integer division; 0 when w or h is 1), and blue 255 where
// (x/32 + y/32) is odd, else 0. In a B8G8R8X8 resource the bytes of a pixel
// are blue, green, red, 255.
func TestCard(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, b := TestCardPixel(x, y, w, h)
			p := img.Pix[y*img.Stride+4*x:]
			p[0], p[1], p[2], p[3] = r, g, b, 0xff
		}
	}
	return img
}

// TestCardPixel returns the red, green and blue of pixel (x, y) of a w x h
// test card (see TestCard).
func TestCardPixel(x, y, w, h int) (r, g, b uint8) {
	if w > 1 {
		r = uint8(x * 255 / (w - 1))
	}
	if h > 1 {
		g = uint8(y * 255 / (h - 1))
	}
	if (x/32+y/32)%2 == 1 {
		b = 255
	}
	return r, g, b
}
