//go:build !wasip1

package main

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/blockdev"
	"wasmvmm/sdk/virtio/virtiotest"
)

// BenchmarkSeqRead1MiB compares sequential 1 MiB reads of a cached image
// through the plugin (a Go driver plays the guest: one request per
// iteration, its 1 MiB data buffer in 256 scattered 4 KiB guest pages
// described by an indirect table, as Linux submits them) with a plain pread
// loop of the same bytes into guest RAM, in the same run (ns/op counts
// both). It reports both throughputs and their ratio (virtio / pread), and
// the ratio against the pread loop when each read follows 1 MiB of other
// memory traffic (ratio-vs-touched), which is what a device's reads meet.
func BenchmarkSeqRead1MiB(b *testing.B) {
	for _, c := range []struct {
		name   string
		stride uint64 // distance between the 4 KiB pages of the buffer
	}{{"scattered", 8192}, {"contiguous", 4096}} {
		b.Run(c.name, func(b *testing.B) { benchSeqRead(b, c.stride) })
	}
}

func benchSeqRead(b *testing.B, stride uint64) {
	const (
		image = 64 << 20
		chunk = 1 << 20
		pages = chunk / 4096
	)
	path := newImage(b, image)
	if _, err := os.ReadFile(path); err != nil { // into the page cache
		b.Fatal(err)
	}
	img := openImage(b, path, blockdev.Options{})
	e := start(b, path, img, nil, nil)
	e.up(wantFeatures)
	var bufs []virtiotest.Buf
	for i := uint64(0); i < pages; i++ {
		bufs = append(bufs, virtiotest.Buf{Addr: dataAddr + i*stride, Len: 4096, Write: true})
	}
	plain, err := e.h.mem.Slice(dataAddr+0x1000000, chunk)
	if err != nil {
		b.Fatal(err)
	}
	// Two phases over the same sequence of offsets, so that neither reads
	// bytes the other just pulled into the CPU caches (the image is larger
	// than them).
	b.SetBytes(chunk)
	b.ResetTimer()
	t0 := time.Now()
	off := uint64(0)
	for i := 0; i < b.N; i++ {
		u, st := e.request(reqIn, off/512, bufs, true)
		if st != statusOK || u.Len != chunk+1 {
			b.Fatalf("read at %d: status %d len %d", off, st, u.Len)
		}
		off = (off + chunk) % image
	}
	virtioTime := time.Since(t0)
	t0 = time.Now()
	off = 0
	for i := 0; i < b.N; i++ {
		n, err := unix.Pread(img.FD(), plain, int64(off))
		if err != nil || n != chunk {
			b.Fatalf("pread: %d %v", n, err)
		}
		off = (off + chunk) % image
	}
	preadTime := time.Since(t0)
	// The same pread loop touching 1 MiB of other memory before each read,
	// about the cache footprint of one request's driver and device work:
	// only the reads are timed. It shows how much of the gap is the plain
	// loop's destination and page walks staying hot in the CPU caches
	// because it does nothing else.
	scratch := make([]byte, 16<<20)
	var touched time.Duration
	off = 0
	for i := 0; i < b.N; i++ {
		for k := 0; k < 1<<20; k += 64 {
			scratch[(k*4099)%len(scratch)]++
		}
		t1 := time.Now()
		n, err := unix.Pread(img.FD(), plain, int64(off))
		touched += time.Since(t1)
		if err != nil || n != chunk {
			b.Fatalf("pread: %d %v", n, err)
		}
		off = (off + chunk) % image
	}
	b.StopTimer()
	mb := float64(b.N) * chunk / 1e6
	b.ReportMetric(mb/virtioTime.Seconds(), "virtio-MB/s")
	b.ReportMetric(mb/preadTime.Seconds(), "pread-MB/s")
	b.ReportMetric(preadTime.Seconds()/virtioTime.Seconds(), "ratio")
	b.ReportMetric(mb/touched.Seconds(), "pread-after-1MiB-touch-MB/s")
	b.ReportMetric(touched.Seconds()/virtioTime.Seconds(), "ratio-vs-touched")
}
