package compat

import (
	"encoding/json"
	"strings"
	"testing"
)

// base is a small dump: one device with a nested struct array and a
// subsection.
const base = `{
  "vmschkmachine": {"Name": "m-1.0"},
  "dev": {"Name": "dev", "version_id": 2, "minimum_version_id": 1,
    "Description": {"name": "dev", "version_id": 2, "minimum_version_id": 1,
      "Fields": [
        {"field": "a", "version_id": 0, "field_exists": false, "size": 4},
        {"field": "b", "version_id": 2, "field_exists": false, "size": 2},
        {"field": "q", "version_id": 0, "field_exists": false, "num": 2, "size": 8,
          "Description": {"name": "vq", "version_id": 1, "minimum_version_id": 0,
            "Fields": [{"field": "num", "version_id": 0, "field_exists": false, "size": 4},
                       {"field": "idx", "version_id": 0, "field_exists": false, "size": 4}]}}
      ],
      "Subsections": [{"name": "dev/extra", "version_id": 1, "minimum_version_id": 1,
        "Fields": [{"field": "x", "version_id": 0, "field_exists": false, "size": 8}]}]}},
  "other": {"Name": "other", "version_id": 1, "minimum_version_id": 1,
    "Description": {"name": "other", "version_id": 1, "minimum_version_id": 1,
      "Fields": [{"field": "z", "version_id": 0, "field_exists": false, "size": 1}]}}
}`

