package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/plugin"
)

// console opens the char backends named in configurations and owns the
// terminal when a device uses stdio.
type console struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	mu             sync.Mutex
	onQuit         func()
	usesStdio      bool
}

func newConsole(stdin io.Reader, stdout, stderr io.Writer) *console {
	return &console{stdin: stdin, stdout: stdout, stderr: stderr}
}

// open implements machine.BackendOpener for char backends:
// stdio, null, file:PATH (output only), unix:PATH (a listening socket).
func (c *console) open(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
	if kind != abi.BackendChar {
		return nil, fmt.Errorf("device %s backend %q = %q: only char backends (stdio, null, file:, unix:) are configurable yet", device, name, spec)
	}
	label := device + "." + name
	switch {
	case spec == "stdio":
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.usesStdio {
			return nil, fmt.Errorf("device %s backend %q: stdio is already used by another device", device, name)
		}
		c.usesStdio = true
		in := &escapeReader{r: c.stdin, help: c.stdout, onQuit: c.quit}
		return backend.NewIO(label, in, c.stdout), nil
	case spec == "null":
		return backend.NewIO(label, nil, io.Discard), nil
	case strings.HasPrefix(spec, "file:"):
		return backend.NewFile(label, strings.TrimPrefix(spec, "file:"))
	case strings.HasPrefix(spec, "unix:"):
		return backend.NewSocket(label, strings.TrimPrefix(spec, "unix:"))
	}
	return nil, fmt.Errorf("device %s backend %q: unknown spec %q (want stdio, null, file:PATH or unix:PATH)", device, name, spec)
}

func (c *console) quit() {
	c.mu.Lock()
	f := c.onQuit
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

// start puts the terminal in raw mode when a device uses stdio on a
// terminal, and arms Ctrl-A x. The returned function restores the terminal.
func (c *console) start(onQuit func()) (func(), error) {
	c.mu.Lock()
	c.onQuit = onQuit
	uses := c.usesStdio
	c.mu.Unlock()
	f, ok := c.stdin.(*os.File)
	if !uses || !ok || !isTerminal(f) {
		return func() {}, nil
	}
	restore, err := rawTerminal(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	fmt.Fprint(c.stderr, "wasmvmm: console on this terminal; C-a x quits, C-a h helps\r\n")
	return restore, nil
}
