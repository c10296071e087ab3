package vmstate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// The vmdesc is the JSON QEMU appends after EOF: for every device section
// sent, the fields as they went on the wire (name, type, size; arrays by
// their first element with array_len, or element by element with index when
// a field's existence is dynamic) and the subsections sent.

type descRoot struct {
	Configuration *descSection   `json:"configuration,omitempty"`
	PageSize      int64          `json:"page_size"`
	Devices       []*descSection `json:"devices"`
}

type descSection struct {
	Name        string         `json:"name,omitempty"`
	InstanceID  *int64         `json:"instance_id,omitempty"`
	VMSDName    string         `json:"vmsd_name"`
	Version     int64          `json:"version"`
	Fields      []*descField   `json:"fields"`
	Subsections []*descSection `json:"subsections,omitempty"`
}

type descField struct {
	Name     string       `json:"name"`
	ArrayLen *int64       `json:"array_len,omitempty"`
	Index    *int64       `json:"index,omitempty"`
	Type     string       `json:"type"`
	Struct   *descSection `json:"struct,omitempty"`
	Size     int64        `json:"size"`
}

func i64p(v int64) *int64 { return &v }

// describeDevice builds a device's vmdesc entry from what was sent.
func describeDevice(e *entry, st *sectionState) *descSection {
	d := describeSection(st)
	d.Name = e.dev.Name
	d.InstanceID = i64p(int64(e.dev.InstanceID))
	return d
}

func describeSection(st *sectionState) *descSection {
	d := &descSection{VMSDName: st.p.wireName, Version: int64(st.version)}
	d.Fields = describeFields(st.p, st.version)
	for _, sub := range st.subs {
		d.Subsections = append(d.Subsections, describeSection(sub))
	}
	return d
}

func describeFields(p *plan, version uint32) []*descField {
	out := []*descField{}
	for i := range p.fields {
		pf := &p.fields[i]
		if !pf.exists(version) {
			continue
		}
		n := int64(pf.f.Count)
		one := func() *descField {
			df := &descField{Name: pf.f.Name, Type: pf.f.Type.String(), Size: pf.elemWire}
			if pf.nested != nil {
				df.Struct = &descSection{VMSDName: pf.nested.wireName, Version: int64(pf.nested.sec.VersionID),
					Fields: describeFields(pf.nested, pf.nested.sec.VersionID)}
			}
			return df
		}
		switch {
		case n == 1:
			out = append(out, one())
		case pf.compress:
			df := one()
			df.ArrayLen = i64p(n)
			out = append(out, df)
		default:
			for k := int64(0); k < n; k++ {
				df := one()
				df.Index = i64p(k)
				out = append(out, df)
			}
		}
	}
	return out
}

// configurationDesc describes the configuration section as QEMU does: a
// uint32 length and the name as a buffer of that length.
func configurationDesc(machine string) *descSection {
	return &descSection{VMSDName: configurationName, Version: 1, Fields: []*descField{
		{Name: "len", Type: "uint32", Size: 4},
		{Name: "name", Type: "buffer", Size: int64(len(machine))},
	}}
}

// marshalVMDesc encodes the vmdesc. Trailing spaces are added when needed so
// that no byte of the be32 length after its last zero byte is '{':
// analyze-migration.py finds the JSON by the first brace after the last NUL.
func marshalVMDesc(root *descRoot) ([]byte, error) {
	js, err := json.Marshal(root)
	if err != nil {
		return nil, fmt.Errorf("vmdesc: %w", err)
	}
	for pad := 0; pad < 8; pad++ {
		if lengthIsUnambiguous(uint32(len(js))) {
			return js, nil
		}
		js = append(js, ' ')
	}
	return js, nil
}

func lengthIsUnambiguous(n uint32) bool {
	b := []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	last := bytes.LastIndexByte(b, 0)
	return bytes.IndexByte(b[last+1:], '{') < 0
}

// compareDesc checks the source's description of a section against the
// description of what this machine decoded: same field types and sizes,
// same subsections. Field names are not compared, so a renamed field keeps
// loading.
func compareDesc(src, ours *descSection) (field string, err error) {
	if src.VMSDName != ours.VMSDName {
		return "", fmt.Errorf("the source describes vmsd %q, this machine %q", src.VMSDName, ours.VMSDName)
	}
	if src.Version != ours.Version {
		return "", fmt.Errorf("the source describes version %d, the stream carried %d", src.Version, ours.Version)
	}
	if f, err := compareFields(src.Fields, ours.Fields); err != nil {
		return f, err
	}
	if len(src.Subsections) != len(ours.Subsections) {
		return "", fmt.Errorf("the source describes %d subsections, the stream carried %d", len(src.Subsections), len(ours.Subsections))
	}
	for i := range src.Subsections {
		if f, err := compareDesc(src.Subsections[i], ours.Subsections[i]); err != nil {
			return f, fmt.Errorf("subsection %q: %w", ours.Subsections[i].VMSDName, err)
		}
	}
	return "", nil
}

func compareFields(src, ours []*descField) (string, error) {
	for i, o := range ours {
		if i >= len(src) {
			return o.Name, fmt.Errorf("the source describes only %d fields; this machine expects %d", len(src), len(ours))
		}
		s := src[i]
		name := o.Name
		if o.Index != nil {
			name += "[" + strconv.FormatInt(*o.Index, 10) + "]"
		}
		if s.Type != o.Type {
			return name, fmt.Errorf("the source describes type %s (as %q), this machine expects %s", s.Type, s.Name, o.Type)
		}
		if s.Size != o.Size {
			return name, fmt.Errorf("the source describes size %d (as %q), this machine expects %d", s.Size, s.Name, o.Size)
		}
		if !eqp(s.ArrayLen, o.ArrayLen) || !eqp(s.Index, o.Index) {
			return name, fmt.Errorf("the source describes another array layout (as %q)", s.Name)
		}
		if (s.Struct == nil) != (o.Struct == nil) {
			return name, fmt.Errorf("struct description present on one side only")
		}
		if s.Struct != nil {
			if f, err := compareFields(s.Struct.Fields, o.Struct.Fields); err != nil {
				return name + "." + f, err
			}
		}
	}
	if len(src) > len(ours) {
		return src[len(ours)].Name, fmt.Errorf("the source describes %d fields; this machine expects %d", len(src), len(ours))
	}
	return "", nil
}

func eqp(a, b *int64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
