package sdk

import (
	"strings"
	"testing"
	"unsafe"

	"wasmvmm/abi"
)

type inner struct {
	A uint16 `vmstate:"a"`
	B uint8  `vmstate:"b,if=flag"`
}

type sample struct {
	U8      uint8          `vmstate:"u8"`
	I16     int16          `vmstate:"i16"`
	U32     uint32         `vmstate:"u32,since=2"`
	Flag    bool           `vmstate:"flag"`
	I64     int64          // name defaults to the Go field name
	Words   [4]uint16      `vmstate:"words"`
	Buf     [7]byte        `vmstate:"buf,if=level>=2"`
	Grid    [2][3]uint32   `vmstate:"grid"`
	Rows    [3][5]byte     `vmstate:"rows"`
	Nested  inner          `vmstate:"nested"`
	Many    [3]inner       `vmstate:"many,if=!flag"`
	Skipped map[string]int `vmstate:"-"`
	Ptr     *int           `vmstate:"-"`
	U64     uint64         `vmstate:"u64,if=level<3"`
}

func field(t *testing.T, s *abi.Section, name string) abi.Field {
	t.Helper()
	for _, f := range s.Fields {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("section %s has no field %q", s.Name, name)
	return abi.Field{}
}

func TestSectionLayout(t *testing.T) {
	var v sample
	sec, err := NewSection("dev", &v, Version(3), MinimumVersion(2), InstanceAny)
	if err != nil {
		t.Fatal(err)
	}
	l := sec.Layout()
	if l.Name != "dev" || l.VersionID != 3 || l.MinimumVersionID != 2 || l.InstanceID != abi.InstanceAny {
		t.Fatalf("header = %+v", l)
	}
	if err := l.Validate(uint64(unsafe.Sizeof(v))); err != nil {
		t.Fatalf("relative layout does not validate: %v", err)
	}
	want := []struct {
		name   string
		typ    abi.FieldType
		offset uintptr
		size   uint32
		count  uint32
		since  uint32
	}{
		{"u8", abi.FieldU8, unsafe.Offsetof(v.U8), 1, 1, 0},
		{"i16", abi.FieldI16, unsafe.Offsetof(v.I16), 2, 1, 0},
		{"u32", abi.FieldU32, unsafe.Offsetof(v.U32), 4, 1, 2},
		{"flag", abi.FieldBool, unsafe.Offsetof(v.Flag), 1, 1, 0},
		{"I64", abi.FieldI64, unsafe.Offsetof(v.I64), 8, 1, 0},
		{"words", abi.FieldU16, unsafe.Offsetof(v.Words), 2, 4, 0},
		{"buf", abi.FieldBuffer, unsafe.Offsetof(v.Buf), 7, 1, 0},
		{"grid", abi.FieldU32, unsafe.Offsetof(v.Grid), 4, 6, 0},
		{"rows", abi.FieldBuffer, unsafe.Offsetof(v.Rows), 5, 3, 0},
		{"nested", abi.FieldStruct, unsafe.Offsetof(v.Nested), uint32(unsafe.Sizeof(v.Nested)), 1, 0},
		{"many", abi.FieldStruct, unsafe.Offsetof(v.Many), uint32(unsafe.Sizeof(v.Many[0])), 3, 0},
		{"u64", abi.FieldU64, unsafe.Offsetof(v.U64), 8, 1, 0},
	}
	if len(l.Fields) != len(want) {
		t.Fatalf("got %d fields, want %d: %+v", len(l.Fields), len(want), l.Fields)
	}
	for i, w := range want {
		f := l.Fields[i]
		if f.Name != w.name || f.Type != w.typ || f.Offset != uint32(w.offset) || f.Size != w.size || f.Count != w.count || f.VersionID != w.since {
			t.Errorf("field %d = {%s %s off=%d size=%d count=%d since=%d}, want {%s %s off=%d size=%d count=%d since=%d}",
				i, f.Name, f.Type, f.Offset, f.Size, f.Count, f.VersionID, w.name, w.typ, w.offset, w.size, w.count, w.since)
		}
	}

	// Conditions.
	conds := map[string]abi.Condition{
		"buf":  {Prop: "level", Op: abi.CondGE, Value: 2},
		"many": {Prop: "flag", Op: abi.CondEQ, Value: 0},
		"u64":  {Prop: "level", Op: abi.CondLT, Value: 3},
	}
	for _, f := range l.Fields {
		c, ok := conds[f.Name]
		switch {
		case ok && (f.Exists == nil || *f.Exists != c):
			t.Errorf("field %s: condition %+v, want %+v", f.Name, f.Exists, c)
		case !ok && f.Exists != nil:
			t.Errorf("field %s: unexpected condition %+v", f.Name, f.Exists)
		}
	}

	// Nested layouts are relative to the element.
	for _, name := range []string{"nested", "many"} {
		n := field(t, l, name).Struct
		if n == nil || len(n.Fields) != 2 {
			t.Fatalf("%s: nested layout %+v", name, n)
		}
		a, b := n.Fields[0], n.Fields[1]
		if a.Name != "a" || a.Offset != uint32(unsafe.Offsetof(v.Nested.A)) || a.Type != abi.FieldU16 {
			t.Errorf("%s.a = %+v", name, a)
		}
		if b.Name != "b" || b.Offset != uint32(unsafe.Offsetof(v.Nested.B)) || b.Exists == nil || b.Exists.Prop != "flag" || b.Exists.Op != abi.CondNE {
			t.Errorf("%s.b = %+v", name, b)
		}
		if n.VersionID != 0 {
			t.Errorf("%s: nested layout carries version %d", name, n.VersionID)
		}
	}

	// The encoding round-trips.
	back, err := abi.UnmarshalSection(abi.MarshalSection(l))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Fields) != len(l.Fields) || back.Fields[10].Struct.Fields[1].Exists.Prop != "flag" {
		t.Fatalf("round trip lost data: %+v", back)
	}
}

