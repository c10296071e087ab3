package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// escapeByte starts a console escape sequence, as QEMU's Ctrl-A.
const escapeByte = 0x01

// rawTerminal puts fd into raw mode and returns a function that restores it.
// It is a no-op (restore does nothing) when fd is not a terminal.
func rawTerminal(fd int) (restore func(), err error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}, nil // not a terminal
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("raw terminal: %w", err)
	}
	var once sync.Once
	return func() { once.Do(func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }) }, nil
}

// escapeReader passes console input to the guest and interprets Ctrl-A
// sequences: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h prints
// help.
type escapeReader struct {
	r       io.Reader
	help    io.Writer
	onQuit  func()
	pending bool
}

func (e *escapeReader) Read(p []byte) (int, error) {
	for {
		n, err := e.r.Read(p)
		out := p[:0]
		for _, b := range p[:n] {
			if e.pending {
				e.pending = false
				switch b {
				case 'x', 'X':
					e.onQuit()
					return len(out), io.EOF
				case escapeByte:
					out = append(out, escapeByte)
				case 'h', 'H', '?':
					fmt.Fprint(e.help, "\r\nC-a x    quit wasmvmm\r\nC-a C-a  send C-a to the guest\r\nC-a h    this help\r\n")
				}
				continue
			}
			if b == escapeByte {
				e.pending = true
				continue
			}
			out = append(out, b)
		}
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
