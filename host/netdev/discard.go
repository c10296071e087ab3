package netdev

import (
	"sync/atomic"

	"wasmvmm/abi"
)

// Discard accepts every frame and never receives one: a sink for
// benchmarks. It counts what it was given.
type Discard struct {
	frames, bytes atomic.Uint64
}

// NewDiscard returns a discard backend.
func NewDiscard() *Discard { return &Discard{} }

// Kind implements plugin.Backend.
func (d *Discard) Kind() abi.BackendKind { return abi.BackendNet }

// VnetHdr reports false (a header, if the device sends one, is discarded
// with the frame).
func (d *Discard) VnetHdr() bool { return false }

// FD returns -1: there is no descriptor.
func (d *Discard) FD() int { return -1 }

// SendSG counts the frame and drops it.
func (d *Discard) SendSG(bufs [][]byte) (int, error) {
	n := frameLen(bufs)
	d.frames.Add(1)
	d.bytes.Add(uint64(n))
	return n, nil
}

// RecvSG never has a frame.
func (d *Discard) RecvSG([][]byte) (int, error) { return 0, ErrWouldBlock }

// Ready reports the backend always writable, never readable.
func (d *Discard) Ready() abi.BackendEvent { return abi.EventWritable }

// Watch implements plugin.Watchable; nothing ever becomes ready.
func (d *Discard) Watch(func()) {}

// Stats returns the frames and bytes discarded.
func (d *Discard) Stats() (frames, bytes uint64) { return d.frames.Load(), d.bytes.Load() }

// Close does nothing.
func (d *Discard) Close() error { return nil }
