package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/machine"
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
	opts           machine.BackendOptions
}

func newConsole(stdin io.Reader, stdout, stderr io.Writer) *console {
	return &console{stdin: stdin, stdout: stdout, stderr: stderr}
}

// open implements machine.BackendOpener: "stdio" is the terminal (with the
// C-a escape); everything else goes to machine.OpenBackend.
func (c *console) open(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
	if spec != "stdio" {
		return machine.OpenBackend(device, name, spec, kind, c.opts)
	}
	if kind != abi.BackendChar {
		return nil, fmt.Errorf("device %s backend %q: stdio is a char backend", device, name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.usesStdio {
		return nil, fmt.Errorf("device %s backend %q: stdio is already used by another device", device, name)
	}
	c.usesStdio = true
	in := &escapeReader{r: c.stdin, help: c.stdout, onQuit: c.quit}
	return backend.NewIO(device+"."+name, in, c.stdout), nil
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
