package machine

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/host/machine/config"
)

// requireKVM fails under CI and skips elsewhere when /dev/kvm is missing.
func requireKVM(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and /dev/kvm is unavailable: %v", err)
		}
		t.Skipf("no /dev/kvm: %v", err)
	}
}

func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// buildGuest builds the test guest with make and returns its path.
func buildGuest(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "testsuite", "guest")
	out, err := exec.Command("make", "-s", "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("build test guest: %v\n%s", err, out)
	}
	return filepath.Join(dir, "build", "guest.elf")
}

// thrSink records what the guest writes to a UART's THR and answers LSR
// reads with "transmitter empty": a native Go handler on the PIO bus.
type thrSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *thrSink) Read(region int, off uint64, size int) uint64 {
	if off == 5 {
		return 0x60
	}
	return 0
}

func (s *thrSink) Write(region int, off uint64, size int, v uint64) {
	if off == 0 {
		s.mu.Lock()
		s.buf.WriteByte(byte(v))
		s.mu.Unlock()
	}
}

func (s *thrSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *thrSink) waitFor(t testing.TB, marker string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(s.String(), marker) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the serial port within %v; got:\n%s", marker, d, s.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func newTestMachine(t testing.TB, cmdline string, mem config.Size) (*Machine, *thrSink) {
	t.Helper()
	requireKVM(t)
	kernel := buildGuest(t)
	sink := &thrSink{}
	m, err := New(Config{
		VM: &config.VM{
			Machine: config.MachineSection{Memory: mem, CPUs: 1},
			Boot:    config.BootSection{Kernel: kernel, Cmdline: cmdline},
		},
		MachineType: &config.MachineType{Name: "test"},
		Logger:      hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
		Devices: func(m *Machine) ([]Device, error) {
			return nil, m.PIO.Add(0x3f8, 8, "thr-sink", sink, 0)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, sink
}

func TestBootTestGuest(t *testing.T) {
	m, sink := newTestMachine(t, "workload=idle", 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "WASMVMM-GUEST READY", 10*time.Second)
	if st, _ := m.State(); st != StateRunning {
		t.Fatalf("state %s", st)
	}
}
