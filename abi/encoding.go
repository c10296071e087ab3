package abi

import (
	"encoding/binary"
	"errors"

	"wasmvmm/internal/tinyfmt"
)

// PropType is the type of a device property.
type PropType uint8

// Property types.
const (
	PropBool   PropType = 1
	PropU8     PropType = 2
	PropU16    PropType = 3
	PropU32    PropType = 4
	PropU64    PropType = 5
	PropString PropType = 6
)

var propTypeNames = map[PropType]string{
	PropBool: "bool", PropU8: "u8", PropU16: "u16", PropU32: "u32", PropU64: "u64", PropString: "string",
}

// String returns the type's name as used in TOML files and messages.
func (t PropType) String() string {
	if n, ok := propTypeNames[t]; ok {
		return n
	}
	return tinyfmt.Sprintf("proptype(%d)", uint8(t))
}

// MaxInt returns the largest value an integer property of this type holds
// (1 for bool, 0 for string).
func (t PropType) MaxInt() uint64 {
	switch t {
	case PropBool:
		return 1
	case PropU8:
		return 0xff
	case PropU16:
		return 0xffff
	case PropU32:
		return 0xffffffff
	case PropU64:
		return ^uint64(0)
	}
	return 0
}

// Property is one declared device property with its default.
type Property struct {
	Name       string
	Type       PropType
	DefaultInt uint64 // bool and integer types
	DefaultStr string // string type
	Doc        string
}

// DeviceInfo is what a plugin declares in dev_describe through device_declare.
type DeviceInfo struct {
	Name       string // device type name, e.g. "serial-16550"
	Version    string // plugin release, semver, e.g. "1.0.0"
	Properties []Property
}

// FieldType is the wire type of a vmstate field. Integers are little endian
// in plugin memory and big endian on the migration stream.
type FieldType uint8

// Field types.
const (
	FieldU8     FieldType = 1
	FieldU16    FieldType = 2
	FieldU32    FieldType = 3
	FieldU64    FieldType = 4
	FieldI8     FieldType = 5
	FieldI16    FieldType = 6
	FieldI32    FieldType = 7
	FieldI64    FieldType = 8
	FieldBool   FieldType = 9  // one byte, 0 or 1
	FieldBuffer FieldType = 10 // raw bytes, Size bytes per element
	FieldStruct FieldType = 11 // nested struct: Struct describes one element, Size is the stride
)

var fieldTypeNames = map[FieldType]string{
	FieldU8: "uint8", FieldU16: "uint16", FieldU32: "uint32", FieldU64: "uint64",
	FieldI8: "int8", FieldI16: "int16", FieldI32: "int32", FieldI64: "int64",
	FieldBool: "bool", FieldBuffer: "buffer", FieldStruct: "struct",
}

// String returns the type's name in the style of QEMU's vmstate info names.
func (t FieldType) String() string {
	if n, ok := fieldTypeNames[t]; ok {
		return n
	}
	return tinyfmt.Sprintf("fieldtype(%d)", uint8(t))
}

// ScalarSize returns the fixed size of a scalar type, or 0 for buffers and
// structs, whose size the field gives.
func (t FieldType) ScalarSize() uint32 {
	switch t {
	case FieldU8, FieldI8, FieldBool:
		return 1
	case FieldU16, FieldI16:
		return 2
	case FieldU32, FieldI32:
		return 4
	case FieldU64, FieldI64:
		return 8
	}
	return 0
}

// CondOp compares a property with a value in a field's existence test.
type CondOp uint8

// Condition operators.
const (
	CondEQ CondOp = 1
	CondNE CondOp = 2
	CondGE CondOp = 3
	CondLT CondOp = 4
)

// Condition gates a field on a property: the field exists on the wire only
// when (property Op Value) holds. Bool properties compare as 0 or 1.
type Condition struct {
	Prop  string
	Op    CondOp
	Value uint64
}

// Holds evaluates the condition for a property value.
func (c Condition) Holds(v uint64) bool {
	switch c.Op {
	case CondEQ:
		return v == c.Value
	case CondNE:
		return v != c.Value
	case CondGE:
		return v >= c.Value
	case CondLT:
		return v < c.Value
	}
	return false
}

