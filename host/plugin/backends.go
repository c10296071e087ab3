package plugin

import (
	"errors"
	"sync/atomic"

	"wasmvmm/abi"
)

// ErrWouldBlock is returned by backends for an operation that cannot
// proceed now; the plugin sees abi.ErrAgain and waits for readiness. An
// error with a method WouldBlock() bool that returns true means the same
// (host/backend's errors do), so backend packages need not import this one.
var ErrWouldBlock = errors.New("operation would block")

func wouldBlock(err error) bool {
	if errors.Is(err, ErrWouldBlock) {
		return true
	}
	var wb interface{ WouldBlock() bool }
	return errors.As(err, &wb) && wb.WouldBlock()
}

// ErrNoBackend is returned by Host.Backend when nothing is attached under a
// name; the plugin sees abi.ErrNotFound.
var ErrNoBackend = errors.New("no such backend")

// Backend is a host resource a device opens by name: a byte stream (char),
// a frame channel (net) or a random-access image (block). The concrete
// value also implements CharBackend, NetBackend or BlockBackend.
type Backend interface {
	Kind() abi.BackendKind
}

// Watchable backends report readiness. The host calls dev_backend_ready
// while a watched event is present and the plugin makes progress; a plugin
// that stops consuming calls backend_watch again to be called again.
type Watchable interface {
	// Ready returns the events present now.
	Ready() abi.BackendEvent
	// Watch registers notify (replacing any earlier one; nil removes it).
	// The backend calls notify, from any goroutine and without holding its
	// own locks, when an event may have become present.
	Watch(notify func())
}

// CharBackend is a byte stream. Reads never block.
type CharBackend interface {
	Backend
	// TryRead copies buffered input into p and returns the count; with no
	// input buffered it returns 0 and ErrWouldBlock.
	TryRead(p []byte) (int, error)
	// Write queues p for output and returns how many bytes it accepted
	// (fewer than len(p), with ErrWouldBlock, when the output buffer is
	// full).
	Write(p []byte) (int, error)
}

// NetBackend carries frames. Buffers are slices of guest memory.
type NetBackend interface {
	Backend
	// SendSG sends one frame gathered from bufs and returns its length.
	SendSG(bufs [][]byte) (int, error)
	// RecvSG receives one frame scattered into bufs and returns the
	// frame's length (bytes beyond the buffers are dropped), or
	// ErrWouldBlock when no frame is waiting.
	RecvSG(bufs [][]byte) (int, error)
}

// BlockBackend is a random-access image. Buffers are slices of guest memory.
type BlockBackend interface {
	Backend
	PreadSG(bufs [][]byte, off int64) (int, error)
	PwriteSG(bufs [][]byte, off int64) (int, error)
	Flush() error
	Discard(off, n int64) error
	WriteZeroes(off, n int64) error
	Size() (int64, error)
}

// FDHolder is implemented by backends whose host file descriptor can be
// preserved across cpr-transfer (fd_preserve).
type FDHolder interface {
	FD() int
}

type backendSlot struct {
	name    string
	kind    abi.BackendKind
	b       Backend
	watched atomic.Int32 // abi.BackendEvent mask
	pending atomic.Bool  // a delivery goroutine is scheduled
	hooked  bool         // Watch(notify) was called (under the instance lock)
	reads   uint64       // bytes or frames consumed, to detect progress
}

func statusOf(err error) abi.Status {
	switch {
	case err == nil:
		return abi.OK
	case wouldBlock(err):
		return abi.ErrAgain
	case errors.Is(err, errors.ErrUnsupported):
		return abi.ErrUnsupported
	case errors.Is(err, ErrNoBackend):
		return abi.ErrNotFound
	}
	return abi.ErrIO
}
