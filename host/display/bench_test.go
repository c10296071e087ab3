package display

import "testing"

// BenchmarkConvert1080p converts one 1920x1080 B8G8R8X8 frame.
func BenchmarkConvert1080p(b *testing.B) {
	const w, h = 1920, 1080
	pix := make([]byte, w*h*4)
	for i := range pix {
		pix[i] = byte(i * 7)
	}
	b.SetBytes(w * h * 4)
	for i := 0; i < b.N; i++ {
		if _, err := Convert(FormatB8G8R8X8, pix, w, h, w*4); err != nil {
			b.Fatal(err)
		}
	}
}
