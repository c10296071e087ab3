package migration

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// The source's side of the multifd channels (format and rules: multifd.go).

// multifdJob is a piece of one block's dirty bitmap to send: bm covers the
// words from first on.
type multifdJob struct {
	block int
	first int
	bm    []uint64
}

// multifdOut sends RAM pages over parallel connections: one goroutine per
// channel takes jobs from a shared queue.
type multifdOut struct {
	ctx     context.Context
	g       *Migrator
	id      [16]byte
	conns   []net.Conn
	blocks  []*guestmem.Block
	timeout func() time.Duration

	limMu sync.Mutex
	lim   *rateLimiter // shared by the channels; under limMu

	jobs    chan multifdJob
	free    chan []uint64 // bitmap buffers for jobs
	pending sync.WaitGroup
	senders sync.WaitGroup
	packets []uint64 // per channel: the next packet number
	syncs   uint64   // SYNCs sent on every channel

	bytes  atomic.Int64
	errMu  sync.Mutex
	err    error
	failed chan struct{} // closed with the first error
	closed bool
}

// newMultifdID returns a random migration id.
func newMultifdID() ([16]byte, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return id, fmt.Errorf("multifd: migration id: %w", err)
	}
	return id, nil
}

// openMultifd connects n channels to ch and sends their init packets. On
// error the connections made are closed.
func openMultifd(ctx context.Context, g *Migrator, ch Channel, id [16]byte, n int, blocks []*guestmem.Block, lim *rateLimiter) (*multifdOut, error) {
	o := &multifdOut{ctx: ctx, g: g, id: id, blocks: blocks, timeout: g.ioTimeout, lim: lim,
		jobs: make(chan multifdJob, n), free: make(chan []uint64, 2*n+1), packets: make([]uint64, n),
		failed: make(chan struct{})}
	for i := 0; i < n; i++ {
		c, err := dial(ctx, ch)
		if err != nil {
			o.closeConns()
			return nil, fmt.Errorf("multifd channel %d: %w", i, err)
		}
		o.conns = append(o.conns, c)
		if d := o.timeout(); d > 0 {
			c.SetWriteDeadline(time.Now().Add(d))
		}
		if _, err := c.Write(encodeMultifdInit(id, i, n)); err != nil {
			o.closeConns()
			return nil, fmt.Errorf("multifd channel %d: init packet: %w", i, err)
		}
	}
	for i := 0; i < cap(o.free); i++ {
		o.free <- make([]uint64, chunkWords)
	}
	for i := range o.conns {
		o.senders.Add(1)
		go o.sender(i)
	}
	return o, nil
}

// closeConns closes every channel (cancel: wakes a blocked write).
func (o *multifdOut) closeConns() {
	for _, c := range o.conns {
		c.Close()
	}
}

// close stops the senders and closes the channels.
func (o *multifdOut) close() {
	if !o.closed {
		o.closed = true
		close(o.jobs)
	}
	o.closeConns()
	o.senders.Wait()
}

// fail records the first error.
func (o *multifdOut) fail(err error) {
	o.errMu.Lock()
	defer o.errMu.Unlock()
	if o.err == nil {
		o.err = err
		close(o.failed)
	}
}

// error returns the first error, errCancelled once the migration was
// cancelled.
func (o *multifdOut) error() error {
	if o.ctx.Err() != nil {
		return errCancelled
	}
	o.errMu.Lock()
	defer o.errMu.Unlock()
	return o.err
}

// send queues the pages set in bm (words from first on, at most
// chunkWords) of block for a channel.
func (o *multifdOut) send(block, first int, bm []uint64) error {
	var buf []uint64
	select {
	case buf = <-o.free:
	case <-o.failed:
		return o.error()
	case <-o.ctx.Done():
		return errCancelled
	}
	buf = buf[:len(bm)]
	copy(buf, bm)
	o.pending.Add(1)
	select {
	case o.jobs <- multifdJob{block: block, first: first, bm: buf}:
		return nil
	case <-o.failed:
		o.pending.Done()
		return o.error()
	case <-o.ctx.Done():
		o.pending.Done()
		return errCancelled
	}
}

