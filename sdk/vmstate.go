package sdk

import (
	"reflect"
	"strconv"
	"strings"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

// Option configures a vmstate section or subsection.
type Option interface {
	apply(*sectionConfig)
}

type sectionConfig struct {
	version     uint32
	minVersion  uint32
	minSet      bool
	instance    int32
	subsections []*SubsectionDecl
}

type optionFunc func(*sectionConfig)

func (f optionFunc) apply(c *sectionConfig) { f(c) }

// Version sets the section's version (default 1). Fields tagged since=N are
// on the wire only in streams of version N or later.
func Version(v uint32) Option { return optionFunc(func(c *sectionConfig) { c.version = v }) }

// MinimumVersion sets the oldest stream version the section loads (default:
// the section version).
func MinimumVersion(v uint32) Option {
	return optionFunc(func(c *sectionConfig) { c.minVersion, c.minSet = v, true })
}

// instanceOption sets the section's instance id.
type instanceOption int32

func (o instanceOption) apply(c *sectionConfig) { c.instance = int32(o) }

// Instance sets a fixed instance id for the section.
func Instance(id int32) Option { return instanceOption(id) }

// InstanceAny asks the host for the next free instance id for the section's
// name. It is the default.
const InstanceAny = instanceOption(abi.InstanceAny)

// Section is a vmstate section built from a Go struct by reflection. The
// struct must stay at a fixed address for the life of the plugin: use a
// package-level variable (Go's collector does not move globals).
type Section struct {
	ptr    any
	layout abi.Section // top-level offsets are relative to the struct
	subs   []*SubsectionDecl
	err    error
}

// SubsectionDecl is a subsection attached to a section. It is an Option, so
// it is passed to VMState (or NewSection) like Version.
type SubsectionDecl struct {
	sec    *Section
	needed func() bool
}

func (d *SubsectionDecl) apply(c *sectionConfig) { c.subsections = append(c.subsections, d) }

// Subsection declares a subsection of the section it is passed to. ptr
// points to the struct holding its fields (a package-level variable, like the
// section's); needed says whether the subsection goes on the wire at save
// time (nil: always). opts may set the subsection's own Version and
// MinimumVersion.
func Subsection(name string, ptr any, needed func() bool, opts ...Option) *SubsectionDecl {
	sec, _ := NewSection(name, ptr, opts...)
	return &SubsectionDecl{sec: sec, needed: needed}
}

// NewSection builds a section from the struct ptr points to without
// registering it; VMState builds and registers. Every field of the struct
// is part of the section unless tagged `vmstate:"-"`. The tag is
//
//	vmstate:"name,since=N,if=COND"
//
// where name defaults to the Go field name, since=N marks a field introduced
// in section version N, and COND gates the field's existence on a device
// property: "prop" (bool true or integer non-zero), "!prop", "prop==N",
// "prop!=N", "prop>=N", "prop>N", "prop<N" or "prop<=N".
//
// Supported field types: uint8..uint64, int8..int64, bool, fixed arrays of
// those (arrays of uint8 are byte buffers), nested structs and arrays of
// structs (a nested struct carries no version on the wire, so its fields
// may use if= but not since=). int, uint, uintptr, pointers, slices, maps,
// strings, interfaces and floats are refused with an error naming the field.
func NewSection(name string, ptr any, opts ...Option) (*Section, error) {
	cfg := sectionConfig{version: 1, instance: abi.InstanceAny}
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if !cfg.minSet {
		cfg.minVersion = cfg.version
	}
	s := &Section{ptr: ptr, subs: cfg.subsections}
	s.layout = abi.Section{Name: name, InstanceID: cfg.instance, VersionID: cfg.version, MinimumVersionID: cfg.minVersion}
	s.err = s.build(name, ptr, cfg)
	if s.err != nil {
		return s, s.err
	}
	return s, nil
}

func (s *Section) build(name string, ptr any, cfg sectionConfig) error {
	if name == "" {
		return tinyfmt.Errorf("vmstate: empty section name")
	}
	v := reflect.ValueOf(ptr)
	if !v.IsValid() || v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return tinyfmt.Errorf("vmstate %s: need a non-nil pointer to a struct, got %T", name, ptr)
	}
	if cfg.version == 0 {
		return tinyfmt.Errorf("vmstate %s: version must be at least 1", name)
	}
	if cfg.minVersion > cfg.version {
		return tinyfmt.Errorf("vmstate %s: minimum version %d above version %d", name, cfg.minVersion, cfg.version)
	}
	fields, err := structFields(v.Elem().Type(), "", cfg.version, true)
	if err != nil {
		return tinyfmt.Errorf("vmstate %s: %w", name, err)
	}
	s.layout.Fields = fields
	for _, sub := range cfg.subsections {
		if sub == nil || sub.sec == nil {
			return tinyfmt.Errorf("vmstate %s: nil subsection", name)
		}
		if sub.sec.err != nil {
			return tinyfmt.Errorf("vmstate %s: subsection: %w", name, sub.sec.err)
		}
		if len(sub.sec.subs) != 0 {
			return tinyfmt.Errorf("vmstate %s: subsection %s has subsections of its own; attach them to %s", name, sub.sec.layout.Name, name)
		}
	}
	// The relative layout must already be self-consistent.
	rel := s.Layout()
	if err := rel.Validate(0); err != nil {
		return err
	}
	return nil
}

