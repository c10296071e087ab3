// Package harness runs wasmvmm end to end for tests and benchmarks: it
// builds the binary, the plugins and the test guest once per test process,
// starts VMs as real processes, and reads their serial output.
package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"wasmvmm/host/machine/config"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/machines"
	"wasmvmm/testsuite/guest"
)

// RepoRoot returns the source tree's root.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Require fails the test under CI=true, and skips it elsewhere, when a
// prerequisite is missing.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a prerequisite is missing: %s", why)
	}
	t.Skipf("skipped: %s", why)
}

// RequireKVM requires a usable /dev/kvm.
func RequireKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	Require(t, err == nil, fmt.Sprintf("/dev/kvm: %v", err))
}

// Build is what one test process built.
type Build struct {
	Binary    string // wasmvmm
	PluginDir string // built .wasm plugins
	Guest     string // test guest ELF
}

var (
	buildOnce sync.Once
	built     Build
	buildErr  error
)

// Artifacts builds wasmvmm, the plugins and the test guest (once per
// process) and returns where they are.
func Artifacts(t testing.TB) Build {
	t.Helper()
	buildOnce.Do(func() {
		root := RepoRoot()
		dir, err := os.MkdirTemp("", "wasmvmm-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		built.Binary = filepath.Join(dir, "wasmvmm")
		cmd := exec.Command("go", "build", "-o", built.Binary, "./host/cmd/wasmvmm")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build wasmvmm: %v\n%s", err, out)
			return
		}
		if built.PluginDir, err = pluginbuild.DefaultOutDir(root); err != nil {
			buildErr = err
			return
		}
		// Build the plugins the machine types place (not every directory
		// under plugins/, some of which may be work in progress).
		if _, err := pluginbuild.Build(context.Background(), root, built.PluginDir, machinePlugins()...); err != nil {
			buildErr = fmt.Errorf("build plugins: %w", err)
			return
		}
		built.Guest, buildErr = guest.Build(root)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// VM is a running wasmvmm process.
type VM struct {
	Cmd    *exec.Cmd
	Serial string // file receiving the serial console
	Stderr *SyncBuffer
	done   chan struct{}
	err    error
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs `wasmvmm args...` with the serial console on a file in dir.
// The process is killed when the test ends.
func Start(t testing.TB, b Build, dir string, args ...string) *VM {
	t.Helper()
	vm := &VM{Serial: filepath.Join(dir, fmt.Sprintf("serial-%d.log", time.Now().UnixNano())), Stderr: &SyncBuffer{}, done: make(chan struct{})}
	full := append(append([]string{}, args...), "--serial", "file:"+vm.Serial, "--plugins", b.PluginDir)
	vm.Cmd = exec.Command(b.Binary, full...)
	vm.Cmd.Stderr = vm.Stderr
	vm.Cmd.Stdout = vm.Stderr
	if err := vm.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		vm.err = vm.Cmd.Wait()
		close(vm.done)
	}()
	t.Cleanup(func() {
		vm.Cmd.Process.Kill()
		<-vm.done
		if t.Failed() {
			t.Logf("wasmvmm stderr:\n%s\nserial:\n%s", vm.Stderr.String(), vm.SerialText())
		}
	})
	return vm
}

// SerialText returns what the guest printed so far.
func (vm *VM) SerialText() string {
	b, _ := os.ReadFile(vm.Serial)
	return string(b)
}

// WaitSerial waits until the serial output contains marker.
func (vm *VM) WaitSerial(t testing.TB, marker string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(vm.SerialText(), marker) {
		select {
		case <-vm.done:
			t.Fatalf("wasmvmm exited (%v) before %q appeared", vm.err, marker)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the serial console within %v", marker, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (vm *VM) Wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-vm.done:
	case <-time.After(d):
		t.Fatalf("wasmvmm still running after %v", d)
	}
	if vm.Cmd.ProcessState == nil {
		return -1
	}
	return vm.Cmd.ProcessState.ExitCode()
}

// Run runs wasmvmm to completion and returns its exit code and output.
func Run(t testing.TB, b Build, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.Binary, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run wasmvmm: %v", err)
	}
	return 0, string(out)
}

// machinePlugins lists the plugins the built-in machine types use.
func machinePlugins() []string {
	c, err := config.LoadCatalogFS(machines.FS(), "machines")
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range c.Names() {
		mt, _ := c.Get(n)
		for _, d := range mt.Devices {
			if !seen[d.Plugin] {
				seen[d.Plugin] = true
				out = append(out, d.Plugin)
			}
		}
	}
	return out
}
