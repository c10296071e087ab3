//go:build !wasip1

package sdk_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
)

type exampleHost struct {
	clock  *plugin.VMClock
	mu     sync.Mutex
	level  bool
	raises int
}

func (h *exampleHost) Memory() *guestmem.Memory { return nil }
func (h *exampleHost) Clock() plugin.Clock      { return h.clock }
func (h *exampleHost) Backend(abi.BackendKind, string) (plugin.Backend, error) {
	return nil, plugin.ErrNoBackend
}

func (h *exampleHost) SetIRQ(line int, level bool) error {
	h.mu.Lock()
	if level && !h.level {
		h.raises++
	}
	h.level = level
	h.mu.Unlock()
	return nil
}

func (h *exampleHost) raiseCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.raises
}

func (h *exampleHost) irq() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.level
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// buildExample turns the package example (example_test.go) into a plugin:
// the same source as package main, with Example as its init function, built
// through a go build overlay so the source tree is not touched.
func buildExample(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	root, err := pluginbuild.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	code := strings.Replace(string(src), "package sdk_test", "package main", 1)
	code = strings.Replace(code, "func Example() {", "func init() {", 1)
	code += "\nfunc main() {}\n"
	tmp := t.TempDir()
	mainGo := filepath.Join(tmp, "main.go")
	if err := os.WriteFile(mainGo, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	pkgDir := filepath.Join(root, "sdk", "internal", "exampleplugin")
	ov, _ := json.Marshal(map[string]any{"Replace": map[string]string{filepath.Join(pkgDir, "main.go"): mainGo}})
	ovPath := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(ovPath, ov, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "mailbox.wasm")
	cmd := exec.Command("go", "build", "-overlay", ovPath, "-buildmode=c-shared", "-o", out, "./sdk/internal/exampleplugin")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the example plugin: %v\n%s", err, b)
	}
	return out
}

// TestExamplePlugin runs the package example as a real plugin under
// host/plugin: properties, realize, MMIO, interrupt, vmstate schema, and
// the SDK's answers for the interfaces the example does not implement.
func TestExamplePlugin(t *testing.T) {
	path := buildExample(t)
	ctx := context.Background()
	rt, err := plugin.NewRuntime(ctx, plugin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	mod, err := rt.Load(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	host := &exampleHost{clock: plugin.NewVMClock(true)}
	newInstance := func() *plugin.Instance {
		inst, err := mod.Instantiate(ctx, plugin.InstanceConfig{Name: "mbox0", Host: host,
			Logger: hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})})
		if err != nil {
			t.Fatal(err)
		}
		return inst
	}
	inst := newInstance()
	defer inst.Close()

	info := inst.Info()
	if info.Name != "mailbox" || info.Version != "1.0.0" || len(info.Properties) != 2 {
		t.Fatalf("info: %+v", info)
	}
	if p := info.Properties[0]; p.Name != "irq-on-write" || p.Type != abi.PropBool || p.DefaultInt != 1 {
		t.Fatalf("property 0: %+v", p)
	}
	if p := info.Properties[1]; p.Name != "size" || p.Type != abi.PropU32 || p.DefaultInt != 8 {
		t.Fatalf("property 1: %+v", p)
	}
	if err := inst.Realize(plugin.PropertyValues{"size": 4}); err != nil {
		t.Fatalf("realize: %v\n%s", err, logs)
	}
	if r := inst.Regions(); len(r) != 1 || r[0].Kind != abi.RegionMMIO || r[0].Size != 0x1000 {
		t.Fatalf("regions: %+v", r)
	}
	secs := inst.Sections()
	if len(secs) != 1 || secs[0].Name != "mailbox" || secs[0].VersionID != 2 || secs[0].MinimumVersionID != 1 {
		t.Fatalf("sections: %+v", secs)
	}
	f := secs[0].Fields
	if len(f) != 3 || f[0].Name != "data" || f[0].Type != abi.FieldBuffer || f[0].Size != 8 ||
		f[1].Name != "pending" || f[1].Type != abi.FieldBool || f[1].Offset != f[0].Offset+8 ||
		f[2].Name != "writes" || f[2].VersionID != 2 || f[2].Offset != f[0].Offset+12 {
		t.Fatalf("fields: %+v", f)
	}

	inst.MMIOWrite(0, 2, 1, 0x41)
	if !host.irq() {
		t.Fatal("write did not raise the interrupt")
	}
	if v := inst.MMIORead(0, 2, 1); v != 0x41 {
		t.Fatalf("read back %#x", v)
	}
	if v := inst.MMIORead(0, 5, 1); v != 0 {
		t.Fatalf("read beyond size 4: %#x", v)
	}
	if v := inst.MMIORead(0, 0x100, 4); v != 1 || host.irq() {
		t.Fatalf("status %#x, irq %v", v, host.irq())
	}
	// The state is where the schema says.
	b, err := inst.ReadMemory(f[0].Offset, 16)
	if err != nil {
		t.Fatal(err)
	}
	if b[2] != 0x41 || binary.LittleEndian.Uint32(b[12:]) != 1 {
		t.Fatalf("state in memory: %x", b)
	}
	// No PIO, timer or backend handler: the SDK answers.
	if v := inst.PIORead(0, 0, 2); v != 0xffff {
		t.Fatalf("PIO read without a handler = %#x", v)
	}
	inst.PIORead(0, 0, 1)
	if n := strings.Count(logs.String(), "no port I/O handler"); n != 1 {
		t.Fatalf("missing handler logged %d times:\n%s", n, logs)
	}
	if err := inst.Err(); err != nil {
		t.Fatal(err)
	}

	// A property value the device refuses fails realize with its message.
	bad := newInstance()
	defer bad.Close()
	if err := bad.Realize(plugin.PropertyValues{"size": 9}); err == nil {
		t.Fatal("size 9 accepted")
	}
	if !strings.Contains(logs.String(), "size must be 1..8") {
		t.Fatalf("realize error not logged:\n%s", logs)
	}
}