// sync waits until every queued page went out and sends a SYNC (FINAL with
// final) on every channel. The caller then sends the main stream's flush.
func (o *multifdOut) sync(final bool) error {
	o.pending.Wait()
	if err := o.error(); err != nil {
		return err
	}
	o.syncs++
	h := multifdHeader{Flags: multifdFlagSync, Sync: o.syncs}
	if final {
		h.Flags |= multifdFlagFinal
	}
	// The senders are idle: this goroutine writes on their connections.
	for i, c := range o.conns {
		h.Packet = o.packets[i]
		o.packets[i]++
		b := appendMultifdPacket(nil, &h, nil, nil)
		if d := o.timeout(); d > 0 {
			c.SetWriteDeadline(time.Now().Add(d))
		}
		n, err := c.Write(b)
		o.bytes.Add(int64(n))
		if err != nil {
			if o.ctx.Err() != nil {
				return errCancelled
			}
			err = fmt.Errorf("multifd channel %d: sync: %w", i, err)
			o.fail(err)
			return err
		}
	}
	return nil
}

// setLimitOff lets the channels send at full speed (true: the switchover,
// or a full-speed pass before it) or paces them again (false).
func (o *multifdOut) setLimitOff(off bool) {
	o.limMu.Lock()
	o.lim.off = off
	o.limMu.Unlock()
}

// slept is the time the channels waited for the rate limit.
func (o *multifdOut) slept() time.Duration {
	o.limMu.Lock()
	defer o.limMu.Unlock()
	return o.lim.slept
}

// sender is channel i's goroutine: it sends the jobs it takes as packets of
// up to multifdMaxPages pages. After an error it drops the jobs left, so
// that sync returns and reports the error.
func (o *multifdOut) sender(i int) {
	defer o.senders.Done()
	conn := o.conns[i]
	normal := make([]uint64, 0, multifdMaxPages)
	zero := make([]uint64, 0, multifdMaxPages)
	hdr := make([]byte, 0, multifdHeaderLen+8*multifdMaxPages)
	iov := make([][]byte, 0, multifdMaxPages+1)
	var h multifdHeader
	flush := func(blk *guestmem.Block) error {
		if len(normal)+len(zero) == 0 {
			return nil
		}
		h = multifdHeader{Packet: o.packets[i], Sync: o.syncs, Block: blk.Name}
		hdr = appendMultifdPacket(hdr[:0], &h, normal, zero)
		iov = append(iov[:0], hdr)
		for _, off := range normal {
			iov = append(iov, blk.Mem[off:off+vmstate.PageSize])
		}
		size := len(hdr) + len(normal)*vmstate.PageSize
		o.limMu.Lock()
		err := o.lim.wait(o.ctx, size)
		o.limMu.Unlock()
		if err != nil {
			return err
		}
		if d := o.timeout(); d > 0 {
			conn.SetWriteDeadline(time.Now().Add(d))
		}
		// net.Buffers on a socket is one writev per 1024 buffers: the
		// pages go from guest memory to the socket without a copy here.
		bufs := net.Buffers(iov)
		n, err := bufs.WriteTo(conn)
		o.bytes.Add(n)
		o.packets[i]++
		o.g.mu.Lock()
		o.g.ram.Normal += int64(len(normal))
		o.g.ram.NormalBytes += int64(len(normal)) * vmstate.PageSize
		o.g.ram.Duplicate += int64(len(zero))
		o.g.mu.Unlock()
		normal, zero = normal[:0], zero[:0]
		if err != nil {
			return fmt.Errorf("multifd channel %d: %w", i, err)
		}
		return nil
	}
	for job := range o.jobs {
		if o.error() != nil {
			o.free <- job.bm
			o.pending.Done()
			continue
		}
		blk := o.blocks[job.block]
		var err error
		for j, word := range job.bm {
			for word != 0 && err == nil {
				bit := bits.TrailingZeros64(word)
				word &= word - 1
				off := uint64((job.first+j)*64+bit) * vmstate.PageSize
				if off >= blk.Size() {
					break
				}
				if isZeroPage(blk.Mem[off : off+vmstate.PageSize]) {
					zero = append(zero, off)
				} else {
					normal = append(normal, off)
				}
				if len(normal)+len(zero) == multifdMaxPages {
					err = flush(blk)
				}
			}
		}
		if err == nil {
			err = flush(blk)
		}
		normal, zero = normal[:0], zero[:0]
		if err != nil {
			if o.ctx.Err() != nil {
				err = errCancelled
			}
			o.fail(err)
		}
		o.free <- job.bm
		o.pending.Done()
	}
}
