// Package compat checks migration compatibility between builds and machine
// types: it reads the JSON that `wasmvmm dump-vmstate` writes (QEMU's
// -dump-vmstate shape), compares a source dump with a destination dump with
// the semantics of QEMU's scripts/vmstate-static-checker.py, checks machine
// type catalogs against the plugins' declarations, and runs the
// compatibility matrix (every machine type x source plugin set x
// destination plugin set, statically and with real migrations).
package compat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// Dump is one parsed dump-vmstate file.
type Dump struct {
	// Path names the dump in messages.
	Path string
	// Machine is vmschkmachine.Name.
	Machine string
	// Sections are the device sections in file order.
	Sections []*DumpSection
}

// DumpSection is one top-level entry of a dump: a device's section.
type DumpSection struct {
	Key              string // the JSON key (the section name)
	Name             string
	VersionID        int64
	MinimumVersionID int64
	Description      *Description
	// Entries lists the keys the section object has (Name, version_id,
	// minimum_version_id, Description, ...), for QEMU's "Entry missing".
	Entries []string
}

// Description is a vmstate description: a section's, a subsection's, or
// the layout of a nested struct.
type Description struct {
	Name             string
	VersionID        int64
	MinimumVersionID *int64 // nil when the dump has none
	Fields           []*Field
	Subsections      []*Description
	// Entries lists the keys the description object has.
	Entries []string
}

// Field is one field of a description.
type Field struct {
	Field       string
	VersionID   int64
	FieldExists bool
	Size        int64
	Num         *int64 // arrays only
	Description *Description
}

// total returns the field's bytes on the wire: size times num.
func (f *Field) total() int64 {
	if f.Num != nil {
		return f.Size * *f.Num
	}
	return f.Size
}

// ReadDump reads and validates a dump-vmstate file.
func ReadDump(path string) (*Dump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read dump: %w", err)
	}
	return ParseDump(path, b)
}

// ParseDump parses a dump; path names it in errors. Input that is not a
// dump (not JSON, no vmschkmachine, a section or field without its
// required members) is refused with the entry named.
func ParseDump(path string, b []byte) (*Dump, error) {
	keys, vals, err := orderedObject(b)
	if err != nil {
		return nil, fmt.Errorf("%s: not a dump-vmstate file: %w", path, err)
	}
	if !slices.Contains(keys, "vmschkmachine") {
		return nil, fmt.Errorf("%s: not a dump-vmstate file: no \"vmschkmachine\" entry", path)
	}
	d := &Dump{Path: path}
	sawMachine := false
	for i, k := range keys {
		if k == "vmschkmachine" {
			var m map[string]any
			if err := json.Unmarshal(vals[i], &m); err != nil {
				return nil, fmt.Errorf("%s: vmschkmachine: %w", path, err)
			}
			name, ok := m["Name"].(string)
			if !ok {
				return nil, fmt.Errorf("%s: vmschkmachine has no string \"Name\"", path)
			}
			d.Machine, sawMachine = name, true
			continue
		}
		s, err := parseSection(k, vals[i])
		if err != nil {
			return nil, fmt.Errorf("%s: section %q: %w", path, k, err)
		}
		d.Sections = append(d.Sections, s)
	}
	if !sawMachine {
		return nil, fmt.Errorf("%s: not a dump-vmstate file: no \"vmschkmachine\" entry", path)
	}
	return d, nil
}

// Section returns the section with key name, or nil.
func (d *Dump) Section(name string) *DumpSection {
	for _, s := range d.Sections {
		if s.Key == name {
			return s
		}
	}
	return nil
}

// orderedObject splits a JSON object into its keys, in order, and raw values.
func orderedObject(b []byte) ([]string, []json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if delim, ok := tok.(json.Delim); !ok || delim != '{' {
		return nil, nil, errors.New("not a JSON object")
	}
	var keys []string
	var vals []json.RawMessage
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, fmt.Errorf("value of %q: %w", k, err)
		}
		if seen[k] {
			return nil, nil, fmt.Errorf("key %q appears twice", k)
		}
		seen[k] = true
		keys, vals = append(keys, k), append(vals, v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("data after the top-level object")
	}
	return keys, vals, nil
}

