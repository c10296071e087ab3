package netdev

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
)

// Unix is one end of a SOCK_SEQPACKET unix socket linking two VMs: each
// frame is one packet. The listening end accepts one peer at a time (a new
// peer replaces the old one); the connecting end retries until the
// listener is there and reconnects when the connection drops. While no
// peer is connected, sent frames are dropped (like an unplugged cable) and
// nothing is received.
type Unix struct {
	path   string
	listen bool
	ready  *readiness
	ln     *net.UnixListener
	lnDev  uint64 // the listener's socket file, removed on Close only while
	lnIno  uint64 // it is still this one (a successor may have taken the path)
	done   chan struct{}
	redial chan struct{} // connecting end: the connection dropped

	mu      sync.RWMutex // held for reading around every system call on fd
	closed  bool
	conn    *net.UnixConn
	fd      int
	connCh  chan struct{} // closed at the next connection
	connGen uint64

	txMu  sync.Mutex
	txIov []unix.Iovec
	rxMu  sync.Mutex
	rxIov []unix.Iovec

	sent, received, dropped atomic.Uint64
	started                 atomic.Bool // listening or connecting (Start)

	// afterAddrInUse, set by tests only, runs in bind after a bind found
	// the path in use and before it looks at the file there.
	afterAddrInUse func()
}

// bindTries bounds the binds of a listening end whose path stays in use
// (another process binding there again and again).
const bindTries = 8

func newUnix(path string, listen bool) *Unix {
	return &Unix{
		path: path, listen: listen, ready: newReadiness(), done: make(chan struct{}),
		redial: make(chan struct{}, 1), fd: -1, connCh: make(chan struct{}),
		txIov: make([]unix.Iovec, 0, MaxSG), rxIov: make([]unix.Iovec, 0, MaxSG),
	}
}

// ListenUnix listens on path for the peer. A stale socket file (nobody
// listening) is replaced; a live one is an error.
func ListenUnix(path string) (*Unix, error) {
	u := newUnix(path, true)
	u.started.Store(true)
	if err := u.bind(false); err != nil {
		return nil, err
	}
	return u, nil
}

