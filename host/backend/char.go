// Package backend implements host backends that devices open by name: byte
// streams (char backends) over a file, a unix socket, stdio or any
// io.Reader/io.Writer. A char backend buffers input read by its own
// goroutine (bounded: the reader waits while the buffer is full) and output
// drained by another (bounded: Write accepts what fits), signals readiness
// to one watcher, never busy-waits, and stops its goroutines on Close.
//
// The types satisfy the interfaces of wasmvmm/host/plugin (CharBackend,
// Watchable, FDHolder) structurally; this package does not import it.
package backend

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"wasmvmm/abi"
)

// BufferSize is the capacity of each direction's buffer.
const BufferSize = 64 << 10

// ErrWouldBlock is returned by TryRead with no input buffered and by Write
// when the output buffer is full. Its WouldBlock method tells consumers
// such as host/plugin (which maps it to abi.ErrAgain) what it means.
var ErrWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string    { return "operation would block" }
func (wouldBlockError) WouldBlock() bool { return true }

// Char is a byte-stream backend.
type Char struct {
	writing bool // a write to the sink is in flight (guarded by mu)
	name    string

	mu     sync.Mutex
	cond   *sync.Cond // signaled on input consumed, output queued, sink change, close
	in     []byte
	out    []byte
	sink   io.Writer // current output; nil discards
	notify func()
	hup    bool
	closed bool
	fd     int

	closers    []io.Closer
	afterClose []func() // run once the goroutines have stopped
	wg         sync.WaitGroup
}

func newChar(name string) *Char {
	c := &Char{name: name, fd: -1}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// Name returns the backend's name.
func (c *Char) Name() string { return c.name }

// Kind returns abi.BackendChar.
func (c *Char) Kind() abi.BackendKind { return abi.BackendChar }

// FD returns the host file descriptor behind the backend (the file, or the
// listening socket), or -1.
func (c *Char) FD() int { return c.fd }

// TryRead copies buffered input into p without blocking.
func (c *Char) TryRead(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.in) == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, ErrWouldBlock
	}
	n := copy(p, c.in)
	c.in = c.in[:copy(c.in, c.in[n:])]
	c.cond.Broadcast() // the reader may wait for room
	return n, nil
}

// Write queues p for output and returns how much fit. With no sink (a
// socket without a client) output is discarded and fully accepted.
func (c *Char) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, fmt.Errorf("backend %s: closed", c.name)
	}
	if c.sink == nil {
		return len(p), nil
	}
	n := min(len(p), BufferSize-len(c.out))
	c.out = append(c.out, p[:n]...)
	if n > 0 {
		c.cond.Broadcast()
	}
	if n < len(p) {
		return n, ErrWouldBlock
	}
	return n, nil
}

// Ready returns the events present now.
func (c *Char) Ready() abi.BackendEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ev abi.BackendEvent
	if len(c.in) > 0 {
		ev |= abi.EventReadable
	}
	if len(c.out) < BufferSize {
		ev |= abi.EventWritable
	}
	if c.hup {
		ev |= abi.EventHangup
	}
	return ev
}

// Watch registers the function called when input arrives, output drains
// or the peer hangs up (nil removes it).
func (c *Char) Watch(notify func()) {
	c.mu.Lock()
	c.notify = notify
	c.mu.Unlock()
}

// Buffered returns the number of input bytes waiting.
func (c *Char) Buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.in)
}

func (c *Char) signal() {
	c.mu.Lock()
	fn := c.notify
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// readFrom copies r into the input buffer until r fails or the backend
// closes. It waits (no polling) while the buffer is full.
func (c *Char) readFrom(r io.Reader) error {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.mu.Lock()
			for len(c.in)+n > BufferSize && !c.closed {
				c.cond.Wait()
			}
			if c.closed {
				c.mu.Unlock()
				return nil
			}
			c.in = append(c.in, buf[:n]...)
			c.mu.Unlock()
			c.signal()
		}
		if err != nil {
			return err
		}
	}
}

// writeLoop drains the output buffer into the current sink.
func (c *Char) writeLoop() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		for !c.closed && (len(c.out) == 0 || c.sink == nil) {
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return
		}
		data, sink := c.out, c.sink
		c.out = nil
		c.writing = true
		c.mu.Unlock()
		_, err := sink.Write(data)
		c.mu.Lock()
		c.writing = false
		if err != nil && c.sink == sink {
			c.sinkFailedLocked(sink)
		}
		c.mu.Unlock()
		c.signal() // room for more output
	}
}

// sinkFailedLocked drops the sink after a write error; the socket backend
// also disconnects the client.
func (c *Char) sinkFailedLocked(sink io.Writer) {
	c.sink = nil
	if cl, ok := sink.(io.Closer); ok {
		_ = cl.Close()
	}
}

// closeDrainTimeout bounds how long Close waits for queued output to reach
// the sink (a guest's last words before power-off must not be lost).
const closeDrainTimeout = 2 * time.Second

// Close writes out what is still queued (waiting at most closeDrainTimeout
// for a sink that does not take it), stops the goroutines and closes what
// the backend opened.
func (c *Char) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	deadline := time.Now().Add(closeDrainTimeout)
	for (len(c.out) > 0 && c.sink != nil || c.writing) && time.Now().Before(deadline) {
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
		c.mu.Lock()
	}
	c.closed = true
	closers := c.closers
	c.cond.Broadcast()
	c.mu.Unlock()
	var errs []error
	for _, cl := range closers {
		if err := cl.Close(); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			errs = append(errs, err)
		}
	}
	c.wg.Wait()
	for _, f := range c.afterClose {
		f()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("backend %s: close: %w", c.name, err)
	}
	return nil
}
