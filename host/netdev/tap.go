package netdev

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
)

// TapConfig configures a tap backend.
type TapConfig struct {
	// Name is the interface name (at most 15 bytes); a pattern such as
	// "tap%d" lets the kernel pick a free one (Tap.Name reports it).
	Name string
	// VnetHdr opens the tap with IFF_VNET_HDR and a 12-byte header
	// (TUNSETVNETHDRSZ), so the guest's checksum and segmentation offloads
	// reach the kernel.
	VnetHdr bool
}

// Tap is a tap interface: frames are written with writev and read with
// readv straight between guest memory and the descriptor.
type Tap struct {
	name    string
	vnetHdr bool
	file    *os.File // registered with Go's poller; owns the descriptor
	fd      int
	ready   *readiness

	mu     sync.RWMutex // held for reading around every system call on fd
	closed bool
	txMu   sync.Mutex
	txIov  []unix.Iovec
	rxMu   sync.Mutex
	rxIov  []unix.Iovec

	sent, received atomic.Uint64
}

// OpenTap creates (or attaches to) the tap interface cfg names. It needs
// CAP_NET_ADMIN. The interface is created in the network namespace of the
// calling thread.
func OpenTap(cfg TapConfig) (*Tap, error) {
	if len(cfg.Name) == 0 || len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap interface name %q: want 1 to %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", cfg.Name, err)
	}
	ifr, err := unix.NewIfreq(cfg.Name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", cfg.Name, err)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if cfg.VnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", cfg.Name, err)
	}
	if cfg.VnetHdr {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrLen); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("tap %s: TUNSETVNETHDRSZ %d: %w", cfg.Name, VnetHdrLen, err)
		}
	}
	return newTap(fd, ifr.Name(), cfg.VnetHdr)
}

// AdoptTap wraps a tap descriptor opened elsewhere (e.g. passed across a
// cpr-transfer), with the interface name and header mode it was opened
// with. The descriptor is set non-blocking; the Tap owns it from now on.
func AdoptTap(fd int, name string, vnetHdr bool) (*Tap, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tap %s: adopt descriptor %d: %w", name, fd, err)
	}
	return newTap(fd, name, vnetHdr)
}

func newTap(fd int, name string, vnetHdr bool) (*Tap, error) {
	f := os.NewFile(uintptr(fd), "tap:"+name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	t := &Tap{
		name: name, vnetHdr: vnetHdr, file: f, fd: fd, ready: newReadiness(),
		txIov: make([]unix.Iovec, 0, MaxSG), rxIov: make([]unix.Iovec, 0, MaxSG),
	}
	t.ready.start(rc)
	return t, nil
}

// Name returns the interface name.
func (t *Tap) Name() string { return t.name }

// Kind implements plugin.Backend.
func (t *Tap) Kind() abi.BackendKind { return abi.BackendNet }

// VnetHdr reports whether frames carry a virtio_net_hdr.
func (t *Tap) VnetHdr() bool { return t.vnetHdr }

// FD returns the tap descriptor (for cpr-transfer).
func (t *Tap) FD() int { return t.fd }

// Stats returns the frames sent to and received from the interface.
func (t *Tap) Stats() (sent, received uint64) { return t.sent.Load(), t.received.Load() }

// SendSG writes one frame gathered from bufs.
func (t *Tap) SendSG(bufs [][]byte) (int, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0, ErrClosed
	}
	t.txMu.Lock()
	defer t.txMu.Unlock()
	iov, err := iovecs(t.txIov, bufs)
	if err != nil {
		return 0, fmt.Errorf("tap %s: %w", t.name, err)
	}
	n, err := rwv(unix.SYS_WRITEV, t.fd, iov)
	if err == unix.EAGAIN {
		t.ready.armedW.Store(true)
		return 0, ErrWouldBlock
	}
	if err != nil {
		return 0, fmt.Errorf("tap %s: writev: %w", t.name, err)
	}
	t.sent.Add(1)
	return n, nil
}

// RecvSG reads one frame into bufs and returns its length; a frame longer
// than the buffers is truncated and its full length returned.
func (t *Tap) RecvSG(bufs [][]byte) (int, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0, ErrClosed
	}
	t.rxMu.Lock()
	defer t.rxMu.Unlock()
	iov, err := iovecs(t.rxIov, bufs)
	if err != nil {
		return 0, fmt.Errorf("tap %s: %w", t.name, err)
	}
	n, err := rwv(unix.SYS_READV, t.fd, iov)
	if err == unix.EAGAIN {
		t.ready.armedR.Store(true)
		return 0, ErrWouldBlock
	}
	if err != nil {
		return 0, fmt.Errorf("tap %s: readv: %w", t.name, err)
	}
	t.received.Add(1)
	return n, nil
}

// rwv runs readv or writev on fd, retrying on EINTR.
func rwv(sysno uintptr, fd int, iov []unix.Iovec) (int, error) {
	var base unsafe.Pointer
	if len(iov) > 0 {
		base = unsafe.Pointer(&iov[0])
	}
	for {
		n, _, e := unix.Syscall(sysno, uintptr(fd), uintptr(base), uintptr(len(iov)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// Ready implements plugin.Watchable.
func (t *Tap) Ready() abi.BackendEvent {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0
	}
	return t.ready.poll(t.fd)
}

// Watch implements plugin.Watchable.
func (t *Tap) Watch(notify func()) { t.ready.setNotify(notify) }

// Close closes the descriptor; a non-persistent interface disappears.
func (t *Tap) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.file.Close()
}