// Err returns the error found while building the section, if any.
func (s *Section) Err() error { return s.err }

// Name returns the section's name.
func (s *Section) Name() string { return s.layout.Name }

// Layout returns the section's schema with offsets relative to the start
// of each struct (section and subsections alike), and NeededID -1 on
// subsections. It is what host-side tests inspect.
func (s *Section) Layout() *abi.Section {
	out := s.layout
	out.Fields = append([]abi.Field(nil), s.layout.Fields...)
	out.Subsections = nil
	for _, sub := range s.subs {
		l := sub.sec.Layout()
		l.NeededID = -1
		out.Subsections = append(out.Subsections, *l)
	}
	return &out
}

// resolve returns the schema with absolute addresses: addr maps each
// struct pointer to its address in linear memory, and neededID assigns the
// id of each subsection's needed callback.
func (s *Section) resolve(addr func(any) (uint32, error), neededID func(func() bool) int32) (*abi.Section, error) {
	if s.err != nil {
		return nil, s.err
	}
	out, err := relocate(&s.layout, s.ptr, addr)
	if err != nil {
		return nil, err
	}
	for _, sub := range s.subs {
		so, err := relocate(&sub.sec.layout, sub.sec.ptr, addr)
		if err != nil {
			return nil, err
		}
		so.NeededID = neededID(sub.needed)
		out.Subsections = append(out.Subsections, *so)
	}
	return out, nil
}

func relocate(l *abi.Section, ptr any, addr func(any) (uint32, error)) (*abi.Section, error) {
	base, err := addr(ptr)
	if err != nil {
		return nil, tinyfmt.Errorf("vmstate %s: %w", l.Name, err)
	}
	out := *l
	out.Subsections = nil
	out.Fields = make([]abi.Field, len(l.Fields))
	for i, f := range l.Fields {
		if uint64(base)+uint64(f.Offset) > 0xffffffff {
			return nil, tinyfmt.Errorf("vmstate %s.%s: address beyond 4 GiB", l.Name, f.Name)
		}
		f.Offset += base
		out.Fields[i] = f
	}
	return &out, nil
}

// structFields lists the fields of struct type t. top is true for a
// section's own struct (since= allowed) and false for nested structs.
func structFields(t reflect.Type, path string, version uint32, top bool) ([]abi.Field, error) {
	var fields []abi.Field
	names := map[string]string{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		goPath := path + sf.Name
		tag, hasTag := sf.Tag.Lookup("vmstate")
		if tag == "-" {
			continue
		}
		if sf.Name == "_" && !hasTag {
			continue // padding
		}
		name, since, cond, err := parseTag(tag)
		if err != nil {
			return nil, tinyfmt.Errorf("field %s: %w", goPath, err)
		}
		if name == "" {
			name = sf.Name
		}
		if prev, dup := names[name]; dup {
			return nil, tinyfmt.Errorf("field %s: name %q already used by field %s", goPath, name, prev)
		}
		names[name] = goPath
		if since != 0 && !top {
			return nil, tinyfmt.Errorf("field %s: since=%d in a nested struct: a nested struct carries no version on the wire; gate the field on a property with if= instead", goPath, since)
		}
		if since > version {
			return nil, tinyfmt.Errorf("field %s: since=%d is after the section version %d", goPath, since, version)
		}
		f, err := fieldFor(sf.Type, goPath, version)
		if err != nil {
			return nil, err
		}
		f.Name = name
		f.Offset = uint32(sf.Offset)
		f.VersionID = since
		f.Exists = cond
		fields = append(fields, f)
	}
	return fields, nil
}

