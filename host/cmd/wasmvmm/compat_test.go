package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const dumpA = `{"vmschkmachine": {"Name": "m-1.0"},
 "dev": {"Name": "dev", "version_id": 1, "minimum_version_id": 1,
  "Description": {"name": "dev", "version_id": 1, "minimum_version_id": 1,
   "Fields": [{"field": "a", "version_id": 0, "field_exists": false, "size": 4},
              {"field": "b", "version_id": 0, "field_exists": false, "size": 2}]}}}`

func TestCompatCheckExitStatus(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.json", dumpA)
	b := write("b.json", strings.Replace(strings.Replace(dumpA, `"size": 2`, `"size": 8`, 1), `"version_id": 1, "minimum_version_id": 1,
  "Description"`, `"version_id": 0, "minimum_version_id": 0,
  "Description"`, 1))
	notDump := write("c.json", `{"hello": "world"}`)

	var out, errb bytes.Buffer
	if code := dispatch([]string{"compat-check", a, a}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "compatible") {
		t.Fatalf("same dump: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	// b: section version 0 (below the source's 1) and field b of 8 bytes.
	if code := dispatch([]string{"compat-check", a, b}, nil, &out, &errb); code != 2 {
		t.Fatalf("two problems: exit %d\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), `Field "b": size mismatch: 2 , 8`) || !strings.Contains(out.String(), "version error: 1 > 0") {
		t.Fatalf("output:\n%s", out.String())
	}
	out.Reset()
	if code := dispatch([]string{"compat-check", "--json", a, b}, nil, &out, &errb); code != 2 {
		t.Fatalf("--json: exit %d", code)
	}
	var rep struct {
		Status   int `json:"status"`
		Problems []struct {
			Kind string `json:"kind"`
		} `json:"problems"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || rep.Status != 2 || len(rep.Problems) != 2 {
		t.Fatalf("--json output %v: %s", err, out.String())
	}
	errb.Reset()
	if code := dispatch([]string{"compat-check", a, notDump}, nil, &out, &errb); code != 255 || !strings.Contains(errb.String(), "c.json: not a dump-vmstate file") {
		t.Fatalf("not a dump: exit %d, %s", code, errb.String())
	}
	errb.Reset()
	if code := dispatch([]string{"compat-check", a, filepath.Join(dir, "missing.json")}, nil, &out, &errb); code != 255 || !strings.Contains(errb.String(), "missing.json") {
		t.Fatalf("missing file: exit %d, %s", code, errb.String())
	}
}
