package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// The destination's side of the multifd channels (format and rules:
// multifd.go): one goroutine per channel writes pages straight into guest
// RAM; the main stream's flushes are the barrier between passes.

// multifdIn receives the pages of one incoming migration.
type multifdIn struct {
	conns   []net.Conn
	blocks  map[string]*guestmem.Block
	timeout time.Duration
	main    *interruptibleReader

	mu       sync.Mutex
	cond     *sync.Cond
	arrived  []uint64 // per channel: the last SYNC it read
	final    []bool   // per channel: that SYNC was FINAL
	released uint64   // the main stream's flushes done
	err      error

	wg    sync.WaitGroup
	pages atomic.Int64
	zeros atomic.Int64
}

// acceptMultifd accepts the n channels of the migration id on ln, each index
// once, within timeout.
func acceptMultifd(ctx context.Context, ln listener, id [16]byte, n int, timeout time.Duration) ([]net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conns := make([]net.Conn, n)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	for got := 0; got < n; got++ {
		c, err := ln.accept(ctx)
		if err != nil {
			closeAll()
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("multifd: %d of %d channels connected within %v", got, n, timeout)
			}
			return nil, fmt.Errorf("multifd: accept channel: %w", err)
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		b := make([]byte, multifdInitLen)
		_, err = io.ReadFull(c, b)
		c.SetReadDeadline(time.Time{})
		if err != nil {
			c.Close()
			closeAll()
			return nil, fmt.Errorf("multifd: read a channel's init packet: %w", err)
		}
		i, err := decodeMultifdInit(b, id, n)
		if err != nil {
			c.Close()
			closeAll()
			return nil, err
		}
		if conns[i] != nil {
			c.Close()
			closeAll()
			return nil, fmt.Errorf("multifd: channel %d connected twice", i)
		}
		conns[i] = c
	}
	return conns, nil
}

// startMultifdIn starts the channels' goroutines. main is the main
// stream's reader, interrupted when a channel fails.
func startMultifdIn(conns []net.Conn, blocks []*guestmem.Block, timeout time.Duration, main *interruptibleReader) *multifdIn {
	in := &multifdIn{conns: conns, blocks: map[string]*guestmem.Block{}, timeout: timeout, main: main,
		arrived: make([]uint64, len(conns)), final: make([]bool, len(conns))}
	in.cond = sync.NewCond(&in.mu)
	for _, b := range blocks {
		in.blocks[b.Name] = b
	}
	for i := range conns {
		in.wg.Add(1)
		go in.receiver(i)
	}
	return in
}

// fail records the first error, wakes the main stream's flush and the
// channels, and closes the channels and the main stream's reads.
func (in *multifdIn) fail(err error) {
	in.mu.Lock()
	first := in.err == nil
	if first {
		in.err = err
	}
	in.cond.Broadcast()
	in.mu.Unlock()
	if first {
		for _, c := range in.conns {
			c.Close()
		}
		if in.main != nil {
			in.main.interrupt(err)
		}
	}
}

// error returns the first channel error.
func (in *multifdIn) error() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.err
}

// flush is the main stream's MULTIFD_FLUSH: it waits until every channel
// read the next SYNC, then lets them go on.
func (in *multifdIn) flush() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	gen := in.released + 1
	for {
		if in.err != nil {
			return in.err
		}
		all := true
		for i, a := range in.arrived {
			if a < gen {
				all = false
				if in.final[i] {
					return fmt.Errorf("multifd channel %d ended its stream before sync %d", i, gen)
				}
			}
		}
		if all {
			break
		}
		in.cond.Wait()
	}
	in.released = gen
	in.cond.Broadcast()
	return nil
}

// finish checks, after the main stream loaded, that every channel ended
// with a FINAL sync the main stream flushed, and waits for the goroutines.
func (in *multifdIn) finish() error {
	in.mu.Lock()
	var err error
	for i := range in.arrived {
		if !in.final[i] || in.arrived[i] != in.released {
			err = fmt.Errorf("multifd channel %d: the stream ended without the channel's final sync", i)
			break
		}
	}
	in.mu.Unlock()
	if err != nil {
		in.fail(err)
	}
	in.wg.Wait()
	if e := in.error(); e != nil {
		return e
	}
	return nil
}

// stop fails the channels (if they did not finish) and waits for them.
func (in *multifdIn) stop(err error) {
	in.fail(err)
	in.wg.Wait()
}