// Field is one vmstate field.
type Field struct {
	Name      string
	Type      FieldType
	Offset    uint32 // address in plugin linear memory; relative to the element for struct members
	Size      uint32 // size of one element (the stride for structs)
	Count     uint32 // number of elements, at least 1
	VersionID uint32 // section version that introduced the field (0: always)
	Exists    *Condition
	Struct    *Section // element layout for FieldStruct; its version is not on the wire
}

// Section is a vmstate description: a device's top-level section, a
// subsection, or the layout of a nested struct.
type Section struct {
	Name             string
	InstanceID       int32 // -1: take the next free instance id for Name
	VersionID        uint32
	MinimumVersionID uint32
	Fields           []Field
	Subsections      []Section
	NeededID         int32 // subsections: the id passed to dev_subsection_needed
}

// InstanceAny asks the host for the next free instance id.
const InstanceAny int32 = -1

// Limits on decoded descriptions, so a hostile plugin cannot make the host
// allocate without bound.
const (
	MaxNameLen    = 256
	MaxStringLen  = 4096
	MaxProperties = 256
	MaxFields     = 4096
	MaxDepth      = 8
)

const (
	tagDeviceInfo = 0xD1
	tagSection    = 0x5E
)

type writer struct{ b []byte }

func (w *writer) u8(v uint8)   { w.b = append(w.b, v) }
func (w *writer) u32(v uint32) { w.b = binary.LittleEndian.AppendUint32(w.b, v) }
func (w *writer) u64(v uint64) { w.b = binary.LittleEndian.AppendUint64(w.b, v) }
func (w *writer) str(s string) { w.u32(uint32(len(s))); w.b = append(w.b, s...) }

type reader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("truncated")

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = tinyfmt.Errorf("at offset %d: %w", r.off, errTruncated)
		return false
	}
	return true
}

func (r *reader) u8() uint8 {
	if !r.need(1) {
		return 0
	}
	v := r.b[r.off]
	r.off++
	return v
}

func (r *reader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b[r.off:])
	r.off += 8
	return v
}

func (r *reader) str(limit int) string {
	n := r.u32()
	if r.err != nil {
		return ""
	}
	if int64(n) > int64(limit) {
		r.err = tinyfmt.Errorf("at offset %d: string of %d bytes exceeds limit %d", r.off, n, limit)
		return ""
	}
	if !r.need(int(n)) {
		return ""
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n)
	return s
}

func (r *reader) count(limit int, what string) int {
	n := r.u32()
	if r.err == nil && int64(n) > int64(limit) {
		r.err = tinyfmt.Errorf("at offset %d: %d %s exceed limit %d", r.off, n, what, limit)
	}
	if r.err != nil {
		return 0
	}
	return int(n)
}

// MarshalDeviceInfo encodes a DeviceInfo for device_declare.
func MarshalDeviceInfo(d *DeviceInfo) []byte {
	w := &writer{}
	w.u8(tagDeviceInfo)
	w.str(d.Name)
	w.str(d.Version)
	w.u32(uint32(len(d.Properties)))
	for _, p := range d.Properties {
		w.str(p.Name)
		w.u8(uint8(p.Type))
		w.u64(p.DefaultInt)
		w.str(p.DefaultStr)
		w.str(p.Doc)
	}
	return w.b
}

