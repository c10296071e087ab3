//go:build !wasip1

package main

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"wasmvmm/host/netdev"
	"wasmvmm/host/plugin"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// txBench drives the transmit queue as a guest driver does under load:
// a fixed set of chains (one per ring slot) made available a batch at a
// time with one notification, the used ring checked after each batch.
// Interrupts are suppressed (VRING_AVAIL_F_NO_INTERRUPT), as Linux does
// for its transmit queue.
type txBench struct {
	e     *env
	heads []uint16
	avail uint16
}

func newTxBench(b *testing.B, cfg plugin.Config, be plugin.Backend, frame uint32, indirect bool) *txBench {
	e := startWith(b, be, nil, nil, cfg)
	e.up(allFeatures)
	e.tx.SetAvailFlags(virtio.AvailFNoInterrupt)
	tb := &txBench{e: e}
	for i := 0; i < queueSize; i++ {
		base := txData + uint64(i)*0x12000
		var bufs []virtiotest.Buf
		if !indirect {
			bufs = []virtiotest.Buf{{Addr: base, Len: hdrLen + frame}}
		} else {
			// Header, then the frame in 4 KiB pages with gaps between them.
			bufs = append(bufs, virtiotest.Buf{Addr: base, Len: hdrLen})
			for off := uint32(0); off < frame; off += 4096 {
				bufs = append(bufs, virtiotest.Buf{Addr: base + 0x1000 + uint64(off)/4096*0x1000 + uint64(off)%4096, Len: min(4096, frame-off)})
			}
		}
		var head uint16
		var err error
		if indirect {
			head, err = e.tx.AddIndirect(tableAddr+uint64(i)*0x200, bufs)
		} else {
			head, err = e.tx.Add(bufs)
		}
		if err != nil {
			b.Fatal(err)
		}
		tb.heads = append(tb.heads, head)
	}
	return tb
}

// batch makes n chains available, notifies once and checks they were all
// used.
func (tb *txBench) batch(b *testing.B, n int) {
	g, q := tb.e.guest, tb.e.tx
	var slot [2]byte
	for k := 0; k < n; k++ {
		binary.LittleEndian.PutUint16(slot[:], tb.heads[k])
		g.Write(q.L.Driver+4+2*uint64((tb.avail+uint16(k))%queueSize), slot[:])
	}
	tb.avail += uint16(n)
	q.SetAvailIdx(tb.avail)
	q.Notify()
	if u := q.UsedIdx(); u != tb.avail {
		b.Fatalf("used idx %d after a batch, want %d (status %#x)\n%s", u, tb.avail, tb.e.drv.Status(), tb.e.logs)
	}
}

// deadlineModes runs each benchmark with the host's default protection
// against runaway plugins and without any (plugin.Config.NoDeadline).
var deadlineModes = []struct {
	name string
	cfg  plugin.Config
}{
	{"default", plugin.Config{}},
	{"unprotected", plugin.Config{NoDeadline: true}},
}

// BenchmarkTx64 measures transmitting 64-byte frames to the discard
// backend, a ring of 256 per notification: ns/op is per frame.
func BenchmarkTx64(b *testing.B) {
	for _, m := range deadlineModes {
		b.Run(m.name, func(b *testing.B) {
			d := netdev.NewDiscard()
			tb := newTxBench(b, m.cfg, d, 64, false)
			b.ResetTimer()
			t0 := time.Now()
			done := 0
			for done < b.N {
				n := min(queueSize, b.N-done)
				tb.batch(b, n)
				done += n
			}
			el := time.Since(t0)
			b.StopTimer()
			if f, _ := d.Stats(); f != uint64(b.N) {
				b.Fatalf("discard saw %d frames, want %d", f, b.N)
			}
			b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpkt/s")
		})
	}
}

