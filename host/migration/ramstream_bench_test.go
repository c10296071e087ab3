package migration

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// BenchmarkRAMStream measures one live-migration channel's RAM path in
// process, over a unix socket pair: the precopy loop's writer stack
// (vmstate.Writer on streamWriter, one PART per 16 MiB chunk) into
// vmstate.Load, against a plain copy of the same number of bytes through
// another socket pair into memory, in the same iteration. Every page of the
// 512 MiB block holds data, as in the paused/10GiB case of
// BenchmarkLiveMigration. It logs (with -v) wall and CPU times of the
// sender's and the receiver's threads, CPU time being what the two sides
// take from each other on a small, shared host, and reports
//
//	stream-vs-plain     whole path, plain copy time / stream time
//	stream-vs-plain-ram the same against a plain copy that writes straight
//	                    from the source RAM (as cold in the cache as the
//	                    pages the stream sends) instead of a 1 MiB buffer
//	send-vs-plain       the source alone (the reader discards), against a
//	                    plain send of a 1 MiB buffer with a discarding reader
//	load-vs-plain       the destination alone (the sender writes an encoded
//	                    stream from memory), against the plain copy
//	send-cpu-ms         the source's CPU time per copy
//	load-cpu-ms         the destination's CPU time per copy
//
// Run: go test -run '^$' -bench RAMStream -benchtime 3x ./host/migration/
func BenchmarkRAMStream(b *testing.B) {
	const mib = 512
	size := uint64(mib) << 20
	src, err := guestmem.Alloc("pc.ram", 0, size, guestmem.AllocOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	for off := uint64(0); off < size; off += vmstate.PageSize {
		for i := uint64(0); i < vmstate.PageSize; i += 512 {
			src.Mem[off+i] = byte(off>>12) | 1
		}
	}
	blocks := []*guestmem.Block{src}
	// The encoded stream, for the destination-only measure.
	enc := &memWriter{}
	if err := sendRAM(enc, blocks); err != nil {
		b.Fatal(err)
	}
	n := int64(len(enc.b))

	// The destination's memory is touched once, before: its first touch
	// costs the same for any copy into it, and on a nested host varies
	// tenfold with whether the host lately freed memory (see
	// BenchmarkLiveMigration), which would drown what is measured here.
	dst, err := guestmem.Alloc("pc.ram", 0, size, guestmem.AllocOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	plainDst, err := guestmem.Alloc("plain", 0, uint64(n)+vmstate.PageSize, guestmem.AllocOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer plainDst.Close()
	for _, m := range [][]byte{dst.Mem, plainDst.Mem} {
		for i := 0; i < len(m); i += vmstate.PageSize {
			m[i] = 1
		}
	}
	dsts := []*guestmem.Block{dst}
	var plain, plainRAM, stream, plainSend, send, loadOnly timing
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plain.add(plainCopy(b, n, nil, plainDst.Mem))
		plainRAM.add(plainCopy(b, n, src.Mem, plainDst.Mem))
		stream.add(streamCopy(b, blocks, nil, dsts))
		plainSend.add(plainCopy(b, n, nil, nil))
		send.add(streamCopy(b, blocks, nil, nil))
		loadOnly.add(streamCopy(b, blocks, enc.b, dsts))
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(b.N) }
	b.Logf("%d MiB of RAM, %d stream bytes, %d rounds; ms per copy: wall, sender CPU, receiver CPU", mib, n, b.N)
	for _, r := range []struct {
		name string
		t    timing
	}{{"plain copy into memory", plain}, {"plain copy of the RAM itself", plainRAM}, {"stream into RAM (Load)", stream},
		{"plain send, reader discards", plainSend}, {"stream send, reader discards", send},
		{"encoded stream into Load", loadOnly}} {
		b.Logf("  %-30s %7.1f %7.1f %7.1f", r.name, per(r.t.wall), per(r.t.send), per(r.t.recv))
	}
	b.ReportMetric(plain.wall.Seconds()/stream.wall.Seconds(), "stream-vs-plain")
	b.ReportMetric(plainRAM.wall.Seconds()/stream.wall.Seconds(), "stream-vs-plain-ram")
	b.ReportMetric(plainSend.wall.Seconds()/send.wall.Seconds(), "send-vs-plain")
	b.ReportMetric(plain.wall.Seconds()/loadOnly.wall.Seconds(), "load-vs-plain")
	b.ReportMetric(send.send.Seconds()*1e3/float64(b.N), "send-cpu-ms")
	b.ReportMetric(loadOnly.recv.Seconds()*1e3/float64(b.N), "load-cpu-ms")
}

// threadCPU returns the CPU time (user and system) of the calling thread,
// which the caller locked to its goroutine.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timing is one copy's wall time and its sender's and receiver's CPU time.
type timing struct{ wall, send, recv time.Duration }

func (t *timing) add(u timing) { t.wall += u.wall; t.send += u.send; t.recv += u.recv }

// memWriter collects a stream in memory.
type memWriter struct{ b []byte }

func (m *memWriter) Write(p []byte) (int, error) { m.b = append(m.b, p...); return len(p), nil }

// sendRAM writes a stream of every page of blocks as the precopy loop does:
// one PART per chunkWords bitmap words, then END and EOF.
func sendRAM(out io.Writer, blocks []*guestmem.Block) error {
	w, err := vmstate.NewWriter(out, "bench")
	if err != nil {
		return err
	}
	w.SuppressVMDesc = true
	if err := w.RAMStart(blocks); err != nil {
		return err
	}
	sel := make([][]uint64, len(blocks))
	for i, blk := range blocks {
		words := int((blk.Pages() + 63) / 64)
		sel[i] = make([]uint64, words)
	}
	for i, blk := range blocks {
		all := make([]uint64, len(sel[i]))
		allPages(blk, all)
		for wd := 0; wd < len(all); wd += chunkWords {
			end := min(wd+chunkWords, len(all))
			copy(sel[i][wd:end], all[wd:end])
			if _, err := w.RAMPart(sel); err != nil {
				return err
			}
			clear(sel[i][wd:end])
		}
	}
	if _, err := w.RAMEnd(sel); err != nil {
		return err
	}
	return w.Complete(nil)
}

// socketPair returns the two ends of a unix stream socket pair.
func socketPair(b *testing.B) (net.Conn, net.Conn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	wf, rf := os.NewFile(uintptr(fds[0]), "w"), os.NewFile(uintptr(fds[1]), "r")
	defer wf.Close()
	defer rf.Close()
	wc, err := net.FileConn(wf)
	if err != nil {
		b.Fatal(err)
	}
	rc, err := net.FileConn(rf)
	if err != nil {
		b.Fatal(err)
	}
	return wc, rc
}

// drain reads rc to its end, into dst when it is not nil, else into a
// small buffer; it reports its thread's CPU time.
func drain(rc net.Conn, dst []byte) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0 := threadCPU()
	var err error
	if dst == nil {
		_, err = io.Copy(io.Discard, rc)
	} else {
		_, err = io.ReadFull(rc, dst)
	}
	return threadCPU() - c0, err
}

// plainCopy copies n bytes through a socket pair in 1 MiB writes, into
// dst[:n] or, with a nil dst, to a discarding reader: from src (n bytes of
// it, cold in the cache like guest RAM, wrapping around) or, with a nil src, from one 1 MiB
// buffer written over and over (what BenchmarkLiveMigration compares with).
func plainCopy(b *testing.B, n int64, src, dst []byte) timing {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	wc, rc := socketPair(b)
	defer rc.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i | 1)
	}
	chunk := func(off int64) []byte {
		if src != nil { // n is a little more than src: wrap around
			s := off % int64(len(src))
			return src[s:min(s+1<<20, int64(len(src)), s+n-off)]
		}
		return buf[:min(int64(len(buf)), n-off)]
	}
	type result struct {
		cpu time.Duration
		err error
	}
	done := make(chan result, 1)
	start, c0 := time.Now(), threadCPU()
	if dst != nil {
		dst = dst[:n]
	}
	go func() { cpu, err := drain(rc, dst); done <- result{cpu, err} }()
	for sent := int64(0); sent < n; {
		m, err := wc.Write(chunk(sent))
		if err != nil {
			b.Fatal(err)
		}
		sent += int64(m)
	}
	send := threadCPU() - c0
	wc.Close()
	r := <-done
	if r.err != nil {
		b.Fatal(r.err)
	}
	return timing{wall: time.Since(start), send: send, recv: r.cpu}
}

