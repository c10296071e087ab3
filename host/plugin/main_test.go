package plugin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
)

// testPlugins are the plugins under testdata/plugins, built once per test
// binary run by TestMain into pluginDir.
var testPlugins = []string{"echo", "trap", "loop", "hog", "abi2", "frobnicate", "noreset", "badvmstate", "oob", "badsig"}

var (
	pluginDir string // built .wasm files
	cacheRoot string // compilation cache shared by the tests
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "wasmvmm-plugin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginDir = filepath.Join(dir, "wasm")
	cacheRoot = filepath.Join(dir, "cache")
	if err := buildPlugins(pluginDir); err != nil {
		fmt.Fprintln(os.Stderr, "building test plugins:", err)
		return 1
	}
	return m.Run()
}

func buildPlugins(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go tool builds the test plugins: %w", err)
	}
	for _, p := range testPlugins {
		cmd := exec.Command(goTool, "build", "-buildmode=c-shared", "-o", filepath.Join(out, p+".wasm"), "./testdata/plugins/"+p)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", p, err, b)
		}
	}
	return nil
}

func pluginPath(name string) string { return filepath.Join(pluginDir, name+".wasm") }

// testLogger collects log lines so tests can assert "logged once".
type testLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

func (l *testLogger) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

func newTestRuntime(t testing.TB, cfg Config) (*Runtime, *testLogger) {
	t.Helper()
	tl := &testLogger{}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: tl, Level: hclog.Debug})
	}
	if cfg.CacheDir == "" && !cfg.NoCache {
		cfg.CacheDir = cacheRoot
	}
	rt, err := NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	return rt, tl
}

// testHost is a Host over real guest RAM, a running VMClock and real
// backends, recording interrupt levels.
type testHost struct {
	mem      *guestmem.Memory
	clock    *VMClock
	mu       sync.Mutex
	irqs     map[int]bool
	irqEdges int
	backends map[string]Backend
}

func newTestHost(t testing.TB, ramSize uint64) *testHost {
	t.Helper()
	blk, err := guestmem.Alloc("ram", 0, ramSize, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := guestmem.New(blk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return &testHost{mem: mem, clock: NewVMClock(true), irqs: map[int]bool{}, backends: map[string]Backend{}}
}

func (h *testHost) Memory() *guestmem.Memory { return h.mem }
func (h *testHost) Clock() Clock             { return h.clock }

func (h *testHost) SetIRQ(line int, level bool) error {
	if line != 0 {
		return fmt.Errorf("device has one interrupt line, not %d", line+1)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if level && !h.irqs[line] {
		h.irqEdges++
	}
	h.irqs[line] = level
	return nil
}

func (h *testHost) irq(line int) (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.irqs[line], h.irqEdges
}

func (h *testHost) Backend(kind abi.BackendKind, name string) (Backend, error) {
	if b, ok := h.backends[name]; ok {
		return b, nil
	}
	return nil, ErrNoBackend
}

// instantiate loads a test plugin and creates an instance of it.
func instantiate(t testing.TB, rt *Runtime, plugin string, h Host) *Instance {
	t.Helper()
	m, err := rt.Load(context.Background(), pluginPath(plugin))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: plugin + "0", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	return inst
}
