package monitor

import (
	"bufio"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"

	"wasmvmm/host/display"
	"wasmvmm/host/machine"
	"wasmvmm/host/qmp"
)

// ScreendumpArgs are QEMU's screendump arguments.
type ScreendumpArgs struct {
	Filename string  `json:"filename"`
	Device   *string `json:"device,omitempty"`
	Head     *int    `json:"head,omitempty"`
	Format   *string `json:"format,omitempty"` // "ppm" (QEMU's default) or "png"
}

// gpu finds the display device: the one named, or the first virtio-gpu.
func (mon *Monitor) gpu(name string) (*machine.PluginDevice, error) {
	for _, d := range mon.m.Devices() {
		pd, ok := d.(*machine.PluginDevice)
		if !ok || (name != "" && pd.ID() != name) {
			continue
		}
		for _, s := range pd.Sections() {
			if s.Name == display.SectionName {
				return pd, nil
			}
		}
		if name != "" {
			return nil, qmp.Errorf(qmp.ClassGenericError, "Device '%s' is not a display", name)
		}
	}
	if name != "" {
		return nil, qmp.Errorf(qmp.ClassDeviceNotFound, "Device '%s' not found", name)
	}
	return nil, qmp.Errorf(qmp.ClassGenericError, "There is no console to take a screendump from")
}

func (mon *Monitor) screendump(ctx context.Context, a ScreendumpArgs) (any, error) {
	format := "ppm"
	if a.Format != nil {
		format = *a.Format
	}
	if format != "ppm" && format != "png" {
		return nil, fmt.Errorf("Parameter 'format' does not accept value '%s'", format)
	}
	head := 0
	if a.Head != nil {
		head = *a.Head
	}
	name := ""
	if a.Device != nil {
		name = *a.Device
	}
	dev, err := mon.gpu(name)
	if err != nil {
		return nil, err
	}
	img, err := display.Capture(dev.Instance, head)
	if err != nil {
		return nil, fmt.Errorf("screendump: %w", err)
	}
	f, err := os.OpenFile(a.Filename, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("failed to open file '%s': %w", a.Filename, err)
	}
	w := bufio.NewWriter(f)
	if format == "png" {
		err = png.Encode(w, img)
	} else {
		err = writePPM(w, img)
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(a.Filename)
		return nil, fmt.Errorf("screendump %s: %w", a.Filename, err)
	}
	return struct{}{}, nil
}

// writePPM writes a binary (P6) PPM, QEMU's default screendump format.
func writePPM(w *bufio.Writer, img *image.NRGBA) error {
	b := img.Bounds()
	fmt.Fprintf(w, "P6\n%d %d\n255\n", b.Dx(), b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		row := img.Pix[(y-b.Min.Y)*img.Stride:]
		for x := 0; x < b.Dx(); x++ {
			w.Write(row[x*4 : x*4+3])
		}
	}
	return nil
}