// bind listens on the backend's path and starts accepting. takeOver
// replaces the socket file even while another process listens there: new
// peers reach this listener while the other process keeps its own (and its
// connected peer) until it closes, which it does with HandOver, leaving the
// new socket file alone. Anything at path other than a socket is an error.
func (u *Unix) bind(takeOver bool) error {
	path := u.path
	addr := &net.UnixAddr{Name: path, Net: "unixpacket"}
	ln, err := net.ListenUnix("unixpacket", addr)
	// The file at path may change under us: the process this one takes
	// the path over from may remove its socket file at any moment (its
	// Close), so a file that is gone by the time it is looked at means
	// "bind again", not "in use".
retry:
	for try := 0; err != nil && errors.Is(err, unix.EADDRINUSE) && try < bindTries; try++ {
		if u.afterAddrInUse != nil {
			u.afterAddrInUse()
		}
		if !takeOver {
			if c, derr := net.DialUnix("unixpacket", nil, addr); derr == nil {
				c.Close()
				return fmt.Errorf("net backend unix-listen:%s: another process listens there", path)
			}
		}
		fi, serr := os.Lstat(path)
		switch {
		case serr == nil && fi.Mode()&os.ModeSocket != 0:
			os.Remove(path)
		case errors.Is(serr, fs.ErrNotExist):
		default:
			break retry // not a socket: never replaced
		}
		ln, err = net.ListenUnix("unixpacket", addr)
	}
	if err != nil {
		return fmt.Errorf("net backend unix-listen:%s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		u.lnDev, u.lnIno = st.Dev, st.Ino
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	u.ln = ln
	u.mu.Unlock()
	go u.acceptLoop()
	return nil
}

// ConnectUnix connects to the peer listening on path, now or as soon as it
// listens.
func ConnectUnix(path string) (*Unix, error) {
	u, err := UnixLater(path, false)
	if err != nil {
		return nil, err
	}
	return u, u.Start() // a connecting end's Start cannot fail
}

// UnixLater returns a unix backend (listening end if listen, else the
// connecting end) that neither listens nor connects until Start: frames sent
// before are dropped as without a peer. cpr-transfer's new process opens
// its unix links this way and starts them once the guest is its, so that a
// failed transfer leaves the source's link alone.
func UnixLater(path string, listen bool) (*Unix, error) {
	if path == "" {
		kind := "unix-connect"
		if listen {
			kind = "unix-listen"
		}
		return nil, fmt.Errorf("net backend %s: empty path", kind)
	}
	return newUnix(path, listen), nil
}

// Start begins listening or connecting, once; later calls do nothing. A
// listening end takes the path over from a process still listening there
// (see bind).
func (u *Unix) Start() error {
	if !u.started.CompareAndSwap(false, true) {
		return nil
	}
	if u.listen {
		return u.bind(true)
	}
	go u.dialLoop()
	return nil
}

func (u *Unix) acceptLoop() {
	for {
		c, err := u.ln.AcceptUnix()
		if err != nil {
			select {
			case <-u.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		u.setConn(c)
	}
}

func (u *Unix) dialLoop() {
	addr := &net.UnixAddr{Name: u.path, Net: "unixpacket"}
	backoff := 5 * time.Millisecond
	for {
		c, err := net.DialUnix("unixpacket", nil, addr)
		if err == nil {
			backoff = 5 * time.Millisecond
			u.setConn(c)
			select {
			case <-u.done:
				return
			case <-u.redial:
			}
			continue
		}
		select {
		case <-u.done:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (u *Unix) setConn(c *net.UnixConn) {
	rc, err := c.SyscallConn()
	fd := -1
	if err == nil {
		err = rc.Control(func(f uintptr) { fd = int(f) })
	}
	if err != nil {
		c.Close()
		return
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		c.Close()
		return
	}
	if u.conn != nil {
		u.conn.Close()
	}
	u.conn, u.fd = c, fd
	u.connGen++
	close(u.connCh)
	u.connCh = make(chan struct{})
	u.ready.armedR.Store(true)
	u.ready.armedW.Store(true)
	u.mu.Unlock()
	u.ready.start(rc)
	u.ready.fire()
}

// drop closes the connection of generation gen after an end-of-stream or
// a connection error.
func (u *Unix) drop(gen uint64) {
	u.mu.Lock()
	if u.conn == nil || u.connGen != gen {
		u.mu.Unlock()
		return
	}
	u.conn.Close()
	u.conn, u.fd = nil, -1
	u.mu.Unlock()
	if !u.listen {
		select {
		case u.redial <- struct{}{}:
		default:
		}
	}
	u.ready.fire()
}

// Path returns the socket path.
func (u *Unix) Path() string { return u.path }

// Kind implements plugin.Backend.
func (u *Unix) Kind() abi.BackendKind { return abi.BackendNet }

// VnetHdr reports false: frames are plain Ethernet frames.
func (u *Unix) VnetHdr() bool { return false }

// Connected reports whether a peer is connected. A unix backend has no
// lasting descriptor to preserve across cpr-transfer (its connection comes
// and goes with the peer), so it does not expose one: the new process
// listens or connects anew (UnixLater).
func (u *Unix) Connected() bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.fd >= 0
}

// WaitConnected waits until a peer is connected or ctx ends.
func (u *Unix) WaitConnected(ctx context.Context) error {
	for {
		u.mu.RLock()
		ok, ch, closed := u.conn != nil, u.connCh, u.closed
		u.mu.RUnlock()
		switch {
		case ok:
			return nil
		case closed:
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("net backend %s: no peer: %w", u.path, ctx.Err())
		}
	}
}

// Stats returns the frames sent, received, and dropped for want of a peer.
func (u *Unix) Stats() (sent, received, dropped uint64) {
	return u.sent.Load(), u.received.Load(), u.dropped.Load()
}

// connErr reports whether err means the connection is gone.
func connErr(err error) bool {
	return errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNREFUSED)
}

// SendSG sends one frame gathered from bufs as one packet.
func (u *Unix) SendSG(bufs [][]byte) (int, error) {
	u.mu.RLock()
	if u.closed {
		u.mu.RUnlock()
		return 0, ErrClosed
	}
	fd, gen := u.fd, u.connGen
	if fd < 0 {
		u.mu.RUnlock()
		u.dropped.Add(1)
		return frameLen(bufs), nil
	}
	u.txMu.Lock()
	iov, err := iovecs(u.txIov, bufs)
	var n int
	if err == nil {
		n, err = msg(unix.SYS_SENDMSG, fd, iov, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	}
	u.txMu.Unlock()
	u.mu.RUnlock()
	switch {
	case err == nil:
		u.sent.Add(1)
		return n, nil
	case err == unix.EAGAIN:
		u.ready.armedW.Store(true)
		return 0, ErrWouldBlock
	case connErr(err):
		u.drop(gen)
		u.dropped.Add(1)
		return frameLen(bufs), nil
	}
	return 0, fmt.Errorf("net backend %s: sendmsg: %w", u.path, err)
}

// RecvSG receives one packet into bufs and returns its full length (a
// longer packet is truncated).
func (u *Unix) RecvSG(bufs [][]byte) (int, error) {
	u.mu.RLock()
	if u.closed {
		u.mu.RUnlock()
		return 0, ErrClosed
	}
	fd, gen := u.fd, u.connGen
	if fd < 0 {
		u.mu.RUnlock()
		u.ready.armedR.Store(true)
		return 0, ErrWouldBlock
	}
	u.rxMu.Lock()
	iov, err := iovecs(u.rxIov, bufs)
	var n int
	if err == nil {
		n, err = msg(unix.SYS_RECVMSG, fd, iov, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	}
	hup := err == nil && n == 0 && pollNow(fd)&unix.POLLHUP != 0
	u.rxMu.Unlock()
	u.mu.RUnlock()
	switch {
	case err == unix.EAGAIN:
		u.ready.armedR.Store(true)
		return 0, ErrWouldBlock
	case hup || (err != nil && connErr(err)):
		u.drop(gen)
		u.ready.armedR.Store(true)
		return 0, ErrWouldBlock
	case err != nil:
		return 0, fmt.Errorf("net backend %s: recvmsg: %w", u.path, err)
	}
	u.received.Add(1)
	return n, nil
}

// msg runs sendmsg or recvmsg with iov on fd, retrying on EINTR.
func msg(sysno uintptr, fd int, iov []unix.Iovec, flags int) (int, error) {
	var m unix.Msghdr
	if len(iov) > 0 {
		m.Iov = &iov[0]
		m.SetIovlen(len(iov))
	}
	for {
		n, _, e := unix.Syscall(sysno, uintptr(fd), uintptr(unsafe.Pointer(&m)), uintptr(flags))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// Ready implements plugin.Watchable. Without a peer the backend is
// writable (frames are dropped) and not readable.
func (u *Unix) Ready() abi.BackendEvent {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return 0
	}
	if u.fd < 0 {
		return u.ready.observe(abi.EventWritable)
	}
	return u.ready.poll(u.fd)
}

// Watch implements plugin.Watchable.
func (u *Unix) Watch(notify func()) { u.ready.setNotify(notify) }

// Close closes the connection and the listener (removing the socket file
// while it is still the listener's).
func (u *Unix) Close() error { return u.close(true) }

// HandOver closes the connection and the listener as Close does, but
// leaves the socket file: another process takes the path over (a
// listening end made with UnixLater, started) or already has. The source
// of a cpr-transfer closes its links this way, at about the time the new
// process binds: Close's check that the file is still its own and the
// removal are two steps, between which the new process may have bound its
// socket there, which Close would then remove, leaving the peer nothing
// to redial. A file left without a listener is replaced by the next
// listening end as a stale one.
func (u *Unix) HandOver() error { return u.close(false) }

func (u *Unix) close(unlink bool) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	close(u.done)
	var err error
	if u.ln != nil {
		err = u.ln.Close()
		var st unix.Stat_t
		if unlink && unix.Stat(u.path, &st) == nil && st.Dev == u.lnDev && st.Ino == u.lnIno {
			os.Remove(u.path)
		}
	}
	if u.conn != nil {
		u.conn.Close()
		u.conn, u.fd = nil, -1
	}
	return err
}