func parseSection(key string, raw json.RawMessage) (*DumpSection, error) {
	keys, vals, err := orderedObject(raw)
	if err != nil {
		return nil, err
	}
	s := &DumpSection{Key: key, Entries: keys}
	var haveName, haveVersion bool
	for i, k := range keys {
		switch k {
		case "Name":
			if err := json.Unmarshal(vals[i], &s.Name); err != nil {
				return nil, fmt.Errorf("Name: %w", err)
			}
			haveName = true
		case "version_id":
			if err := json.Unmarshal(vals[i], &s.VersionID); err != nil {
				return nil, fmt.Errorf("version_id: %w", err)
			}
			haveVersion = true
		case "minimum_version_id":
			if err := json.Unmarshal(vals[i], &s.MinimumVersionID); err != nil {
				return nil, fmt.Errorf("minimum_version_id: %w", err)
			}
		case "Description":
			if s.Description, err = parseDescription(vals[i], "Description"); err != nil {
				return nil, err
			}
		}
	}
	switch {
	case !haveName:
		return nil, errors.New("no \"Name\"")
	case !haveVersion:
		return nil, errors.New("no \"version_id\"")
	case s.Description == nil:
		return nil, errors.New("no \"Description\"")
	}
	return s, nil
}

func parseDescription(raw json.RawMessage, where string) (*Description, error) {
	keys, vals, err := orderedObject(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	d := &Description{Entries: keys}
	var haveName, haveVersion, haveFields bool
	for i, k := range keys {
		switch k {
		case "name":
			if err := json.Unmarshal(vals[i], &d.Name); err != nil {
				return nil, fmt.Errorf("%s.name: %w", where, err)
			}
			haveName = true
		case "version_id":
			if err := json.Unmarshal(vals[i], &d.VersionID); err != nil {
				return nil, fmt.Errorf("%s.version_id: %w", where, err)
			}
			haveVersion = true
		case "minimum_version_id":
			var v int64
			if err := json.Unmarshal(vals[i], &v); err != nil {
				return nil, fmt.Errorf("%s.minimum_version_id: %w", where, err)
			}
			d.MinimumVersionID = &v
		case "Fields":
			var raws []json.RawMessage
			if err := json.Unmarshal(vals[i], &raws); err != nil {
				return nil, fmt.Errorf("%s.Fields: %w", where, err)
			}
			for j, r := range raws {
				f, err := parseField(r, fmt.Sprintf("%s.Fields[%d]", where, j))
				if err != nil {
					return nil, err
				}
				d.Fields = append(d.Fields, f)
			}
			haveFields = true
		case "Subsections":
			var raws []json.RawMessage
			if err := json.Unmarshal(vals[i], &raws); err != nil {
				return nil, fmt.Errorf("%s.Subsections: %w", where, err)
			}
			for j, r := range raws {
				sub, err := parseDescription(r, fmt.Sprintf("%s.Subsections[%d]", where, j))
				if err != nil {
					return nil, err
				}
				d.Subsections = append(d.Subsections, sub)
			}
		}
	}
	switch {
	case !haveName:
		return nil, fmt.Errorf("%s: no \"name\"", where)
	case !haveVersion:
		return nil, fmt.Errorf("%s: no \"version_id\"", where)
	case !haveFields:
		return nil, fmt.Errorf("%s: no \"Fields\"", where)
	}
	return d, nil
}

func parseField(raw json.RawMessage, where string) (*Field, error) {
	var f struct {
		Field       *string         `json:"field"`
		VersionID   *int64          `json:"version_id"`
		FieldExists bool            `json:"field_exists"`
		Size        *int64          `json:"size"`
		Num         *int64          `json:"num"`
		Description json.RawMessage `json:"Description"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	switch {
	case f.Field == nil:
		return nil, fmt.Errorf("%s: no \"field\"", where)
	case f.VersionID == nil:
		return nil, fmt.Errorf("%s (%s): no \"version_id\"", where, *f.Field)
	case f.Size == nil:
		return nil, fmt.Errorf("%s (%s): no \"size\"", where, *f.Field)
	}
	out := &Field{Field: *f.Field, VersionID: *f.VersionID, FieldExists: f.FieldExists, Size: *f.Size, Num: f.Num}
	if len(f.Description) > 0 {
		d, err := parseDescription(f.Description, where+".Description")
		if err != nil {
			return nil, err
		}
		out.Description = d
	}
	return out, nil
}
