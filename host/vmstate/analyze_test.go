package vmstate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAnalyzeOurStream(t *testing.T) {
	blocks := allocBlocks(t, 8, 2)
	fill(blocks[0].Mem[3*PageSize:4*PageSize], 1)
	m := newMachine(t, 0x21, testProps, testNeeded)
	for i := 8; i < 12; i++ {
		m.stores["serial"][i] = byte(i & 1)
	}
	stream := saveStream(t, testMachine, blocks, m.reg)
	// Through a plain reader (read into memory) and a file (tail first).
	a, err := Analyze(io.MultiReader(bytes.NewReader(stream)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s")
	os.WriteFile(path, stream, 0o644)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := Analyze(f)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Fatalf("file and reader analyses differ")
	}
	if a.Machine != testMachine || a.PageSize != PageSize {
		t.Errorf("machine %q page size %d", a.Machine, a.PageSize)
	}
	if got := strings.Join(a.State.Keys(), ","); got != "configuration,ram (0),serial (1),virtio-dev (2),cpu (3),cpu (4)" {
		t.Errorf("sections %s", got)
	}
	ramv, _ := a.State.Get("ram (0)")
	rj, _ := json.Marshal(ramv)
	if string(rj) != `{"section sizes":{"pc.ram":"0x0000000000008000","pc.ram.high":"0x0000000000002000"},"pages":1,"zero pages":9}` {
		t.Errorf("ram %s", rj)
	}
	sv, _ := a.State.Get("serial (1)")
	serial := sv.(*Object)
	s := m.stores["serial"]
	for k, want := range map[string]any{
		"ier":   fmt.Sprintf("0x%02x", s[0]),
		"flags": []any{false, true, false, true},
		"fifo":  spacedHex(s[16:32]),
	} {
		got, _ := serial.Get(k)
		if !jsonEqual(got, want) {
			t.Errorf("serial %s = %v, want %v", k, got, want)
		}
	}
	sub, _ := serial.Get("serial/fifo-level")
	if lv, _ := sub.(*Object).Get("level"); lv != fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(s[48:])) {
		t.Errorf("subsection level %v", lv)
	}
	// Negative integers show their value, as analyze-migration.py does.
	vv, _ := a.State.Get("virtio-dev (2)")
	st, _ := vv.(*Object).Get("status")
	v := m.stores["virtio"]
	w0 := int32(binary.LittleEndian.Uint32(v[80:]))
	want0 := fmt.Sprintf("0x%08x", uint32(w0))
	if w0 < 0 {
		want0 += fmt.Sprintf(" (%d)", w0)
	}
	if st.([]any)[0] != want0 {
		t.Errorf("status[0] = %v, want %s", st.([]any)[0], want0)
	}

	if _, err := Analyze(bytes.NewReader(stream[:len(stream)-1])); err == nil || !strings.Contains(err.Error(), "no vmdesc") {
		t.Errorf("cut vmdesc: %v", err)
	}
	cut := append(append([]byte(nil), stream[:100]...), stream[bytes.LastIndex(stream, []byte("\x00\x06")):]...)
	if _, err := Analyze(bytes.NewReader(cut)); err == nil || !strings.HasPrefix(err.Error(), "offset 0x") {
		t.Errorf("cut middle: %v", err)
	}
}

// qemuStream has QEMU 7.2 (Debian's qemu-system-x86) migrate a paused pc
// machine to a file.
func qemuStream(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 is required under CI: %v", err)
		}
		t.Skip("qemu-system-x86_64 not installed")
	}
	out := filepath.Join(t.TempDir(), "qemu.bin")
	cmd := exec.Command(bin, "-machine", "pc", "-m", "16", "-nodefaults", "-display", "none", "-S",
		"-monitor", "stdio", "-accel", "tcg")
	in, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); cmd.Process.Kill(); cmd.Wait() }()
	done := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Migration status: completed") {
				done <- true
				return
			}
		}
		done <- false
	}()
	fmt.Fprintf(in, "migrate \"exec:cat > %s\"\n", out)
	deadline := time.After(60 * time.Second)
	for {
		fmt.Fprintf(in, "info migrate\n")
		select {
		case ok := <-done:
			if !ok {
				t.Fatal("qemu exited before the migration completed")
			}
			fmt.Fprintf(in, "quit\n")
			return out
		case <-deadline:
			t.Fatal("qemu migration did not complete in 60 s")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestAnalyzeQEMUStream decodes a stream written by QEMU itself: its RAM
// blocks, its configuration and its device sections through QEMU's vmdesc.
func TestAnalyzeQEMUStream(t *testing.T) {
	path := qemuStream(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, err := Analyze(f)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Machine, "pc-i440fx-") {
		t.Errorf("machine %q", a.Machine)
	}
	var ramKey, cpuKey string
	for _, k := range a.State.Keys() {
		if strings.HasPrefix(k, "ram (") {
			ramKey = k
		}
		if strings.HasPrefix(k, "cpu (") {
			cpuKey = k
		}
	}
	rv, _ := a.State.Get(ramKey)
	sizes, _ := rv.(*Object).Get("section sizes")
	if v, _ := sizes.(*Object).Get("pc.ram"); v != "0x0000000001000000" {
		t.Errorf("pc.ram size %v", v)
	}
	cv, _ := a.State.Get(cpuKey)
	regs, _ := cv.(*Object).Get("env.regs")
	if l, _ := regs.([]any); len(l) != 16 {
		t.Errorf("cpu env.regs %v", regs)
	}
	// Where QEMU's own analyzer is at hand, both must agree on every section.
	if os.Getenv("QEMU_ANALYZE_MIGRATION") == "" {
		return
	}
	py, script := findAnalyzeScript(t)
	out, err := exec.Command(py, script, "-f", path, "-d", "state").Output()
	if err != nil {
		t.Fatalf("analyze-migration.py: %v", err)
	}
	var theirs map[string]any
	if err := json.Unmarshal(out, &theirs); err != nil {
		t.Fatal(err)
	}
	for _, k := range a.State.Keys() {
		if k == configurationName {
			continue
		}
		v, _ := a.State.Get(k)
		if o, ok := v.(*Object); ok && strings.HasPrefix(k, "ram (") {
			v, _ = o.Get("section sizes")
			v = map[string]any{"section sizes": v}
		}
		if !jsonEqual(v, theirs[k]) {
			a, _ := json.Marshal(v)
			b, _ := json.Marshal(theirs[k])
			t.Errorf("section %s:\n ours   %.300s\n theirs %.300s", k, a, b)
		}
	}
}
