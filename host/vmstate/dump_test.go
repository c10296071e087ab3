package vmstate

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"wasmvmm/abi"
)

func TestDumpVMState(t *testing.T) {
	reg := NewRegistry()
	inner := &abi.Section{Name: "vq", VersionID: 1, Fields: []abi.Field{
		{Name: "num", Type: abi.FieldU16, Offset: 0, Size: 2, Count: 1},
		{Name: "ev", Type: abi.FieldBool, Offset: 2, Size: 1, Count: 1, Exists: &abi.Condition{Prop: "packed", Op: abi.CondEQ, Value: 1}},
	}}
	sec := &abi.Section{Name: "dev", VersionID: 2, MinimumVersionID: 1,
		Fields: []abi.Field{
			{Name: "a", Type: abi.FieldU32, Offset: 0, Size: 4, Count: 1, VersionID: 2},
			{Name: "q", Type: abi.FieldStruct, Offset: 4, Size: 4, Count: 2, Struct: inner},
			{Name: "old", Type: abi.FieldU8, Offset: 12, Size: 1, Count: 1, Exists: &abi.Condition{Prop: "legacy", Op: abi.CondEQ, Value: 1}},
		},
		Subsections: []abi.Section{{Name: "s", VersionID: 1, MinimumVersionID: 1, Fields: []abi.Field{
			{Name: "x", Type: abi.FieldU64, Offset: 16, Size: 8, Count: 1}}}},
	}
	props := map[string]uint64{"packed": 1, "legacy": 0}
	for i := 0; i < 2; i++ { // the second instance is not repeated
		if _, err := reg.Register(Device{Schema: sec, InstanceID: abi.InstanceAny, Store: make(ByteStore, 32), Props: props}); err != nil {
			t.Fatal(err)
		}
	}
	out, err := DumpVMState("wasmvmm-q35-1.0", reg)
	if err != nil {
		t.Fatal(err)
	}
	var got any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	const want = `{"vmschkmachine":{"Name":"wasmvmm-q35-1.0"},
	"dev":{"Name":"dev","version_id":2,"minimum_version_id":1,"Description":{"name":"dev","version_id":2,"minimum_version_id":1,
	"Fields":[{"field":"a","version_id":2,"field_exists":false,"size":4},
	{"field":"q","version_id":0,"field_exists":false,"num":2,"size":4,"Description":{"name":"vq","version_id":1,"minimum_version_id":0,
	"Fields":[{"field":"num","version_id":0,"field_exists":false,"size":2},{"field":"ev","version_id":0,"field_exists":true,"size":1}]}}],
	"Subsections":[{"name":"dev/s","version_id":1,"minimum_version_id":1,"Fields":[{"field":"x","version_id":0,"field_exists":false,"size":8}]}]}}}`
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(got, w) {
		t.Errorf("dump:\n%s", out)
	}
	if !strings.HasPrefix(string(out), "{\n  \"vmschkmachine\": {\n    \"Name\": \"wasmvmm-q35-1.0\"\n  },\n  \"dev\": {\n    \"Name\": \"dev\",") {
		t.Errorf("key order or layout differs from QEMU's:\n%.200s", out)
	}
}

// TestDumpVMStateKeysMatchQEMU compares the keys our dump uses with the
// keys of QEMU's own -dump-vmstate output, at every level.
func TestDumpVMStateKeysMatchQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 is required under CI: %v", err)
		}
		t.Skip("qemu-system-x86_64 not installed")
	}
	file := filepath.Join(t.TempDir(), "q.json")
	if out, err := exec.Command(bin, "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-dump-vmstate", file).CombinedOutput(); err != nil {
		t.Fatalf("qemu -dump-vmstate: %v\n%s", err, out)
	}
	qb, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := newMachine(t, 0, testProps, nil)
	ours, err := DumpVMState("m", m.reg)
	if err != nil {
		t.Fatal(err)
	}
	theirKeys, ourKeys := map[string]bool{}, map[string]bool{}
	var q, o any
	json.Unmarshal(qb, &q)
	json.Unmarshal(ours, &o)
	collectKeys(q, "", theirKeys, true)
	collectKeys(o, "", ourKeys, true)
	for k := range ourKeys {
		// "num" (array length) is printed by newer QEMU (its
		// vmstate-static-checker.py multiplies size by it), not by 7.2.
		if !theirKeys[k] && !strings.HasSuffix(k, "/Fields/num") {
			t.Errorf("our dump has key path %s, QEMU's has not", k)
		}
	}
	for _, k := range []string{"/vmschkmachine/Name", "/*/Description/Fields/field", "/*/Description/Fields/Description/Fields/size", "/*/Description/Subsections/Fields/field_exists"} {
		if !ourKeys[k] || !theirKeys[k] {
			t.Errorf("key path %s: ours %v, QEMU's %v", k, ourKeys[k], theirKeys[k])
		}
	}
	if t.Failed() {
		var l []string
		for k := range theirKeys {
			l = append(l, k)
		}
		sort.Strings(l)
		t.Logf("QEMU's key paths: %v", l)
	}
}

// collectKeys records key paths, with device names (top-level keys other
// than vmschkmachine) as "*" and array levels flattened.
func collectKeys(v any, path string, out map[string]bool, top bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			name := k
			if top && k != "vmschkmachine" {
				name = "*"
			}
			p := path + "/" + name
			out[p] = true
			collectKeys(c, p, out, false)
		}
	case []any:
		for _, c := range x {
			collectKeys(c, path, out, false)
		}
	}
}
