package vmstate

import (
	"encoding/json"
	"fmt"
)

// DumpVMState describes every device schema of a registry in the JSON
// shape of QEMU's -dump-vmstate, which QEMU's vmstate-static-checker
// compares: "vmschkmachine" {"Name": machine}, then one object per schema
// name with "Name", "version_id", "minimum_version_id" and "Description"
// ({"name", "version_id", "minimum_version_id", "Fields": [{"field",
// "version_id", "field_exists", "num" (arrays), "size", "Description"
// (structs)}], "Subsections": [...]}).
//
// Schemas are shown as the device properties make them: a property-gated
// field whose condition does not hold is left out, one that holds is listed
// with "field_exists": true. Devices are keyed by schema name; with several
// instances of one schema the first registered is shown.
func DumpVMState(machine string, reg *Registry) ([]byte, error) {
	root := NewObject()
	m := NewObject()
	m.Set("Name", machine)
	root.Set("vmschkmachine", m)
	for _, e := range reg.entries {
		name := e.plan.sec.Name
		if _, dup := root.Get(name); dup {
			continue
		}
		d := NewObject()
		d.Set("Name", name)
		d.Set("version_id", e.plan.sec.VersionID)
		d.Set("minimum_version_id", e.plan.sec.MinimumVersionID)
		d.Set("Description", dumpSection(e.plan))
		root.Set(name, d)
	}
	out, err := json.MarshalIndent(root, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("dump-vmstate: %w", err)
	}
	return append(out, '\n'), nil
}

func dumpSection(p *plan) *Object {
	o := NewObject()
	o.Set("name", p.wireName)
	o.Set("version_id", p.sec.VersionID)
	o.Set("minimum_version_id", p.sec.MinimumVersionID)
	fields := []any{}
	for i := range p.fields {
		pf := &p.fields[i]
		if !pf.propOK {
			continue
		}
		f := NewObject()
		f.Set("field", pf.f.Name)
		f.Set("version_id", pf.f.VersionID)
		f.Set("field_exists", pf.f.Exists != nil)
		if pf.f.Count > 1 {
			f.Set("num", pf.f.Count)
		}
		f.Set("size", pf.f.Size)
		if pf.nested != nil {
			f.Set("Description", dumpSection(pf.nested))
		}
		fields = append(fields, f)
	}
	o.Set("Fields", fields)
	if len(p.subs) > 0 {
		subs := make([]any, len(p.subs))
		for i, s := range p.subs {
			subs[i] = dumpSection(s)
		}
		o.Set("Subsections", subs)
	}
	return o
}
