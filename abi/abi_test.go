package abi

import (
	"reflect"
	"strings"
	"testing"
)

func TestMarker(t *testing.T) {
	name := MarkerName(Major, Minor)
	if name != "wasmvmm_abi_1_0" {
		t.Fatalf("marker name %q", name)
	}
	for _, c := range []struct {
		in       string
		maj, min int
		ok       bool
	}{
		{"wasmvmm_abi_1_0", 1, 0, true},
		{"wasmvmm_abi_2_7", 2, 7, true},
		{"wasmvmm_abi_1", 0, 0, false},
		{"wasmvmm_abi_x_0", 0, 0, false},
		{"wasmvmm_abi_1_0x", 0, 0, false},
		{"dev_reset", 0, 0, false},
	} {
		maj, min, ok := ParseMarker(c.in)
		if maj != c.maj || min != c.min || ok != c.ok {
			t.Errorf("ParseMarker(%q) = %d,%d,%v; want %d,%d,%v", c.in, maj, min, ok, c.maj, c.min, c.ok)
		}
	}
}

func TestSignaturesUseOnlyI32I64(t *testing.T) {
	check := func(name string, s Signature) {
		for _, v := range append(append([]ValType{}, s.Params...), s.Results...) {
			if v != I32 && v != I64 {
				t.Errorf("%s: value type %#x on the boundary", name, v)
			}
		}
		if len(s.Results) > 1 {
			t.Errorf("%s: more than one result", name)
		}
	}
	for n, s := range HostFunctions {
		check(n, s)
	}
	for n, e := range PluginExports {
		check(n, e.Signature)
	}
}

func sampleSection() *Section {
	return &Section{
		Name: "serial", InstanceID: InstanceAny, VersionID: 3, MinimumVersionID: 2,
		Fields: []Field{
			{Name: "ier", Type: FieldU8, Offset: 0x1000, Size: 1, Count: 1},
			{Name: "fifo", Type: FieldBuffer, Offset: 0x1010, Size: 16, Count: 1, VersionID: 2},
			{Name: "gated", Type: FieldU32, Offset: 0x1020, Size: 4, Count: 2, Exists: &Condition{Prop: "v", Op: CondGE, Value: 2}},
			{Name: "scanouts", Type: FieldStruct, Offset: 0x1100, Size: 8, Count: 4, Struct: &Section{
				Name: "scanout", Fields: []Field{{Name: "w", Type: FieldU32, Offset: 0, Size: 4, Count: 1}, {Name: "h", Type: FieldU32, Offset: 4, Size: 4, Count: 1}},
			}},
		},
		Subsections: []Section{{Name: "serial/fifo_timeout", VersionID: 1, MinimumVersionID: 1, NeededID: 7,
			Fields: []Field{{Name: "t", Type: FieldU64, Offset: 0x1200, Size: 8, Count: 1}}}},
	}
}

func TestSectionRoundTrip(t *testing.T) {
	s := sampleSection()
	if err := s.Validate(0x2000); err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalSection(MarshalSection(s))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
	}
}

func TestSectionValidateRefuses(t *testing.T) {
	cases := map[string]func(s *Section){
		"overlaps":              func(s *Section) { s.Fields[1].Offset = 0x1000 },
		"outside memory":        func(s *Section) { s.Fields[0].Offset = 0x1fff0 },
		"size does not match":   func(s *Section) { s.Fields[0].Size = 2 },
		"count is zero":         func(s *Section) { s.Fields[0].Count = 0 },
		"after section version": func(s *Section) { s.Fields[1].VersionID = 9 },
		"minimum version":       func(s *Section) { s.MinimumVersionID = 4 },
		"declared twice":        func(s *Section) { s.Fields[1].Name = "ier" },
		"struct layout":         func(s *Section) { s.Fields[3].Struct = nil },
	}
	for want, mutate := range cases {
		s := sampleSection()
		mutate(s)
		err := s.Validate(0x2000)
		if err == nil {
			t.Errorf("%s: accepted", want)
			continue
		}
		if !strings.Contains(err.Error(), strings.Fields(want)[0]) {
			t.Errorf("%s: error %q", want, err)
		}
	}
}

func TestDeviceInfoRoundTripAndValidate(t *testing.T) {
	d := &DeviceInfo{Name: "virtio-net", Version: "2.0.0", Properties: []Property{
		{Name: "mac", Type: PropString, DefaultStr: "52:54:00:12:34:56", Doc: "MAC address"},
		{Name: "host_uso", Type: PropBool, DefaultInt: 1},
		{Name: "mtu", Type: PropU16, DefaultInt: 1500},
	}}
	got, err := UnmarshalDeviceInfo(MarshalDeviceInfo(d))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("round trip: %+v", got)
	}
	d.Properties[2].DefaultInt = 70000
	if _, err := UnmarshalDeviceInfo(MarshalDeviceInfo(d)); err == nil || !strings.Contains(err.Error(), "does not fit u16") {
		t.Fatalf("oversized default accepted: %v", err)
	}
	d.Properties[2].DefaultInt = 1
	d.Properties[1].Name = "mac"
	if _, err := UnmarshalDeviceInfo(MarshalDeviceInfo(d)); err == nil || !strings.Contains(err.Error(), "declared twice") {
		t.Fatalf("duplicate property accepted: %v", err)
	}
}

func TestTruncatedPayloadsRefused(t *testing.T) {
	b := MarshalSection(sampleSection())
	for i := 0; i < len(b); i++ {
		if _, err := UnmarshalSection(b[:i]); err == nil {
			t.Fatalf("truncated at %d accepted", i)
		}
	}
}

func FuzzUnmarshalSection(f *testing.F) {
	f.Add(MarshalSection(sampleSection()))
	f.Add(MarshalDeviceInfo(&DeviceInfo{Name: "x", Properties: []Property{{Name: "p", Type: PropU8}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := UnmarshalSection(b); err == nil {
			_ = s.Validate(1 << 20)
			if _, err := UnmarshalSection(MarshalSection(s)); err != nil {
				t.Fatalf("re-encoding a decoded section fails: %v", err)
			}
		}
		_, _ = UnmarshalDeviceInfo(b)
	})
}