// edit parses base, applies f to the generic JSON, and returns a Dump.
func edit(t *testing.T, name string, f func(m map[string]any)) *Dump {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(base), &m); err != nil {
		t.Fatal(err)
	}
	if f != nil {
		f(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDump(name, b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func desc(m map[string]any, sec string) map[string]any {
	return m[sec].(map[string]any)["Description"].(map[string]any)
}

func fields(m map[string]any, sec string) []any { return desc(m, sec)["Fields"].([]any) }

func field(m map[string]any, sec string, i int) map[string]any {
	return fields(m, sec)[i].(map[string]any)
}

func TestCheckFindsEachClassOfBreak(t *testing.T) {
	for _, c := range []struct {
		name  string
		dst   func(m map[string]any)
		src   func(m map[string]any)
		kinds []string
	}{
		{name: "identical"},
		{name: "section missing", dst: func(m map[string]any) { delete(m, "other") }, kinds: []string{KindSectionMissing}},
		{name: "section version above dest", dst: func(m map[string]any) {
			m["dev"].(map[string]any)["version_id"] = 1.0
			desc(m, "dev")["version_id"] = 1.0
		}, kinds: []string{KindVersion, KindVersion}},
		{name: "source below dest minimum", dst: func(m map[string]any) {
			m["dev"].(map[string]any)["version_id"] = 4.0
			m["dev"].(map[string]any)["minimum_version_id"] = 3.0
			desc(m, "dev")["version_id"] = 4.0
			desc(m, "dev")["minimum_version_id"] = 3.0
		}, kinds: []string{KindMinimumVersion, KindMinimumVersion}},
		{name: "field renamed", dst: func(m map[string]any) { field(m, "dev", 1)["field"] = "bb" }, kinds: []string{KindFieldMismatch}},
		{name: "field size", dst: func(m map[string]any) { field(m, "dev", 0)["size"] = 8.0 }, kinds: []string{KindSize}},
		{name: "array length", dst: func(m map[string]any) { field(m, "dev", 2)["num"] = 3.0 }, kinds: []string{KindSize}},
		{name: "field version above dest", dst: func(m map[string]any) { field(m, "dev", 1)["version_id"] = 1.0 }, kinds: []string{KindVersion}},
		{name: "dest lost the last field", dst: func(m map[string]any) {
			d := desc(m, "dev")
			d["Fields"] = fields(m, "dev")[:2]
		}, kinds: []string{KindNoFurtherFields}},
		{name: "dest expects an extra field", dst: func(m map[string]any) {
			d := desc(m, "other")
			d["Fields"] = append(fields(m, "other"), map[string]any{"field": "new", "version_id": 0.0, "field_exists": true, "size": 4.0})
		}, kinds: []string{KindExtraField}},
		{name: "extra field of a newer version is fine", dst: func(m map[string]any) {
			m["other"].(map[string]any)["version_id"] = 2.0
			desc(m, "other")["version_id"] = 2.0
			desc(m, "other")["Fields"] = append(fields(m, "other"), map[string]any{"field": "new", "version_id": 2.0, "field_exists": false, "size": 4.0})
		}},
		{name: "nested struct grew (the virtio-gpu scanout break)", dst: func(m map[string]any) {
			nd := field(m, "dev", 2)["Description"].(map[string]any)
			nd["Fields"] = append(nd["Fields"].([]any), map[string]any{"field": "fb.format", "version_id": 0.0, "field_exists": true, "size": 4.0})
		}, kinds: []string{KindExtraField}},
		{name: "subsection missing", dst: func(m map[string]any) {
			desc(m, "dev")["Subsections"] = []any{map[string]any{"name": "dev/other", "version_id": 1.0, "Fields": []any{}}}
		}, kinds: []string{KindSubsectionMissing}},
		{name: "subsections entry missing", dst: func(m map[string]any) { delete(desc(m, "dev"), "Subsections") }, kinds: []string{KindEntryMissing}},
		{name: "nested description renamed", dst: func(m map[string]any) {
			field(m, "dev", 2)["Description"].(map[string]any)["name"] = "ring"
		}, kinds: []string{KindDescriptionName}},
		{name: "unused placeholder of the same size", dst: func(m map[string]any) { field(m, "dev", 1)["field"] = "unused" }},
		{name: "unused placeholder covering two fields", dst: func(m map[string]any) {
			d := desc(m, "dev")
			fs := fields(m, "dev")
			d["Fields"] = []any{map[string]any{"field": "unused", "version_id": 0.0, "field_exists": false, "size": 6.0}, fs[2]}
		}},
		{name: "unused placeholder too small", dst: func(m map[string]any) {
			d := desc(m, "dev")
			fs := fields(m, "dev")
			d["Fields"] = []any{map[string]any{"field": "unused", "version_id": 0.0, "field_exists": false, "size": 5.0}, fs[2]}
		}, kinds: []string{KindUnusedSize}},
		{name: "fields moved into a nested struct", dst: func(m map[string]any) {
			d := desc(m, "dev")
			fs := fields(m, "dev")
			d["Fields"] = []any{map[string]any{"field": "hdr", "version_id": 0.0, "field_exists": false, "size": 6.0,
				"Description": map[string]any{"name": "hdr", "version_id": 1.0, "Fields": []any{fs[0], fs[1]}}}, fs[2]}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Check(edit(t, "src.json", c.src), edit(t, "dst.json", c.dst))
			var kinds []string
			for _, p := range r.Problems {
				kinds = append(kinds, p.Kind)
			}
			if strings.Join(kinds, ",") != strings.Join(c.kinds, ",") {
				var b strings.Builder
				r.WriteText(&b)
				t.Fatalf("kinds %v, want %v\n%s", kinds, c.kinds, b.String())
			}
			if r.Status != len(c.kinds) {
				t.Fatalf("status %d, want %d", r.Status, len(c.kinds))
			}
		})
	}
}

func TestCheckStatusIsCapped(t *testing.T) {
	src := edit(t, "src.json", func(m map[string]any) {
		for i := 0; i < 300; i++ {
			m["sec"+strings.Repeat("x", i)] = m["other"]
		}
	})
	r := Check(src, edit(t, "dst.json", nil))
	if len(r.Problems) != 300 || r.Status != MaxStatus {
		t.Fatalf("%d problems, status %d; want 300, %d", len(r.Problems), r.Status, MaxStatus)
	}
}

func TestCheckWarnsOnMachineMismatch(t *testing.T) {
	r := Check(edit(t, "src.json", nil), edit(t, "dst.json", func(m map[string]any) {
		m["vmschkmachine"] = map[string]any{"Name": "m-2.0"}
	}))
	if len(r.Warnings) != 1 || !r.Compatible() || r.Status != 0 {
		t.Fatalf("warnings %v, problems %v", r.Warnings, r.Problems)
	}
}

func TestParseDumpRefusesWhatIsNotADump(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`not json`, "x.json: not a dump-vmstate file"},
		{`[1,2]`, "x.json: not a dump-vmstate file: not a JSON object"},
		{`{"dev": {}}`, `x.json: not a dump-vmstate file: no "vmschkmachine" entry`},
		{`{"vmschkmachine": {"Name": "m"}, "dev": {}}`, `x.json: section "dev": no "Name"`},
		{`{"vmschkmachine": {"Name": "m"}, "dev": []}`, `x.json: section "dev": not a JSON object`},
		{`{"dev": {"Name": "dev", "version_id": 1, "Description": {"name": "dev", "version_id": 1, "Fields": []}}}`, `no "vmschkmachine" entry`},
		{`{"vmschkmachine": {"Name": 3}}`, `vmschkmachine has no string "Name"`},
		{`{"vmschkmachine": {"Name": "m"}, "dev": {"Name": "dev", "version_id": 1, "Description": {"name": "dev", "version_id": 1, "Fields": [{"field": "a", "version_id": 0}]}}}`,
			`x.json: section "dev": Description.Fields[0] (a): no "size"`},
		{`{"vmschkmachine": {"Name": "m"}, "vmschkmachine": {"Name": "n"}}`, `key "vmschkmachine" appears twice`},
	} {
		_, err := ParseDump("x.json", []byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.in, err, c.want)
		}
	}
}