// UnmarshalDeviceInfo decodes and validates a device_declare payload.
func UnmarshalDeviceInfo(b []byte) (*DeviceInfo, error) {
	r := &reader{b: b}
	if tag := r.u8(); r.err == nil && tag != tagDeviceInfo {
		return nil, tinyfmt.Errorf("device info: bad tag 0x%02x", tag)
	}
	d := &DeviceInfo{Name: r.str(MaxNameLen), Version: r.str(MaxNameLen)}
	n := r.count(MaxProperties, "properties")
	for i := 0; i < n && r.err == nil; i++ {
		d.Properties = append(d.Properties, Property{
			Name: r.str(MaxNameLen), Type: PropType(r.u8()), DefaultInt: r.u64(),
			DefaultStr: r.str(MaxStringLen), Doc: r.str(MaxStringLen),
		})
	}
	if r.err != nil {
		return nil, tinyfmt.Errorf("device info: %w", r.err)
	}
	if r.off != len(b) {
		return nil, tinyfmt.Errorf("device info: %d trailing bytes", len(b)-r.off)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// Validate checks names, types and defaults.
func (d *DeviceInfo) Validate() error {
	if !validName(d.Name) {
		return tinyfmt.Errorf("device info: invalid device name %q", d.Name)
	}
	seen := map[string]bool{}
	for _, p := range d.Properties {
		if !validName(p.Name) {
			return tinyfmt.Errorf("device %s: invalid property name %q", d.Name, p.Name)
		}
		if seen[p.Name] {
			return tinyfmt.Errorf("device %s: property %q declared twice", d.Name, p.Name)
		}
		seen[p.Name] = true
		if _, ok := propTypeNames[p.Type]; !ok {
			return tinyfmt.Errorf("device %s: property %q has unknown type %d", d.Name, p.Name, p.Type)
		}
		if p.Type != PropString && p.DefaultInt > p.Type.MaxInt() {
			return tinyfmt.Errorf("device %s: property %q default %d does not fit %s", d.Name, p.Name, p.DefaultInt, p.Type)
		}
	}
	return nil
}

// MarshalSection encodes a Section for vmstate_register.
func MarshalSection(s *Section) []byte {
	w := &writer{}
	w.u8(tagSection)
	writeSection(w, s)
	return w.b
}

func writeSection(w *writer, s *Section) {
	w.str(s.Name)
	w.u32(uint32(s.InstanceID))
	w.u32(s.VersionID)
	w.u32(s.MinimumVersionID)
	w.u32(uint32(s.NeededID))
	w.u32(uint32(len(s.Fields)))
	for _, f := range s.Fields {
		w.str(f.Name)
		w.u8(uint8(f.Type))
		w.u32(f.Offset)
		w.u32(f.Size)
		w.u32(f.Count)
		w.u32(f.VersionID)
		if f.Exists != nil {
			w.u8(1)
			w.str(f.Exists.Prop)
			w.u8(uint8(f.Exists.Op))
			w.u64(f.Exists.Value)
		} else {
			w.u8(0)
		}
		if f.Struct != nil {
			w.u8(1)
			writeSection(w, f.Struct)
		} else {
			w.u8(0)
		}
	}
	w.u32(uint32(len(s.Subsections)))
	for i := range s.Subsections {
		writeSection(w, &s.Subsections[i])
	}
}

// UnmarshalSection decodes a vmstate_register payload. It checks structure
// only; the host validates the layout against the plugin's memory.
func UnmarshalSection(b []byte) (*Section, error) {
	r := &reader{b: b}
	if tag := r.u8(); r.err == nil && tag != tagSection {
		return nil, tinyfmt.Errorf("vmstate: bad tag 0x%02x", tag)
	}
	budget := MaxFields
	s := readSection(r, 0, &budget)
	if r.err != nil {
		return nil, tinyfmt.Errorf("vmstate: %w", r.err)
	}
	if r.off != len(b) {
		return nil, tinyfmt.Errorf("vmstate: %d trailing bytes", len(b)-r.off)
	}
	return s, nil
}

func readSection(r *reader, depth int, budget *int) *Section {
	if depth > MaxDepth {
		r.err = tinyfmt.Errorf("at offset %d: nesting deeper than %d", r.off, MaxDepth)
		return nil
	}
	s := &Section{
		Name: r.str(MaxNameLen), InstanceID: int32(r.u32()), VersionID: r.u32(),
		MinimumVersionID: r.u32(), NeededID: int32(r.u32()),
	}
	n := r.count(*budget, "fields")
	*budget -= n
	for i := 0; i < n && r.err == nil; i++ {
		f := Field{Name: r.str(MaxNameLen), Type: FieldType(r.u8()), Offset: r.u32(), Size: r.u32(), Count: r.u32(), VersionID: r.u32()}
		if r.u8() == 1 {
			f.Exists = &Condition{Prop: r.str(MaxNameLen), Op: CondOp(r.u8()), Value: r.u64()}
		}
		if r.u8() == 1 {
			f.Struct = readSection(r, depth+1, budget)
		}
		s.Fields = append(s.Fields, f)
	}
	m := r.count(MaxFields, "subsections")
	for i := 0; i < m && r.err == nil; i++ {
		if sub := readSection(r, depth+1, budget); sub != nil {
			s.Subsections = append(s.Subsections, *sub)
		}
	}
	return s
}

// Validate checks a section's own consistency: names, types, sizes, versions,
// conditions and that no two fields overlap. memSize bounds the absolute
// field ranges (pass 0 to skip that check, e.g. for nested layouts).
func (s *Section) Validate(memSize uint64) error {
	return s.validate(memSize, true)
}

func (s *Section) validate(memSize uint64, top bool) error {
	if s.Name == "" || len(s.Name) > MaxNameLen {
		return tinyfmt.Errorf("vmstate: invalid section name %q", s.Name)
	}
	if top && s.MinimumVersionID > s.VersionID {
		return tinyfmt.Errorf("vmstate %s: minimum version %d above version %d", s.Name, s.MinimumVersionID, s.VersionID)
	}
	type span struct {
		lo, hi uint64
		name   string
	}
	var spans []span
	names := map[string]bool{}
	for _, f := range s.Fields {
		if !validName(f.Name) {
			return tinyfmt.Errorf("vmstate %s: invalid field name %q", s.Name, f.Name)
		}
		if names[f.Name] {
			return tinyfmt.Errorf("vmstate %s: field %q declared twice", s.Name, f.Name)
		}
		names[f.Name] = true
		if _, ok := fieldTypeNames[f.Type]; !ok {
			return tinyfmt.Errorf("vmstate %s.%s: unknown field type %d", s.Name, f.Name, f.Type)
		}
		if f.Count == 0 {
			return tinyfmt.Errorf("vmstate %s.%s: count is zero", s.Name, f.Name)
		}
		if sz := f.Type.ScalarSize(); sz != 0 && f.Size != sz {
			return tinyfmt.Errorf("vmstate %s.%s: %s has size %d, want %d", s.Name, f.Name, f.Type, f.Size, sz)
		}
		if f.Size == 0 {
			return tinyfmt.Errorf("vmstate %s.%s: size is zero", s.Name, f.Name)
		}
		if top && f.VersionID > s.VersionID {
			return tinyfmt.Errorf("vmstate %s.%s: introduced in version %d, after section version %d", s.Name, f.Name, f.VersionID, s.VersionID)
		}
		if f.Exists != nil && (!validName(f.Exists.Prop) || f.Exists.Op < CondEQ || f.Exists.Op > CondLT) {
			return tinyfmt.Errorf("vmstate %s.%s: malformed existence condition", s.Name, f.Name)
		}
		if (f.Type == FieldStruct) != (f.Struct != nil) {
			return tinyfmt.Errorf("vmstate %s.%s: struct layout present iff type is struct", s.Name, f.Name)
		}
		if f.Struct != nil {
			if err := f.Struct.validate(uint64(f.Size), false); err != nil {
				return tinyfmt.Errorf("vmstate %s.%s: %w", s.Name, f.Name, err)
			}
			if len(f.Struct.Subsections) != 0 {
				return tinyfmt.Errorf("vmstate %s.%s: a nested struct cannot have subsections", s.Name, f.Name)
			}
		}
		total := uint64(f.Size) * uint64(f.Count)
		lo, hi := uint64(f.Offset), uint64(f.Offset)+total
		if memSize != 0 && hi > memSize {
			return tinyfmt.Errorf("vmstate %s.%s: bytes [%#x, %#x) outside memory of %#x bytes", s.Name, f.Name, lo, hi, memSize)
		}
		for _, o := range spans {
			if lo < o.hi && o.lo < hi {
				return tinyfmt.Errorf("vmstate %s: field %q [%#x, %#x) overlaps field %q [%#x, %#x)", s.Name, f.Name, lo, hi, o.name, o.lo, o.hi)
			}
		}
		spans = append(spans, span{lo, hi, f.Name})
	}
	subs := map[string]bool{}
	for i := range s.Subsections {
		sub := &s.Subsections[i]
		if subs[sub.Name] {
			return tinyfmt.Errorf("vmstate %s: subsection %q declared twice", s.Name, sub.Name)
		}
		subs[sub.Name] = true
		if err := sub.validate(memSize, true); err != nil {
			return err
		}
	}
	return nil
}

// validName accepts the names used for devices, properties and fields:
// 1..MaxNameLen bytes of letters, digits and "_-./:[]".
func validName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_' || c == '-' || c == '.' || c == '/' || c == ':' || c == '[' || c == ']':
		default:
			return false
		}
	}
	return true
}
