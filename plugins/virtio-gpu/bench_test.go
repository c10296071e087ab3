//go:build !wasip1

package main

import (
	"io"
	"testing"
	"time"

	"wasmvmm/host/display"
)

// benchFrame sets up a 1920x1080 B8G8R8X8 resource backed by 2025
// scattered guest pages (reverse order, one free page between each, as a
// guest's shmem pages are rarely contiguous), with the test card drawn and
// shown on scanout 0.
func benchFrame(b *testing.B) (*env, [][]byte) {
	const w, h = 1920, 1080
	e := start(b, nil, nil)
	e.up()
	pages := pageList(fbBase, w*h*4)
	if st := e.create(1, formatB8G8R8X8, w, h); st != respOKNoData {
		b.Fatal(st)
	}
	if st := e.attach(1, pages); st != respOKNoData {
		b.Fatal(st)
	}
	e.drawCard(pages, formatB8G8R8X8, w, h)
	if st := e.transfer(1, 0, 0, w, h, 0); st != respOKNoData {
		b.Fatal(st)
	}
	if st := e.setScanout(0, 1, 0, 0, w, h); st != respOKNoData {
		b.Fatal(st)
	}
	var src [][]byte
	for _, p := range pages {
		s, err := e.guest.M.Slice(p.Addr, uint64(p.Len))
		if err != nil {
			b.Fatal(err)
		}
		src = append(src, s)
	}
	return e, src
}

// BenchmarkTransfer1080p measures TRANSFER_TO_HOST_2D of a whole
// 1920x1080 frame (one command per iteration, through the virtqueue: the
// guest's 2025 pages gathered into the plugin's pixel arena) and, in the
// same run, a native Go gather of the same pages into a Go buffer; it
// reports frames/s of both and their ratio (plugin / native).
// "rows" transfers a 1918-pixel-wide rectangle: the row-by-row path, one
// host call per row.
func BenchmarkTransfer1080p(b *testing.B) {
	for _, c := range []struct {
		name string
		x, w uint32
	}{{"full", 0, 1920}, {"rows", 1, 1918}} {
		b.Run(c.name, func(b *testing.B) {
			e, src := benchFrame(b)
			dst := make([]byte, 1920*1080*4)
			b.SetBytes(int64(c.w) * 1080 * 4)
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if st := e.transfer(1, c.x, 0, c.w, 1080, uint64(c.x)*4); st != respOKNoData {
					b.Fatal(st)
				}
			}
			plugin := time.Since(t0)
			t0 = time.Now()
			for i := 0; i < b.N; i++ {
				n := 0
				for _, s := range src {
					n += copy(dst[n:], s)
				}
			}
			native := time.Since(t0)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/plugin.Seconds(), "frames/s")
			b.ReportMetric(float64(b.N)/native.Seconds(), "native-frames/s")
			b.ReportMetric(native.Seconds()/plugin.Seconds(), "ratio")
		})
	}
}

// BenchmarkRender1080p measures reading scanout 0 (1920x1080) out of the
// plugin's memory and converting it (capture), and capture plus PNG
// encoding (png).
func BenchmarkRender1080p(b *testing.B) {
	e, _ := benchFrame(b)
	b.Run("capture", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := display.Capture(e.inst, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("png", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := display.WritePNG(io.Discard, e.inst, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
