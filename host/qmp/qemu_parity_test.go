package qmp

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// startQEMU runs the host's QEMU with no machine and a QMP socket, for
// comparing its answers with ours. Missing QEMU skips the test, except under
// CI=true where it fails.
func startQEMU(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 not found (install Debian's qemu-system-x86): %v", err)
		}
		t.Skipf("qemu-system-x86_64 not found; parity with QEMU not checked: %v", err)
	}
	path := filepath.Join(t.TempDir(), "qemu-qmp.sock")
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:"+path+",server=on,wait=off")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return path
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU made no QMP socket in 20 s; stderr: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestParityWithQEMU sends the same requests to QEMU and to our server and
// requires the same answers: error class and text (for JSON syntax errors
// only the "JSON parse error, " prefix, since the parsers differ), and the
// echoed id.
func TestParityWithQEMU(t *testing.T) {
	qemuPath := startQEMU(t)
	srv, ourPath := startServer(t, Config{})
	// human-monitor-command has the argument shape QEMU declares:
	// 'command-line': 'str', '*cpu-index': 'int'.
	srv.Register("human-monitor-command", Typed(func(_ context.Context, a struct {
		CommandLine string `json:"command-line"`
		CPUIndex    *int64 `json:"cpu-index"`
	}) (any, error) {
		return "", nil
	}))
	srv.Register("stop", NoArgs(func(context.Context) (any, error) { return nil, nil }))
	srv.Register("query-status", NoArgs(func(context.Context) (any, error) { return nil, nil }))

	// Before negotiation.
	preCases := []string{
		`{"execute":"query-status","id":1}`,
		`{"execute":"no-such-command"}`,
		`{"execute":"qmp_capabilities","arguments":{"enable":["xyz"]}}`,
		`{"execute":"qmp_capabilities","arguments":{"bogus":true}}`,
		`{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}`,
	}
	cases := []string{
		`{"execute":"qmp_capabilities","id":"again"}`,
		`{"execute":"no-such-command","id":[1,{"a":null}]}`,
		`{"execute":"query-version","arguments":{"x":1}}`,
		`{"execute":"stop","arguments":{"force":true},"id":"s"}`,
		`[1]`,
		`"text"`,
		`{"execute":1,"id":2}`,
		`{"execute":"stop","arguments":[]}`,
		`{"execute":"stop","arguments":"x"}`,
		`{"id":1}`,
		`{"execute":"stop","foo":1}`,
		`{"exec-oob":"stop"}`,
		`{ "execute": }`,
		`{"execute":"stop",}`,
		"{\"execute\":\"st\x01",
		`{"execute":"human-monitor-command","arguments":{}}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":5}}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info version","cpu-index":1.5}}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info version","cpu-index":"0"}}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info version","cpu-index":null}}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info version","extra":1}}`,
	}

	qemu, ours := dialRaw(t, qemuPath), dialRaw(t, ourPath)
	// The greetings have the same members (QEMU offers "oob"; we offer none).
	if qg, og := shape(qemu.msg()), shape(ours.msg()); qg != og {
		t.Errorf("greeting shape:\n  QEMU %s\n  ours %s", qg, og)
	}
	compare := func(in string) {
		t.Helper()
		q, o := qemu.cmd(in), ours.cmd(in)
		qe, _ := q["error"].(map[string]any)
		oe, _ := o["error"].(map[string]any)
		if (qe == nil) != (oe == nil) {
			t.Errorf("%s:\n  QEMU %v\n  ours %v", in, q, o)
			return
		}
		if qe != nil {
			qd, od := qe["desc"].(string), oe["desc"].(string)
			const parse = "JSON parse error, "
			same := qd == od || (strings.HasPrefix(qd, parse) && strings.HasPrefix(od, parse))
			if qe["class"] != oe["class"] || !same {
				t.Errorf("%s:\n  QEMU %v %q\n  ours %v %q", in, qe["class"], qd, oe["class"], od)
			}
		}
		qid, qhas := q["id"]
		oid, ohas := o["id"]
		if qhas != ohas || (qhas && !jsonEqual(oid, mustJSON(t, qid))) {
			t.Errorf("%s: id QEMU %v (%v), ours %v (%v)", in, qid, qhas, oid, ohas)
		}
	}
	for _, in := range preCases {
		compare(in)
	}
	compare(`{"execute":"qmp_capabilities"}`)
	for _, in := range cases {
		compare(in)
	}
	// An event without data: QEMU's RESUME (from cont) against ours.
	qemu.send(`{"execute":"cont"}`)
	var qev map[string]any
	for i := 0; i < 2; i++ {
		if m := qemu.msg(); m["event"] == "RESUME" {
			qev = m
		}
	}
	if err := srv.Emit("RESUME", nil); err != nil {
		t.Fatal(err)
	}
	if qev == nil {
		t.Error("QEMU sent no RESUME event after cont")
	} else if qs, ourShape := shape(qev), shape(ours.msg()); qs != ourShape {
		t.Errorf("event shape:\n  QEMU %s\n  ours %s", qs, ourShape)
	}
	if qv, ov := shape(qemu.cmd(`{"execute":"query-version","id":9}`)), shape(ours.cmd(`{"execute":"query-version","id":9}`)); qv != ov {
		t.Errorf("query-version shape:\n  QEMU %s\n  ours %s", qv, ov)
	}
}

// shape describes a decoded JSON value by its member names and value kinds,
// ignoring the values themselves.
func shape(v any) string {
	switch v := v.(type) {
	case map[string]any:
		parts := make([]string, 0, len(v))
		for k, e := range v {
			parts = append(parts, k+":"+shape(e))
		}
		sort.Strings(parts)
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "bool"
	case nil:
		return "null"
	default:
		return "number"
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