func TestSectionDefaults(t *testing.T) {
	var v struct {
		A uint32 `vmstate:"a"`
	}
	sec, err := NewSection("d", &v)
	if err != nil {
		t.Fatal(err)
	}
	l := sec.Layout()
	if l.VersionID != 1 || l.MinimumVersionID != 1 || l.InstanceID != abi.InstanceAny {
		t.Fatalf("defaults = %+v", l)
	}
	sec, err = NewSection("d", &v, Version(4), Instance(2))
	if err != nil {
		t.Fatal(err)
	}
	if l := sec.Layout(); l.MinimumVersionID != 4 || l.InstanceID != 2 {
		t.Fatalf("minimum version follows version: %+v", l)
	}
}

func TestSubsections(t *testing.T) {
	var main struct {
		A uint8 `vmstate:"a"`
	}
	var sub struct {
		X [16]byte `vmstate:"x"`
		N uint8    `vmstate:"n"`
	}
	needed := false
	sec, err := NewSection("dev", &main, Version(2),
		Subsection("dev/extra", &sub, func() bool { return needed }, Version(3), MinimumVersion(1)))
	if err != nil {
		t.Fatal(err)
	}
	l := sec.Layout()
	if len(l.Subsections) != 1 {
		t.Fatalf("subsections = %+v", l.Subsections)
	}
	s := l.Subsections[0]
	if s.Name != "dev/extra" || s.VersionID != 3 || s.MinimumVersionID != 1 || len(s.Fields) != 2 {
		t.Fatalf("subsection = %+v", s)
	}
	if f := s.Fields[1]; f.Offset != uint32(unsafe.Offsetof(sub.N)) || f.Type != abi.FieldU8 {
		t.Fatalf("subsection field = %+v", f)
	}

	// Resolution: absolute offsets per struct and needed ids in order.
	bases := map[any]uint32{any(&main): 0x1000, any(&sub): 0x2000}
	var ids []func() bool
	abs, err := sec.resolve(func(p any) (uint32, error) { return bases[p], nil }, func(f func() bool) int32 {
		ids = append(ids, f)
		return int32(len(ids) - 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if abs.Fields[0].Offset != 0x1000 || abs.Subsections[0].Fields[1].Offset != 0x2000+uint32(unsafe.Offsetof(sub.N)) {
		t.Fatalf("absolute offsets: %+v", abs)
	}
	if abs.Subsections[0].NeededID != 0 || len(ids) != 1 {
		t.Fatalf("needed id = %d", abs.Subsections[0].NeededID)
	}
	if ids[0]() {
		t.Fatal("needed callback not the declared one")
	}
	needed = true
	if !ids[0]() {
		t.Fatal("needed callback not the declared one")
	}
	if err := abs.Validate(0x3000); err != nil {
		t.Fatal(err)
	}
	// The relative layout must not be changed by resolution.
	if sec.Layout().Fields[0].Offset != 0 {
		t.Fatal("resolve modified the section")
	}
}

func TestSectionErrors(t *testing.T) {
	type withInt struct {
		A int `vmstate:"a"`
	}
	type withSlice struct {
		OK uint8
		S  []byte `vmstate:"data"`
	}
	type withString struct{ Name string }
	type withFloat struct{ F float64 }
	type deep struct {
		In struct {
			P *int
		} `vmstate:"in"`
	}
	type nestedSince struct {
		In struct {
			X uint8 `vmstate:"x,since=2"`
		}
	}
	type late struct {
		X uint8 `vmstate:"x,since=5"`
	}
	type dup struct {
		A uint8 `vmstate:"x"`
		B uint8 `vmstate:"x"`
	}
	type badTag struct {
		A uint8 `vmstate:"a,when=3"`
	}
	type badCond struct {
		A uint8 `vmstate:"a,if=p>=x"`
	}
	type empty struct {
		In struct {
			X uint8 `vmstate:"-"`
		}
	}
	type zero struct {
		A [0]uint32
	}
	cases := []struct {
		name string
		ptr  any
		opts []Option
		want []string
	}{
		{"int", &withInt{}, nil, []string{"field A", "platform-dependent"}},
		{"slice", &withSlice{}, nil, []string{"field S", "[]uint8", "not supported"}},
		{"string", &withString{}, nil, []string{"field Name", "string"}},
		{"float", &withFloat{}, nil, []string{"field F", "float64"}},
		{"deep", &deep{}, nil, []string{"field In.P", "*int"}},
		{"nested since", &nestedSince{}, nil, []string{"field In.X", "nested struct carries no version"}},
		{"since after version", &late{}, []Option{Version(3)}, []string{"field X", "since=5"}},
		{"duplicate", &dup{}, nil, []string{"field B", `"x"`}},
		{"tag option", &badTag{}, nil, []string{"field A", "when"}},
		{"condition", &badCond{}, nil, []string{"field A", "not an unsigned number"}},
		{"empty struct", &empty{}, nil, []string{"field In", "no migratable fields"}},
		{"zero array", &zero{}, nil, []string{"field A", "zero-length"}},
		{"not a pointer", withInt{}, nil, []string{"pointer to a struct"}},
		{"nil", (*withInt)(nil), nil, []string{"pointer to a struct"}},
		{"version zero", &late{}, []Option{Version(0)}, []string{"version must be at least 1"}},
		{"min above version", &withFloat{}, []Option{Version(1), MinimumVersion(2)}, []string{"minimum version 2 above version 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewSection("dev", c.ptr, c.opts...)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// A bad subsection fails its parent.
	var ok struct{ A uint8 }
	_, err := NewSection("dev", &ok, Subsection("dev/sub", &withInt{}, nil))
	if err == nil || !strings.Contains(err.Error(), "field A") {
		t.Fatalf("bad subsection: %v", err)
	}
}

func TestParseCond(t *testing.T) {
	cases := map[string]abi.Condition{
		"p":       {Prop: "p", Op: abi.CondNE, Value: 0},
		"!p":      {Prop: "p", Op: abi.CondEQ, Value: 0},
		"p==3":    {Prop: "p", Op: abi.CondEQ, Value: 3},
		"p!=3":    {Prop: "p", Op: abi.CondNE, Value: 3},
		"p>=3":    {Prop: "p", Op: abi.CondGE, Value: 3},
		"p>3":     {Prop: "p", Op: abi.CondGE, Value: 4},
		"p<3":     {Prop: "p", Op: abi.CondLT, Value: 3},
		"p<=3":    {Prop: "p", Op: abi.CondLT, Value: 4},
		"p>=0x10": {Prop: "p", Op: abi.CondGE, Value: 16},
	}
	for in, want := range cases {
		got, err := parseCond(in)
		if err != nil || *got != want {
			t.Errorf("parseCond(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := parseCond(""); err == nil {
		t.Error("empty condition accepted")
	}
}

func TestCheckConditions(t *testing.T) {
	var v struct {
		A uint8 `vmstate:"a,if=missing"`
	}
	sec, err := NewSection("dev", &v)
	if err != nil {
		t.Fatal(err)
	}
	err = checkConditions(sec.Layout(), map[string]abi.PropType{"other": abi.PropU32})
	if err == nil || !strings.Contains(err.Error(), `"missing"`) || !strings.Contains(err.Error(), "dev.a") {
		t.Fatalf("undeclared property: %v", err)
	}
	err = checkConditions(sec.Layout(), map[string]abi.PropType{"missing": abi.PropString})
	if err == nil || !strings.Contains(err.Error(), "string property") {
		t.Fatalf("string property: %v", err)
	}
	if err := checkConditions(sec.Layout(), map[string]abi.PropType{"missing": abi.PropBool}); err != nil {
		t.Fatal(err)
	}
}