// BenchmarkTx64KiB compares transmitting 64 KiB frames (header plus 16
// scattered 4 KiB pages behind an indirect descriptor, 64 per
// notification) to the discard backend with a plain copy of the same
// pages into a 64 KiB buffer, in the same run. The discard backend does
// not read the payload: the virtio figure is the device's overhead per
// frame, the copy is what moving the bytes once costs.
func BenchmarkTx64KiB(b *testing.B) {
	const frameLen = 64 << 10
	for _, m := range deadlineModes {
		b.Run(m.name, func(b *testing.B) {
			tb := newTxBench(b, m.cfg, netdev.NewDiscard(), frameLen, true)
			mem := tb.e.h.mem
			dst := make([]byte, frameLen)
			b.SetBytes(frameLen)
			b.ResetTimer()
			t0 := time.Now()
			for done := 0; done < b.N; {
				n := min(64, b.N-done)
				tb.batch(b, n)
				done += n
			}
			virtioTime := time.Since(t0)
			t0 = time.Now()
			for i := 0; i < b.N; i++ {
				base := txData + uint64(i%queueSize)*0x12000 + 0x1000
				for p := uint64(0); p < frameLen/4096; p++ {
					src, err := mem.Slice(base+p*0x1000, 4096)
					if err != nil {
						b.Fatal(err)
					}
					copy(dst[p*4096:], src)
				}
			}
			copyTime := time.Since(t0)
			b.StopTimer()
			gb := float64(b.N) * frameLen / 1e9
			b.ReportMetric(gb/virtioTime.Seconds(), "virtio-GB/s")
			b.ReportMetric(gb/copyTime.Seconds(), "memcpy-GB/s")
			b.ReportMetric(copyTime.Seconds()/virtioTime.Seconds(), "ratio")
		})
	}
}

// BenchmarkRx64 measures receiving 64-byte frames from a unix socket peer
// (a goroutine sends as fast as the socket takes them) into 256 receive
// chains of 2048 bytes that the driver makes available again as soon as
// the device used them all: ns/op is per frame, and includes the kernel's
// socket work on both sides.
func BenchmarkRx64(b *testing.B) {
	for _, m := range deadlineModes {
		b.Run(m.name, func(b *testing.B) {
			devEnd, testEnd := peerB(b)
			e := startWith(b, devEnd, nil, nil, m.cfg)
			e.up(allFeatures)
			var heads []uint16
			for i := 0; i < queueSize; i++ {
				h, err := e.rx.Add([]virtiotest.Buf{{Addr: rxData + uint64(i)*2048, Len: 2048, Write: true}})
				if err != nil {
					b.Fatal(err)
				}
				heads = append(heads, h)
			}
			stop := make(chan struct{})
			sent := make(chan int)
			go func() {
				f := frame(64, 1)
				n := 0
				defer func() { sent <- n }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := testEnd.SendSG([][]byte{f}); err == nil {
						n++
					} else {
						time.Sleep(10 * time.Microsecond)
					}
				}
			}()
			g, q := e.guest, e.rx
			var slot [2]byte
			avail := uint16(0)
			publish := func(n int) {
				for k := 0; k < n; k++ {
					binary.LittleEndian.PutUint16(slot[:], heads[k])
					g.Write(q.L.Driver+4+2*uint64((avail+uint16(k))%queueSize), slot[:])
				}
				avail += uint16(n)
				q.SetAvailIdx(avail)
				q.Notify()
			}
			b.ResetTimer()
			t0 := time.Now()
			deadline := t0.Add(time.Minute)
			for done := 0; done < b.N; {
				n := min(queueSize, b.N-done)
				publish(n)
				for q.UsedIdx() != avail {
					if time.Now().After(deadline) {
						b.Fatalf("used idx %d, want %d\n%s", q.UsedIdx(), avail, e.logs)
					}
					time.Sleep(5 * time.Microsecond)
				}
				done += n
			}
			el := time.Since(t0)
			b.StopTimer()
			close(stop)
			<-sent
			b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpkt/s")
		})
	}
}

// peerB is peer for benchmarks.
func peerB(b *testing.B) (dev, test *netdev.Unix) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "net.sock")
	l, err := netdev.ListenUnix(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	c, err := netdev.ConnectUnix(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	if err := c.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	return l, c
}