// fieldFor maps a Go type to a field type, element size and count.
func fieldFor(t reflect.Type, goPath string, version uint32) (abi.Field, error) {
	if ft, ok := scalarTypes[t.Kind()]; ok {
		return abi.Field{Type: ft, Size: uint32(t.Size()), Count: 1}, nil
	}
	switch t.Kind() {
	case reflect.Array:
		if t.Len() == 0 {
			return abi.Field{}, tinyfmt.Errorf("field %s: zero-length array %s", goPath, t)
		}
		if t.Elem().Kind() == reflect.Uint8 {
			return abi.Field{Type: abi.FieldBuffer, Size: uint32(t.Len()), Count: 1}, nil
		}
		elem, err := fieldFor(t.Elem(), goPath+"[]", version)
		if err != nil {
			return abi.Field{}, err
		}
		n := uint64(elem.Count) * uint64(t.Len())
		if n > 1<<31 {
			return abi.Field{}, tinyfmt.Errorf("field %s: array of %d elements is too large", goPath, n)
		}
		elem.Count = uint32(n)
		return elem, nil
	case reflect.Struct:
		members, err := structFields(t, goPath+".", version, false)
		if err != nil {
			return abi.Field{}, err
		}
		if len(members) == 0 {
			return abi.Field{}, tinyfmt.Errorf("field %s: struct %s has no migratable fields", goPath, t)
		}
		name := t.Name()
		if name == "" {
			name = strings.ReplaceAll(goPath, "[]", "")
		}
		return abi.Field{Type: abi.FieldStruct, Size: uint32(t.Size()), Count: 1,
			Struct: &abi.Section{Name: name, Fields: members}}, nil
	case reflect.Int, reflect.Uint, reflect.Uintptr:
		return abi.Field{}, tinyfmt.Errorf("field %s: type %s has a platform-dependent size; use a sized integer type (int32, uint64, ...)", goPath, t)
	}
	return abi.Field{}, tinyfmt.Errorf("field %s: type %s is not supported in vmstate (use fixed-size integers, bool, fixed arrays or structs; tag it `vmstate:\"-\"` to leave it out)", goPath, t)
}

var scalarTypes = map[reflect.Kind]abi.FieldType{
	reflect.Uint8: abi.FieldU8, reflect.Uint16: abi.FieldU16, reflect.Uint32: abi.FieldU32, reflect.Uint64: abi.FieldU64,
	reflect.Int8: abi.FieldI8, reflect.Int16: abi.FieldI16, reflect.Int32: abi.FieldI32, reflect.Int64: abi.FieldI64,
	reflect.Bool: abi.FieldBool,
}

// parseTag splits `name,since=N,if=COND`.
func parseTag(tag string) (name string, since uint32, cond *abi.Condition, err error) {
	if tag == "" {
		return "", 0, nil, nil
	}
	parts := strings.Split(tag, ",")
	name = strings.TrimSpace(parts[0])
	for _, opt := range parts[1:] {
		opt = strings.TrimSpace(opt)
		key, val, ok := strings.Cut(opt, "=")
		if !ok {
			return "", 0, nil, tinyfmt.Errorf("tag option %q: want key=value", opt)
		}
		switch key {
		case "since":
			n, perr := strconv.ParseUint(val, 10, 32)
			if perr != nil {
				return "", 0, nil, tinyfmt.Errorf("tag option since=%q: not a version number", val)
			}
			since = uint32(n)
		case "if":
			c, cerr := parseCond(val)
			if cerr != nil {
				return "", 0, nil, cerr
			}
			cond = c
		default:
			return "", 0, nil, tinyfmt.Errorf("unknown tag option %q (want since= or if=)", key)
		}
	}
	return name, since, cond, nil
}

func parseCond(s string) (*abi.Condition, error) {
	ops := []struct {
		text string
		op   abi.CondOp
		add  uint64 // for > and <=, compare with N+1
	}{
		{"==", abi.CondEQ, 0}, {"!=", abi.CondNE, 0}, {">=", abi.CondGE, 0}, {"<=", abi.CondLT, 1},
		{">", abi.CondGE, 1}, {"<", abi.CondLT, 0},
	}
	for _, o := range ops {
		prop, val, ok := strings.Cut(s, o.text)
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(val), 0, 64)
		if err != nil {
			return nil, tinyfmt.Errorf("condition %q: %q is not an unsigned number", s, val)
		}
		if o.add == 1 && n == ^uint64(0) {
			return nil, tinyfmt.Errorf("condition %q: value out of range", s)
		}
		return &abi.Condition{Prop: strings.TrimSpace(prop), Op: o.op, Value: n + o.add}, nil
	}
	if p, neg := strings.CutPrefix(s, "!"); neg {
		return &abi.Condition{Prop: strings.TrimSpace(p), Op: abi.CondEQ, Value: 0}, nil
	}
	if s == "" {
		return nil, tinyfmt.Errorf("empty condition in if=")
	}
	return &abi.Condition{Prop: strings.TrimSpace(s), Op: abi.CondNE, Value: 0}, nil
}
