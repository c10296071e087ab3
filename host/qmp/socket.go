package qmp

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// maxSocketPath is the longest path a unix socket address can hold
// (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// socketListener is a listener plus the socket file it owns.
type socketListener struct {
	l    net.Listener
	path string      // socket file to remove on close; empty if not ours
	info os.FileInfo // identity of that file, to avoid removing a successor
}

func (sl *socketListener) close() error {
	err := sl.l.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if sl.path != "" {
		if fi, statErr := os.Lstat(sl.path); statErr == nil && os.SameFile(fi, sl.info) {
			if rmErr := os.Remove(sl.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
				err = errors.Join(err, fmt.Errorf("qmp: remove socket %s: %w", sl.path, rmErr))
			}
		}
	}
	return err
}

// listenUnix creates a listening unix socket at path whose file has mode
// 0600 before any client can reach it: the socket is bound inside a fresh
// private directory (mode 0700), chmod-ed, then renamed into place. An
// existing socket at path is replaced only if nothing accepts on it.
func listenUnix(path string) (*socketListener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("qmp: listen %s: path longer than %d bytes", path, maxSocketPath)
	}
	if err := checkStale(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	tmpDir, err := os.MkdirTemp(dir, ".qmp")
	if err != nil {
		return nil, fmt.Errorf("qmp: listen %s: private directory: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmpPath := filepath.Join(tmpDir, "s")
	if len(tmpPath) > maxSocketPath {
		// The private directory makes the name too long for sun_path: bind
		// at the final path directly. The window until chmod is covered by
		// the process umask (a socket needs write permission to connect).
		return bindAndChmod(path, path)
	}
	sl, err := bindAndChmod(tmpPath, path)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmpPath, path); err != nil {
		sl.l.Close()
		return nil, fmt.Errorf("qmp: listen %s: move socket into place: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		sl.l.Close()
		return nil, fmt.Errorf("qmp: listen %s: %w", path, err)
	}
	sl.path, sl.info = path, fi
	return sl, nil
}

// bindAndChmod binds a unix socket at bindPath and sets its mode to 0600.
// finalPath is only used in messages.
func bindAndChmod(bindPath, finalPath string) (*socketListener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qmp: listen %s: %w", finalPath, err)
	}
	// We remove the file ourselves: after a rename Go's unlink would target
	// the wrong name.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(bindPath, 0o600); err != nil {
		l.Close()
		os.Remove(bindPath)
		return nil, fmt.Errorf("qmp: listen %s: chmod 0600: %w", finalPath, err)
	}
	fi, err := os.Lstat(bindPath)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("qmp: listen %s: %w", finalPath, err)
	}
	return &socketListener{l: l, path: bindPath, info: fi}, nil
}

// checkStale accepts a missing path or a socket nobody listens on (which
// it removes), and refuses anything else.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("qmp: listen %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("qmp: listen %s: refusing to replace a file that is not a socket (%s)", path, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("qmp: listen %s: a server is already accepting on this socket", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("qmp: listen %s: cannot tell whether the existing socket is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("qmp: listen %s: remove stale socket: %w", path, err)
	}
	return nil
}