// streamCopy sends blocks' RAM (or, with enc, those bytes as they are)
// through a socket pair to vmstate.Load into dst (cleared first) or, with
// a nil dst, to a discarding reader.
func streamCopy(b *testing.B, blocks []*guestmem.Block, enc []byte, dst []*guestmem.Block) timing {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	wc, rc := socketPair(b)
	defer rc.Close()
	load := dst != nil
	for _, d := range dst {
		clear(d.Mem)
	}
	type result struct {
		cpu time.Duration
		err error
	}
	done := make(chan result, 1)
	start, c0 := time.Now(), threadCPU()
	go func() {
		if !load {
			cpu, err := drain(rc, nil)
			done <- result{cpu, err}
			return
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c0 := threadCPU()
		_, err := vmstate.Load(rc, vmstate.LoadOptions{Machine: "bench", Blocks: dst, AllowMissingVMDesc: true})
		done <- result{threadCPU() - c0, err}
	}()
	var err error
	if enc != nil {
		_, err = wc.Write(enc)
	} else {
		lim := &rateLimiter{rate: func() int64 { return 0 }}
		sw := &streamWriter{ctx: context.Background(), conn: wc, lim: lim, timeout: func() time.Duration { return 0 }}
		err = sendRAM(sw, blocks)
	}
	if err != nil {
		b.Fatal(err)
	}
	send := threadCPU() - c0
	wc.(*net.UnixConn).CloseWrite()
	r := <-done
	if r.err != nil {
		b.Fatal(r.err)
	}
	t := timing{wall: time.Since(start), send: send, recv: r.cpu}
	wc.Close()
	if load {
		for i := range blocks {
			if !bytes.Equal(blocks[i].Mem, dst[i].Mem) {
				b.Fatal("loaded RAM differs from the source")
			}
		}
	}
	return t
}
