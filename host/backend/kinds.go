package backend

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// NewIO returns a backend that reads input from r (nil: none) and writes
// output to w (nil: discard). Close closes r and w when they are
// io.Closers, which ends a read blocked in r (e.g. an os.Pipe).
func NewIO(name string, r io.Reader, w io.Writer) *Char {
	c := newChar(name)
	c.sink = w
	if cl, ok := w.(io.Closer); ok {
		c.closers = append(c.closers, cl)
	}
	if cl, ok := r.(io.Closer); ok && any(r) != any(w) {
		c.closers = append(c.closers, cl)
	}
	c.start(r)
	return c
}

// NewStdio returns a backend on the process's terminal or pipes: input
// from in, output to out. Close does not close them; a read blocked on in
// is interrupted with a read deadline where in supports one. Raw terminal
// mode is the caller's job.
func NewStdio(name string, in, out *os.File) *Char {
	c := newChar(name)
	if out != nil {
		c.sink = out
	}
	if in != nil {
		c.closers = append(c.closers, closerFunc(func() error {
			if err := in.SetReadDeadline(time.Now()); err != nil && !errors.Is(err, os.ErrNoDeadline) {
				return err
			}
			return nil
		}))
		c.afterClose = append(c.afterClose, func() { _ = in.SetReadDeadline(time.Time{}) })
		c.start(in)
	} else {
		c.start(nil)
	}
	return c
}

// NewFile returns an output-only backend appending to the file at path
// (created 0600 if missing).
func NewFile(name, path string) (*Char, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	c := newChar(name)
	c.sink = f
	c.fd = int(f.Fd())
	c.closers = append(c.closers, f)
	c.start(nil)
	return c, nil
}

// NewSocket returns a backend listening on a unix socket at path. One
// client at a time is connected (later ones are refused until it leaves);
// its input is the backend's input and output goes to it; without a client
// output is discarded. A stale socket file at path is replaced; any other
// file is an error.
func NewSocket(name, path string) (*Char, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("backend %s: %s exists and is not a socket", name, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("backend %s: remove stale socket: %w", name, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	// Close removes the socket file only while it is still this one: a
	// successor (cpr-transfer) may have bound its own at the same path.
	l.SetUnlinkOnClose(false)
	var st unix.Stat_t
	unix.Stat(path, &st)
	c := newChar(name)
	if rc, err := l.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { c.fd = int(fd) })
	}
	s := &socket{c: c, l: l, path: path, dev: st.Dev, ino: st.Ino}
	c.closers = append(c.closers, s)
	c.wg.Add(2)
	go c.writeLoop()
	go s.acceptLoop()
	return c, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// start runs the writer and, if r is not nil, the reader goroutine.
func (c *Char) start(r io.Reader) {
	c.wg.Add(1)
	go c.writeLoop()
	if r == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.readFrom(r)
		c.mu.Lock()
		c.hup = !c.closed
		c.mu.Unlock()
		c.signal()
	}()
}

type socket struct {
	c        *Char
	l        *net.UnixListener
	path     string
	dev, ino uint64 // the socket file this listener bound
}

func (s *socket) acceptLoop() {
	c := s.c
	defer c.wg.Done()
	for {
		conn, err := s.l.Accept()
		if err != nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE; retry
			continue
		}
		c.mu.Lock()
		if c.closed || c.sink != nil {
			c.mu.Unlock()
			conn.Close() // one client at a time
			continue
		}
		c.sink = conn
		c.cond.Broadcast()
		c.mu.Unlock()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			_ = c.readFrom(conn)
			c.mu.Lock()
			if c.sink == conn {
				c.sink = nil
			}
			c.mu.Unlock()
			conn.Close()
		}()
	}
}

// Close stops accepting, disconnects the client and removes the socket.
func (s *socket) Close() error {
	c := s.c
	err := s.l.Close()
	var st unix.Stat_t
	if unix.Stat(s.path, &st) == nil && st.Dev == s.dev && st.Ino == s.ino {
		os.Remove(s.path)
	}
	c.mu.Lock()
	if conn, ok := c.sink.(net.Conn); ok {
		conn.Close()
	}
	c.sink = nil
	c.mu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
