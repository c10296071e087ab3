// Package netdev provides the host's network backends for virtio-net
// devices: frames move between guest memory slices and a host descriptor
// with one vectored system call each, never through an intermediate buffer.
//
// Backends, by the spec a VM configuration writes:
//
//	tap:IFNAME            a tap interface (IFF_TAP|IFF_NO_PI), plain Ethernet frames
//	tap:IFNAME,vnet_hdr   the same with IFF_VNET_HDR: every frame starts with a
//	                      12-byte struct virtio_net_hdr (TUNSETVNETHDRSZ 12)
//	unix-listen:PATH      a SOCK_SEQPACKET unix socket that accepts one peer
//	unix-connect:PATH     the connecting side, which reconnects when the peer goes
//	discard               accepts every frame, never receives (benchmarks)
//
// Every backend implements host/plugin's NetBackend (SendSG, RecvSG) and
// Watchable (Ready, Watch), and tap also FDHolder (FD), structurally: the host's
// plugin package need not be imported to use them. Reads and writes never
// block: when a frame cannot move now they return an error whose
// WouldBlock method reports true, and readiness arrives through Watch.
package netdev

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
	"wasmvmm/host/plugin"
)

// VnetHdrLen is the size of struct virtio_net_hdr with VIRTIO_F_VERSION_1
// (num_buffers included), the header a vnet-header backend carries in
// front of every frame.
const VnetHdrLen = 12

// MaxSG bounds the buffers of one frame, as the plugin ABI does.
const MaxSG = abi.MaxSGEntries

// Backend is what every backend of this package provides: a plugin
// NetBackend that reports readiness and closes. Tap (and Discard, with no
// descriptor) also implement plugin.FDHolder, so cpr-transfer passes a tap
// to the new process; a unix backend is opened anew there.
type Backend interface {
	plugin.NetBackend
	plugin.Watchable
	// VnetHdr reports whether frames carry a VnetHdrLen-byte virtio_net_hdr
	// in front.
	VnetHdr() bool
	// Close releases the backend's descriptors and stops its goroutines.
	Close() error
}

// Open opens the backend a VM configuration names (see the package
// documentation for the specs).
func Open(spec string) (plugin.NetBackend, error) {
	b, err := OpenBackend(spec)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// OpenBackend is Open returning the package's Backend interface.
func OpenBackend(spec string) (Backend, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "tap":
		name, opts, _ := strings.Cut(arg, ",")
		cfg := TapConfig{Name: name}
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "":
			case "vnet_hdr", "vnet_hdr=on":
				cfg.VnetHdr = true
			case "vnet_hdr=off":
				cfg.VnetHdr = false
			default:
				return nil, fmt.Errorf("net backend %q: unknown tap option %q (want vnet_hdr)", spec, o)
			}
		}
		if name == "" {
			return nil, fmt.Errorf("net backend %q: tap needs an interface name (tap:IFNAME)", spec)
		}
		return OpenTap(cfg)
	case "unix-listen":
		if arg == "" {
			return nil, fmt.Errorf("net backend %q: unix-listen needs a socket path", spec)
		}
		return ListenUnix(arg)
	case "unix-connect":
		if arg == "" {
			return nil, fmt.Errorf("net backend %q: unix-connect needs a socket path", spec)
		}
		return ConnectUnix(arg)
	case "discard":
		if arg != "" {
			return nil, fmt.Errorf("net backend %q: discard takes no argument", spec)
		}
		return NewDiscard(), nil
	}
	return nil, fmt.Errorf("net backend %q: unknown kind %q (want tap:IFNAME, unix-listen:PATH, unix-connect:PATH or discard)", spec, kind)
}

// wouldBlock is the error of an operation that cannot proceed now; host/plugin
// recognizes it by its WouldBlock method.
type wouldBlock struct{}

func (wouldBlock) Error() string    { return "operation would block" }
func (wouldBlock) WouldBlock() bool { return true }

// ErrWouldBlock is returned when no frame is waiting, or a frame cannot be
// sent now.
var ErrWouldBlock error = wouldBlock{}

// ErrClosed is returned by operations on a closed backend.
var ErrClosed = errors.New("net backend closed")

