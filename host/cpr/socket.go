package cpr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxFDsPerRead bounds the descriptors one read accepts (SCM_MAX_FD).
const maxFDsPerRead = 253

// State is a received CPR state: the descriptors the source preserved,
// owned by the State until taken.
type State struct {
	mu      sync.Mutex
	entries []Entry
	taken   map[int]bool // index -> taken
}

// NewState wraps entries (tests, and a sender building its list).
func NewState(entries []Entry) *State {
	return &State{entries: entries, taken: map[int]bool{}}
}

// Entries returns every entry, taken or not.
func (s *State) Entries() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Entry(nil), s.entries...)
}

// Take hands the descriptor of (name, id) to the caller, who owns it from
// then on. It reports false when there is none or it was taken already.
func (s *State) Take(name string, id int32) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.entries {
		if e.Name == name && e.ID == id && !s.taken[i] {
			s.taken[i] = true
			return e.FD, true
		}
	}
	return -1, false
}

// Untaken lists the entries nobody took.
func (s *State) Untaken() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for i, e := range s.entries {
		if !s.taken[i] {
			out = append(out, e)
		}
	}
	return out
}

// Close closes the descriptors nobody took.
func (s *State) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for i, e := range s.entries {
		if !s.taken[i] {
			s.taken[i] = true
			if err := unix.Close(e.FD); err != nil {
				errs = append(errs, fmt.Errorf("close %s/%d: %w", e.Name, e.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Send connects to the destination's cpr socket at path, sends entries
// (each descriptor by SCM_RIGHTS; the caller keeps its own copies) and
// shuts down the writing side. The returned connection is to be given to
// WaitHangup.
func Send(ctx context.Context, path string, entries []Entry) (*net.UnixConn, error) {
	var d net.Dialer
	d.Timeout = 10 * time.Second
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("cpr channel unix:%s: %w", path, err)
	}
	uc := c.(*net.UnixConn)
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	defer stop()
	if err := encode(&connSink{c: uc}, entries); err != nil {
		uc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cpr channel unix:%s: %w", path, err)
	}
	if err := uc.CloseWrite(); err != nil {
		uc.Close()
		return nil, fmt.Errorf("cpr channel unix:%s: shut down writing: %w", path, err)
	}
	return uc, nil
}

// WaitHangup waits until the destination closes the cpr socket (it has
// read the state and listens on the main channel) and closes c. Bytes the
// destination sends are an error: QEMU's protocol has none.
func WaitHangup(ctx context.Context, c *net.UnixConn) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case n > 0:
		return errors.New("cpr channel: the destination sent data instead of hanging up")
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return nil
	}
	return fmt.Errorf("cpr channel: waiting for the destination to hang up: %w", err)
}

// Listener is the destination's cpr socket.
type Listener struct {
	ln   *net.UnixListener
	path string
}

// Listen listens on a unix socket at path (a stale socket file there is
// replaced). The socket is bound under a temporary name and renamed into
// place once it listens, so a source that sees path can connect.
func Listen(path string) (*Listener, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("cpr channel unix:%s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cpr channel unix:%s: %w", path, err)
	}
	return &Listener{ln: ln, path: path}, nil
}

// Close stops listening and removes the socket file.
func (l *Listener) Close() error {
	err := l.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	os.Remove(l.path)
	return err
}

// Receive accepts the source, reads its state and returns it with the
// connection, which the caller closes when the source may go on (after
// it listens on the main channel). The listener is closed either way.
func (l *Listener) Receive(ctx context.Context) (*State, *net.UnixConn, error) {
	stop := context.AfterFunc(ctx, func() { l.ln.Close() })
	c, err := l.ln.AcceptUnix()
	stop()
	l.Close()
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("cpr channel unix:%s: accept: %w", l.path, err)
	}
	stop = context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	st, err := ReadState(c)
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("cpr channel unix:%s: %w", l.path, err)
	}
	return st, c, nil
}

// ReadState reads one state from c. On error every descriptor received
// is closed.
func ReadState(c *net.UnixConn) (*State, error) {
	src := &connSource{c: c}
	entries, err := decode(src)
	if err != nil {
		for _, e := range entries {
			unix.Close(e.FD)
		}
		src.closeQueued()
		return nil, err
	}
	if src.err != nil {
		return nil, src.err
	}
	if len(src.fds) > 0 {
		src.closeQueued()
		return nil, fmt.Errorf("%w: descriptors without an entry", ErrBadState)
	}
	return NewState(entries), nil
}

// connSink writes to a unix connection, descriptors by SCM_RIGHTS.
type connSink struct{ c *net.UnixConn }

func (s *connSink) Write(p []byte) (int, error) { return s.c.Write(p) }

func (s *connSink) WriteFD(fd int) error {
	n, oobn, err := s.c.WriteMsgUnix([]byte{fdMarker}, unix.UnixRights(fd), nil)
	if err != nil {
		return err
	}
	if n != 1 || oobn == 0 {
		return fmt.Errorf("short write (%d data, %d control bytes)", n, oobn)
	}
	return nil
}

// connSource reads a unix connection with recvmsg, queueing descriptors
// (received close-on-exec) in arrival order.
type connSource struct {
	c   *net.UnixConn
	buf [4096]byte
	r   []byte // unread bytes of buf
	fds []int
	err error // a control-message problem, reported after decoding
}

func (s *connSource) Read(p []byte) (int, error) {
	if len(s.r) == 0 {
		if err := s.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.r)
	s.r = s.r[n:]
	return n, nil
}

func (s *connSource) fill() error {
	rc, err := s.c.SyscallConn()
	if err != nil {
		return err
	}
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerRead))
	var n, oobn, flags int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), s.buf[:], oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			s.err = fmt.Errorf("%w: control message: %w", ErrBadState, perr)
		}
		for _, m := range msgs {
			fds, ferr := unix.ParseUnixRights(&m)
			if ferr != nil {
				continue // not SCM_RIGHTS (credentials): nothing to own
			}
			s.fds = append(s.fds, fds...)
		}
	}
	if flags&unix.MSG_CTRUNC != 0 && s.err == nil {
		s.err = fmt.Errorf("%w: descriptors were truncated (more than %d in one read)", ErrBadState, maxFDsPerRead)
	}
	if err != nil {
		return err
	}
	if n == 0 {
		return io.EOF
	}
	s.r = s.buf[:n]
	return nil
}

func (s *connSource) TakeFD() (int, bool) {
	if len(s.fds) == 0 {
		return -1, false
	}
	fd := s.fds[0]
	s.fds = s.fds[1:]
	return fd, true
}

func (s *connSource) closeQueued() {
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
}
