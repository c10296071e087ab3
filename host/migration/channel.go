package migration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Transport code: turning a Channel into a connection. The precopy loop and
// the incoming side see only net.Conn; cpr-transfer's channel can reuse
// dial and listen for its own unix socket.

// socketChannel reports whether a channel is a stream socket (unix, tcp or
// an inherited fd) rather than a file.
func socketChannel(ch Channel) bool {
	switch ch.Transport {
	case "unix", "tcp", "fd":
		return true
	}
	return false
}

// fdConn wraps an inherited descriptor ("fd:N") as a connection. Named
// descriptors (QEMU's getfd) are not supported.
func fdConn(ch Channel) (net.Conn, error) {
	n, err := strconv.Atoi(ch.FD)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%s: only numeric descriptors are supported", ch)
	}
	f := os.NewFile(uintptr(n), "migration-fd-"+ch.FD)
	if f == nil {
		return nil, fmt.Errorf("%s: bad descriptor", ch)
	}
	defer f.Close() // FileConn dups it
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ch, err)
	}
	return c, nil
}

// dial connects to the destination of ch. The kernel's default socket
// buffers are kept on purpose: deeper ones (8 MiB was tried) hide the
// receiver's speed from the sender, whose downtime estimate then comes out
// too low when the last pass is about the size of the buffers.
func dial(ctx context.Context, ch Channel) (net.Conn, error) {
	var d net.Dialer
	d.Timeout = 30 * time.Second
	switch ch.Transport {
	case "unix":
		c, err := d.DialContext(ctx, "unix", ch.Path)
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", ch, err)
		}
		return c, nil
	case "tcp":
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ch.Host, ch.Port))
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", ch, err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
			tc.SetKeepAlivePeriod(time.Second)
		}
		return c, nil
	case "fd":
		return fdConn(ch)
	}
	return nil, fmt.Errorf("%s is not a socket channel", ch)
}

// listener accepts the one connection of an incoming migration.
type listener interface {
	accept(ctx context.Context) (net.Conn, error)
	close() error
}

type netListener struct {
	ln   net.Listener
	path string // unix socket file to remove
}

func (l *netListener) accept(ctx context.Context) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { l.ln.Close() })
	defer stop()
	c, err := l.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(time.Second)
	}
	return c, nil
}

func (l *netListener) close() error {
	err := l.ln.Close()
	if l.path != "" {
		os.Remove(l.path)
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// fdListener is an inherited, already connected descriptor.
type fdListener struct{ ch Channel }

func (l fdListener) accept(ctx context.Context) (net.Conn, error) { return fdConn(l.ch) }
func (l fdListener) close() error                                 { return nil }

// listen opens ch for the incoming side: a unix socket file (replacing a
// stale one), a TCP port, or an inherited descriptor.
func listen(ch Channel) (listener, error) {
	switch ch.Transport {
	case "unix":
		if st, err := os.Lstat(ch.Path); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(ch.Path)
		}
		ln, err := net.Listen("unix", ch.Path)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", ch, err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		return &netListener{ln: ln, path: ch.Path}, nil
	case "tcp":
		ln, err := net.Listen("tcp", net.JoinHostPort(ch.Host, ch.Port))
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", ch, err)
		}
		return &netListener{ln: ln}, nil
	case "fd":
		return fdListener{ch}, nil
	}
	return nil, fmt.Errorf("%s is not a socket channel", ch)
}