// frameLen sums the lengths of bufs.
func frameLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// iovecs turns guest memory slices into a reusable iovec list, dropping
// empty ones.
func iovecs(dst []unix.Iovec, bufs [][]byte) ([]unix.Iovec, error) {
	dst = dst[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if len(dst) == MaxSG {
			return dst, fmt.Errorf("frame in more than %d buffers", MaxSG)
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		dst = append(dst, v)
	}
	return dst, nil
}

// pollNow returns the poll events present on fd now.
func pollNow(fd int) int16 {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
	for {
		n, err := unix.Poll(fds[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0
		}
		return fds[0].Revents
	}
}

// events converts poll events into backend events.
func events(re int16) abi.BackendEvent {
	var ev abi.BackendEvent
	if re&unix.POLLIN != 0 {
		ev |= abi.EventReadable
	}
	if re&unix.POLLOUT != 0 {
		ev |= abi.EventWritable
	}
	if re&(unix.POLLHUP|unix.POLLERR) != 0 {
		ev |= abi.EventHangup
	}
	return ev
}

// readiness implements the Watch half of the host's readiness protocol for
// a non-blocking descriptor: the host asks Ready, and relies on a notify
// call for every event that appears after it saw the event absent.
//
// Two goroutines per descriptor wait for edges in Go's network poller
// (syscall.RawConn Read and Write with a condition that never performs
// I/O). A direction is "armed" once someone saw it not ready (Ready, or an
// operation that returned EAGAIN); a waiter notifies only while armed and
// the descriptor is ready, then disarms. So nothing spins while a readable
// descriptor waits for the device to consume, and no event that follows an
// observed "not ready" is missed.
type readiness struct {
	mu     sync.Mutex
	notify func()
	armedR atomic.Bool
	armedW atomic.Bool
	// afterFirstLook, set by tests only, runs in poll between the first
	// look at the descriptor and the arming: the window of a lost wakeup.
	afterFirstLook func()
}

func newReadiness() *readiness {
	r := &readiness{}
	r.armedR.Store(true)
	r.armedW.Store(true)
	return r
}

// setNotify registers f (nil removes it).
func (r *readiness) setNotify(f func()) {
	r.mu.Lock()
	r.notify = f
	r.mu.Unlock()
}

// fire calls the registered notify function, without holding any lock.
func (r *readiness) fire() {
	r.mu.Lock()
	f := r.notify
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

// observe records the events present now and returns them: absent ones
// are armed.
func (r *readiness) observe(ev abi.BackendEvent) abi.BackendEvent {
	if ev&abi.EventReadable == 0 {
		r.armedR.Store(true)
	}
	if ev&abi.EventWritable == 0 {
		r.armedW.Store(true)
	}
	return ev
}

// poll returns the events present on fd now and arms the absent ones. An
// event that arrives between the first look and the arming is reported
// too: a waiter woken by its edge while the event was still disarmed went
// back to sleep until the next edge, and without this second look a frame
// that arrives alone (an ARP reply) would wait for the next one.
func (r *readiness) poll(fd int) abi.BackendEvent {
	ev := events(pollNow(fd))
	if r.afterFirstLook != nil {
		r.afterFirstLook()
	}
	ev = r.observe(ev)
	if ev != abi.EventReadable|abi.EventWritable {
		ev |= events(pollNow(fd))
	}
	return ev
}

// start runs the two waiters on rc until it is closed.
func (r *readiness) start(rc syscall.RawConn) {
	go r.wait(rc, false)
	go r.wait(rc, true)
}

func (r *readiness) wait(rc syscall.RawConn, write bool) {
	armed, want := &r.armedR, int16(unix.POLLIN|unix.POLLHUP|unix.POLLERR)
	if write {
		armed, want = &r.armedW, unix.POLLOUT|unix.POLLHUP|unix.POLLERR
	}
	cond := func(fd uintptr) bool { return armed.Load() && pollNow(int(fd))&want != 0 }
	for {
		var err error
		if write {
			err = rc.Write(cond)
		} else {
			err = rc.Read(cond)
		}
		if err != nil {
			return // closed
		}
		armed.Store(false)
		r.fire()
	}
}
