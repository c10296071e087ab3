package vmstate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// analyzeScriptPaths are where QEMU's scripts/analyze-migration.py may be
// installed. Debian's qemu packages (7.2) do not ship it; point
// QEMU_ANALYZE_MIGRATION at a copy of the script to run this test.
var analyzeScriptPaths = []string{
	"/usr/share/qemu/analyze-migration.py",
	"/usr/share/qemu/scripts/analyze-migration.py",
	"/usr/libexec/qemu/analyze-migration.py",
}

func findAnalyzeScript(t *testing.T) (python, script string) {
	t.Helper()
	env := os.Getenv("QEMU_ANALYZE_MIGRATION")
	py, pyErr := exec.LookPath("python3")
	if env != "" {
		// Set but broken is a failure everywhere.
		if _, err := os.Stat(env); err != nil {
			t.Fatalf("QEMU_ANALYZE_MIGRATION=%s: %v", env, err)
		}
		if pyErr != nil {
			t.Fatalf("QEMU_ANALYZE_MIGRATION is set but python3 is missing: %v", pyErr)
		}
		return py, env
	}
	for _, p := range analyzeScriptPaths {
		if _, err := os.Stat(p); err == nil && pyErr == nil {
			return py, p
		}
	}
	// Not shipped by Debian's qemu packages; not a prerequisite CI installs.
	t.Skip("QEMU's scripts/analyze-migration.py is not installed (Debian's qemu packages do not ship it); set QEMU_ANALYZE_MIGRATION to a copy of the script")
	return "", ""
}

// TestQEMUAnalyzeMigration runs QEMU's own analyzer on a stream we wrote:
// -d state must decode every device field to our values, -d desc must print
// our vmdesc, and -x must extract the RAM blocks byte for byte.
func TestQEMUAnalyzeMigration(t *testing.T) {
	py, script := findAnalyzeScript(t)
	dir := t.TempDir()
	blocks := allocBlocks(t, 40, 9)
	for p := uint64(0); p < 40; p += 3 {
		fill(blocks[0].Mem[p*PageSize:(p+1)*PageSize], byte(p+1))
	}
	fill(blocks[1].Mem[8*PageSize:], 0x99)
	m := newMachine(t, 0x21, testProps, testNeeded)
	for i := 8; i < 12; i++ {
		m.stores["serial"][i] = byte(i & 1)
	}
	stream := saveStream(t, testMachine, blocks, m.reg)
	file := filepath.Join(dir, "stream.bin")
	if err := os.WriteFile(file, stream, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) []byte {
		cmd := exec.Command(py, append([]string{script, "-f", file}, args...)...)
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", script, args, err, stderr.String())
		}
		return out
	}

	// -d state
	var state map[string]json.RawMessage
	if err := json.Unmarshal(run("-d", "state"), &state); err != nil {
		t.Fatal(err)
	}
	var ram map[string]map[string]string
	if err := json.Unmarshal(state["ram (0)"], &ram); err != nil {
		t.Fatalf("ram (0): %v", err)
	}
	if ram["section sizes"]["pc.ram"] != "0x0000000000028000" || ram["section sizes"]["pc.ram.high"] != "0x0000000000009000" {
		t.Errorf("ram section sizes %v", ram)
	}
	var serial map[string]any
	if err := json.Unmarshal(state["serial (1)"], &serial); err != nil {
		t.Fatalf("serial (1): %v in %s", err, state["serial (1)"])
	}
	s := m.stores["serial"]
	want := map[string]any{
		"ier":     fmt.Sprintf("0x%02x", s[0]),
		"divisor": fmt.Sprintf("0x%04x", binary.LittleEndian.Uint16(s[2:])),
		"scratch": fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(s[4:])),
		"flags":   []any{false, true, false, true},
		"fifo":    spacedHex(s[16:32]),
		"serial/fifo-level": map[string]any{
			"level": fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(s[48:])),
		},
	}
	if ts := int64(binary.LittleEndian.Uint64(s[40:])); ts < 0 {
		want["timer"] = fmt.Sprintf("0x%016x (%d)", uint64(ts), ts)
	} else {
		want["timer"] = fmt.Sprintf("0x%016x", ts)
	}
	for k, v := range want {
		if !jsonEqual(serial[k], v) {
			t.Errorf("serial %s = %v, want %v", k, serial[k], v)
		}
	}
	var virtio map[string]any
	if err := json.Unmarshal(state["virtio-dev (2)"], &virtio); err != nil {
		t.Fatalf("virtio-dev (2): %v", err)
	}
	v := m.stores["virtio"]
	queues, _ := virtio["queues"].([]any)
	if len(queues) != 3 {
		t.Fatalf("queues %v", virtio["queues"])
	}
	q1 := queues[1].(map[string]any)
	if q1["desc"] != fmt.Sprintf("0x%016x", binary.LittleEndian.Uint64(v[16:])) || q1["event"] != (v[30] != 0) {
		t.Errorf("queue 1 %v", q1)
	}
	if _, ok := virtio["legacy_isr"]; ok {
		t.Errorf("gated-off field in the analysis")
	}
	if _, ok := virtio["virtio-dev/shm"]; !ok {
		t.Errorf("needed subsection missing: %v", virtio)
	}
	if _, ok := state["cpu (4)"]; !ok {
		t.Errorf("cpu (4) missing; keys %v", keys(state))
	}

	// -d desc prints our vmdesc.
	var desc, ours any
	if err := json.Unmarshal(run("-d", "desc"), &desc); err != nil {
		t.Fatal(err)
	}
	js := stream[bytes.LastIndex(stream, []byte("\x00\x06"))+6:]
	if err := json.Unmarshal(js, &ours); err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(desc, ours) {
		t.Errorf("desc differs")
	}

	// -x extracts RAM into files named after the blocks.
	run("-x")
	for _, b := range blocks {
		got, err := os.ReadFile(filepath.Join(dir, b.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b.Mem) {
			t.Errorf("extracted %s differs", b.Name)
		}
	}
}

func spacedHex(b []byte) string {
	var s []byte
	for i, c := range b {
		if i > 0 {
			s = append(s, ' ')
		}
		s = fmt.Appendf(s, "%02x", c)
	}
	return string(s)
}

// jsonEqual compares two values as JSON, ignoring object key order.
func jsonEqual(a, b any) bool {
	norm := func(v any) []byte {
		x, _ := json.Marshal(v)
		var g any
		json.Unmarshal(x, &g)
		y, _ := json.Marshal(g)
		return y
	}
	return bytes.Equal(norm(a), norm(b))
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
