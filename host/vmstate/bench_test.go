package vmstate

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"wasmvmm/host/guestmem"
)

// TestRAMThroughput measures writing and loading a 1 GiB RAM block, half of
// its pages touched, through a stream file in /tmp, against plain buffered
// file copies of the same memory in the same run: all 1 GiB, and only the
// touched half. It needs about 4 GiB of memory and page cache, so it runs
// only with VMSTATE_BENCH=1 (VMSTATE_BENCH_MIB changes the size). Goal:
// stream throughput >= 0.8 of the plain copy of the whole block.
func TestRAMThroughput(t *testing.T) {
	if os.Getenv("VMSTATE_BENCH") != "1" {
		t.Skip("set VMSTATE_BENCH=1 to run the 1 GiB RAM throughput comparison")
	}
	mib := 1024
	if v, err := strconv.Atoi(os.Getenv("VMSTATE_BENCH_MIB")); err == nil && v > 0 {
		mib = v
	}
	size := uint64(mib) << 20
	src, err := guestmem.Alloc("pc.ram", 0, size, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for p := uint64(0); p < src.Pages(); p += 2 {
		pg := src.Mem[p*PageSize : (p+1)*PageSize]
		for i := 0; i < PageSize; i += 64 {
			pg[i] = byte(p) | 1
		}
	}
	dir, err := os.MkdirTemp("/tmp", "vmstate-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	plainFile, halfFile, streamFile := filepath.Join(dir, "plain"), filepath.Join(dir, "half"), filepath.Join(dir, "stream")

	writeFile := func(path string, fn func(w io.Writer) error) time.Duration {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := fn(f); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		f.Close()
		return d
	}
	plainWrite := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, WriterBufferSize)
		if _, err := bw.Write(src.Mem); err != nil {
			return err
		}
		return bw.Flush()
	}
	halfWrite := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, WriterBufferSize)
		for p := uint64(0); p < src.Pages(); p += 2 {
			if _, err := bw.Write(src.Mem[p*PageSize : (p+1)*PageSize]); err != nil {
				return err
			}
		}
		return bw.Flush()
	}
	streamWrite := func(w io.Writer) error {
		return Save(w, "bench", []*guestmem.Block{src}, nil)
	}
	const rounds = 3
	var tPlainW, tHalfW, tStreamW time.Duration
	for i := 0; i < rounds; i++ { // interleaved, best of each
		for _, c := range []struct {
			d    *time.Duration
			path string
			fn   func(io.Writer) error
		}{{&tPlainW, plainFile, plainWrite}, {&tHalfW, halfFile, halfWrite}, {&tStreamW, streamFile, streamWrite}} {
			if d := writeFile(c.path, c.fn); *c.d == 0 || d < *c.d {
				*c.d = d
			}
		}
	}
	st, _ := os.Stat(streamFile)

	dst, err := guestmem.Alloc("pc.ram", 0, size, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	plainRead := func() time.Duration {
		f, err := os.Open(plainFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		if _, err := io.ReadFull(bufio.NewReaderSize(f, 256<<10), dst.Mem); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	streamRead := func() time.Duration {
		f, err := os.Open(streamFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		if _, err := Load(f, LoadOptions{Machine: "bench", Blocks: []*guestmem.Block{dst}}); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	var tPlainR, tStreamR time.Duration
	for i := 0; i < rounds; i++ {
		clear(dst.Mem)
		if d := plainRead(); tPlainR == 0 || d < tPlainR {
			tPlainR = d
		}
		clear(dst.Mem)
		if d := streamRead(); tStreamR == 0 || d < tStreamR {
			tStreamR = d
		}
	}
	if !bytes.Equal(src.Mem, dst.Mem) {
		t.Fatal("loaded RAM differs from the source")
	}
	gib := float64(size) / (1 << 30)
	rate := func(d time.Duration) float64 { return gib / d.Seconds() }
	t.Logf("%d MiB RAM, half the pages touched; stream file %d bytes; best of %d", mib, st.Size(), rounds)
	t.Logf("write: plain copy of all RAM %v (%.2f GiB/s of RAM), plain copy of touched pages %v, stream %v (%.2f GiB/s of RAM)",
		tPlainW, rate(tPlainW), tHalfW, tStreamW, rate(tStreamW))
	t.Logf("write ratio (plain all / stream) %.2f; vs touched-only copy %.2f", tPlainW.Seconds()/tStreamW.Seconds(), tHalfW.Seconds()/tStreamW.Seconds())
	t.Logf("read: plain %v (%.2f GiB/s), stream load %v (%.2f GiB/s), ratio %.2f",
		tPlainR, rate(tPlainR), tStreamR, rate(tStreamR), tPlainR.Seconds()/tStreamR.Seconds())
	if r := tPlainW.Seconds() / tStreamW.Seconds(); r < 0.8 {
		t.Errorf("stream write reaches %.2f of a plain copy; goal >= 0.8", r)
	}
	if r := tPlainR.Seconds() / tStreamR.Seconds(); r < 0.8 {
		t.Errorf("stream load reaches %.2f of a plain read; goal >= 0.8", r)
	}
}