// receiver is channel i's goroutine.
func (in *multifdIn) receiver(i int) {
	defer in.wg.Done()
	if err := in.receive(i); err != nil {
		in.fail(fmt.Errorf("multifd channel %d: %w", i, err))
	}
}

func (in *multifdIn) receive(i int) error {
	conn := in.conns[i]
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	hdr := make([]byte, multifdHeaderLen)
	offb := make([]byte, 8*multifdMaxPages)
	offs := make([]uint64, 0, multifdMaxPages)
	iov := make([][]byte, 0, multifdMaxPages)
	r := deadlineReader{conn: conn, timeout: in.timeout}
	var packet, syncs uint64
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("the source closed the channel after %d packets, before its final sync", packet)
			}
			return fmt.Errorf("packet %d header: %w", packet, err)
		}
		h, err := parseMultifdHeader(hdr)
		if err != nil {
			return fmt.Errorf("packet %d: %w", packet, err)
		}
		if h.Packet != packet {
			return fmt.Errorf("packet number %d, want %d", h.Packet, packet)
		}
		packet++
		if h.Flags&multifdFlagSync != 0 {
			if h.Sync != syncs+1 {
				return fmt.Errorf("sync number %d, want %d", h.Sync, syncs+1)
			}
			syncs++
			if done, err := in.arrive(i, syncs, h.Flags&multifdFlagFinal != 0); done || err != nil {
				return err
			}
			continue
		}
		if h.Sync != syncs {
			return fmt.Errorf("page packet %d after sync %d says sync %d", h.Packet, syncs, h.Sync)
		}
		blk := in.blocks[h.Block]
		if blk == nil {
			return fmt.Errorf("packet %d: RAM block %q is not on this machine", h.Packet, h.Block)
		}
		b := offb[:8*h.pages()]
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("packet %d offsets: %w", h.Packet, err)
		}
		if offs, err = parseMultifdOffsets(b, &h, blk, offs); err != nil {
			return fmt.Errorf("packet %d: %w", h.Packet, err)
		}
		iov = iov[:0]
		for _, o := range offs[:h.Normal] {
			iov = append(iov, blk.Mem[o:o+vmstate.PageSize])
		}
		if err := readvFull(rc, conn, in.timeout, iov); err != nil {
			return fmt.Errorf("packet %d: page data of RAM block %q: %w", h.Packet, blk.Name, err)
		}
		for _, o := range offs[h.Normal:] {
			// As the stream's ZERO record: a page already zero is not
			// written (untouched memory stays unpopulated).
			if pg := blk.Mem[o : o+vmstate.PageSize]; !isZeroPage(pg) {
				clear(pg)
			}
		}
		in.pages.Add(int64(h.Normal))
		in.zeros.Add(int64(h.Zero))
	}
}

// arrive records channel i's SYNC number n and waits until the main stream
// flushed it; done says the channel ended (FINAL).
func (in *multifdIn) arrive(i int, n uint64, final bool) (done bool, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.arrived[i], in.final[i] = n, final
	in.cond.Broadcast()
	for in.released < n && in.err == nil {
		in.cond.Wait()
	}
	if in.err != nil {
		return true, nil // reported by whoever failed
	}
	return final, nil
}

// readvFull reads into the buffers with readv until they are full.
func readvFull(rc syscall.RawConn, conn net.Conn, timeout time.Duration, iov [][]byte) error {
	if timeout > 0 {
		conn.SetReadDeadline(time.Now().Add(timeout))
	}
	for len(iov) > 0 {
		var n int
		var err error
		rerr := rc.Read(func(fd uintptr) bool {
			n, err = unix.Readv(int(fd), iov)
			return err != unix.EAGAIN
		})
		if rerr != nil {
			return rerr
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		for n > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
	}
	return nil
}

// interruptibleReader is the main stream's reader with multifd: a read
// deadline per read (as deadlineReader), and interrupt makes the current
// and every later read fail, so that a failed channel stops the load
// while the connection stays open for the verdict.
type interruptibleReader struct {
	conn    net.Conn
	timeout time.Duration
	mu      sync.Mutex
	err     error
}

func (r *interruptibleReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return 0, r.err
	}
	if r.timeout > 0 {
		r.conn.SetReadDeadline(time.Now().Add(r.timeout))
	}
	r.mu.Unlock()
	return r.conn.Read(p)
}

func (r *interruptibleReader) interrupt(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
	r.conn.SetReadDeadline(time.Unix(1, 0))
}
