// Package plugintest is what host-side tests of a device plugin share: they
// build the plugin of their own package for wasip1, load it into the real
// host runtime, and play the guest through its MMIO calls on real guest RAM.
package plugintest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
)

// Main builds the plugin in the test's package directory into a temporary
// directory, sets *wasmPath to the module and *cacheRoot to a compilation
// cache directory beside it, runs the tests and removes the directory. Use
// it as: func TestMain(m *testing.M) { os.Exit(plugintest.Main(m, "name", &wasmPath, &cacheRoot)) }
func Main(m *testing.M, name string, wasmPath, cacheRoot *string) int {
	dir, err := os.MkdirTemp("", "wasmvmm-"+name+"-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*wasmPath = filepath.Join(dir, name+".wasm")
	*cacheRoot = filepath.Join(dir, "cache")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(goTool, "build", "-buildmode=c-shared", "-o", *wasmPath, ".")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the plugin %s: %v\n%s", name, err, out)
		return 1
	}
	return m.Run()
}

// Bus is a plugin instance's first MMIO region as a virtiotest.Bus.
type Bus struct{ I *plugin.Instance }

// Read reads a register.
func (b Bus) Read(off uint64, size int) uint64 { return b.I.MMIORead(0, off, size) }

// Write writes a register.
func (b Bus) Write(off uint64, size int, v uint64) { b.I.MMIOWrite(0, off, size, v) }

// RAM is guest memory as a virtiotest.RAM.
type RAM struct{ M *guestmem.Memory }

// Read copies guest memory at gpa into p.
func (r RAM) Read(gpa uint64, p []byte) error {
	_, err := r.M.ReadAt(p, int64(gpa))
	return err
}

// Write copies p into guest memory at gpa (marking the pages dirty).
func (r RAM) Write(gpa uint64, p []byte) error {
	_, err := r.M.WriteAt(p, int64(gpa))
	return err
}
