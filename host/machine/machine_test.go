package machine

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/testsuite/dirtycheck"

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

const (
	dirtyStart = 16 << 20
	dirtyEnd   = 24 << 20
)

var dirtierCmdline = fmt.Sprintf("workload=dirtier dirty_start=%#x dirty_end=%#x", dirtyStart, dirtyEnd)

// passCount returns how many "DIRTY pass=" markers the guest printed.
func passCount(s string) int { return strings.Count(s, "DIRTY pass=") }

func waitPasses(t *testing.T, sink *thrSink, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for passCount(sink.String()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d dirtier passes in 20s; serial:\n%s", n, sink.String())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDirtierPauseResume(t *testing.T) {
	m, sink := newTestMachine(t, dirtierCmdline, 64<<20)
	var events []string
	var resumedAt time.Time
	var mu sync.Mutex
	m.OnEvent(func(e Event) {
		mu.Lock()
		events = append(events, e.Name)
		if e.Name == "RESUME" {
			resumedAt = e.At
		}
		mu.Unlock()
	})
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, sink, 3)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	p1, err := dirtycheck.Check(m.Memory(), dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatalf("memory pattern while paused: %v", err)
	}
	if p1.Value < 3 {
		t.Fatalf("dirtier counters %+v after 3 passes", p1)
	}
	clock := m.Clock.Now()
	time.Sleep(50 * time.Millisecond)
	p2, err := dirtycheck.Check(m.Memory(), dirtyStart, dirtyEnd)
	if err != nil || p2 != p1 {
		t.Fatalf("memory changed while paused: %+v -> %+v (%v)", p1, p2, err)
	}
	if m.Clock.Now() != clock {
		t.Fatal("the VM clock ran while paused")
	}
	if st, _ := m.State(); st != StatePaused {
		t.Fatalf("state %s", st)
	}
	n := passCount(sink.String())
	before := time.Now()
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	waitPasses(t, sink, n+2)
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(events, ",") != "RESUME,STOP,RESUME" {
		t.Fatalf("events %v", events)
	}
	// RESUME carries the moment the vCPUs were let go, as QEMU's comes
	// before its vCPUs run: inside the Resume call.
	if resumedAt.Before(before) || resumedAt.After(after) {
		t.Fatalf("RESUME at %v, outside the Resume call [%v, %v]", resumedAt, before, after)
	}
}

func TestSystemReset(t *testing.T) {
	m, sink := newTestMachine(t, "workload=idle", 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "WASMVMM-GUEST READY", 10*time.Second)
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(sink.String(), "WASMVMM-GUEST READY") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("guest did not boot again after reset:\n%s", sink.String())
		}
		time.Sleep(time.Millisecond)
	}
	if st, _ := m.State(); st != StateRunning {
		t.Fatalf("state after reset %s", st)
	}
}

func TestGuestCrashIsInternalError(t *testing.T) {
	m, sink := newTestMachine(t, "workload=crash", 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("crashing guest still running; serial:\n%s", sink.String())
	}
	st, reason := m.State()
	if st != StateInternalError || m.ExitCode() == 0 {
		t.Fatalf("state %s (%s), exit code %d", st, reason, m.ExitCode())
	}
	t.Logf("internal error: %s", reason)
}

func TestGuestShutdown(t *testing.T) {
	m, sink := newTestMachine(t, "workload=shutdown", 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("guest did not power off; serial:\n%s", sink.String())
	}
	if st, _ := m.State(); st != StateShutdown || m.ExitCode() != 0 {
		t.Fatalf("state %s exit %d", st, m.ExitCode())
	}
}

// TestStateIntoFreshVM is the core of migration: the vCPU and VM state of a
// paused dirtier, loaded into a new VM over the same RAM, continues exactly.
func TestStateIntoFreshVM(t *testing.T) {
	src, sink := newTestMachine(t, dirtierCmdline, 64<<20)
	if err := src.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, sink, 2)
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	st, err := src.SaveCPUState()
	if err != nil {
		t.Fatal(err)
	}
	before, err := dirtycheck.Check(src.Memory(), dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatal(err)
	}
	sink2 := &thrSink{}
	dst, err := New(Config{
		VM:          &config.VM{Machine: config.MachineSection{Memory: 64 << 20, CPUs: 1}},
		MachineType: &config.MachineType{Name: "test"},
		NoBoot:      true,
		Memory:      src.Memory(),
		Devices: func(m *Machine) ([]Device, error) {
			return nil, m.PIO.Add(0x3f8, 8, "thr-sink", sink2, 0)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Start(true); err != nil {
		t.Fatal(err)
	}
	if err := dst.RestoreCPUState(st); err != nil {
		t.Fatal(err)
	}
	after, err := dirtycheck.Check(dst.Memory(), dirtyStart, dirtyEnd)
	if err != nil || after != before {
		t.Fatalf("pattern changed by restoring: %+v -> %+v (%v)", before, after, err)
	}
	if err := dst.Resume(); err != nil {
		t.Fatal(err)
	}
	last := passCount(sink.String())
	waitPasses(t, sink2, 2)
	// The serial byte stream continues exactly: source output followed by
	// destination output reads as one stream with consecutive pass markers
	// (the source may have stopped in the middle of a line).
	stream := sink.String() + sink2.String()
	for p := last + 1; p <= last+2; p++ {
		if want := fmt.Sprintf("\nDIRTY pass=%d\n", p); !strings.Contains(stream, want) {
			t.Fatalf("stream lacks %q (source printed %d passes):\nsource tail %q\ndestination %q", want, last, tail(sink.String()), sink2.String())
		}
	}
	if strings.Contains(sink2.String(), "WASMVMM-GUEST BOOT") {
		t.Fatal("the destination rebooted the guest instead of continuing")
	}
}

func tail(s string) string {
	if len(s) > 64 {
		return s[len(s)-64:]
	}
	return s
}

// TestLegacyResetPorts: a write of the reset command to port 0xcf9 or to
// the i8042 command port reboots the guest, as the guest itself would do it.
func TestLegacyResetPorts(t *testing.T) {
	for _, c := range []struct {
		name string
		port uint64
		val  uint64
	}{{"0xcf9", portResetCtl, resetCtlSystem | resetCtlCPU}, {"i8042", portI8042Cmd, i8042CmdReset}} {
		t.Run(c.name, func(t *testing.T) {
			m, sink := newTestMachine(t, "workload=idle", 64<<20)
			if err := m.Start(false); err != nil {
				t.Fatal(err)
			}
			sink.waitFor(t, "WASMVMM-GUEST READY", 10*time.Second)
			if !m.PIO.Write(c.port, 1, c.val) {
				t.Fatalf("port %#x has no handler", c.port)
			}
			deadline := time.Now().Add(10 * time.Second)
			for strings.Count(sink.String(), "WASMVMM-GUEST READY") < 2 {
				if time.Now().After(deadline) {
					t.Fatalf("no reboot after the reset write:\n%s", sink.String())
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	// Port 0x80 swallows POST codes; unassigned ports read as all ones.
	m, _ := newTestMachine(t, "workload=idle", 64<<20)
	if !m.PIO.Write(portPOST, 1, 0x55) {
		t.Fatal("port 0x80 has no sink")
	}
	if _, ok := m.PIO.Read(0x1234, 1); ok {
		t.Fatal("an unassigned port has a handler")
	}
}
