package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type base struct {
	Device string `json:"device"`
}

type withEmbedded struct {
	base
	Size   uint64            `json:"size"`
	Props  map[string]string `json:"props,omitempty"`
	Extra  any               `json:"extra,omitempty"`
	Raw    json.RawMessage   `json:"raw,omitempty"`
	Mode   mode              `json:"mode,omitempty"`
	Ratio  float64           `json:"ratio,omitempty"`
	Ignore string            `json:"-"`
	hidden int
}

// hidden is unexported: Decode must refuse it like any unknown member.
var _ = withEmbedded{}.hidden

type mode string

func (m *mode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("must be a string")
	}
	switch s {
	case "normal", "cpr-transfer":
		*m = mode(s)
		return nil
	}
	return Errorf(ClassGenericError, "Parameter 'mode' does not accept value '%s'", s)
}

func TestDecode(t *testing.T) {
	var v withEmbedded
	err := Decode(json.RawMessage(`{"device":"blk0","size":18446744073709551615,"props":{"a":"b"},`+
		`"extra":{"n":[1,"x",null]},"raw":{"k": 1},"mode":"cpr-transfer","ratio":0.25}`), &v)
	if err != nil {
		t.Fatal(err)
	}
	if v.Device != "blk0" || v.Size != 1<<64-1 || v.Props["a"] != "b" || v.Mode != "cpr-transfer" || v.Ratio != 0.25 {
		t.Fatalf("decoded %+v", v)
	}
	if got, _ := json.Marshal(v.Extra); string(got) != `{"n":[1,"x",null]}` {
		t.Errorf("extra = %s", got)
	}
	if string(v.Raw) != `{"k":1}` {
		t.Errorf("raw = %s", v.Raw)
	}

	cases := []struct{ in, want string }{
		{`{"size":1}`, "Parameter 'device' is missing"},
		{`{"device":"d"}`, "Parameter 'size' is missing"},
		{`{"device":"d","size":1,"props":{"a":1}}`, "Invalid parameter type for 'props.a', expected: string"},
		{`{"device":"d","size":1,"mode":"fast"}`, "Parameter 'mode' does not accept value 'fast'"},
		{`{"device":"d","size":1,"mode":3}`, "Invalid parameter 'mode': must be a string"},
		{`{"device":"d","size":1,"ratio":"x"}`, "Invalid parameter type for 'ratio', expected: number"},
		{`{"device":"d","size":1,"ratio":1e999}`, "Invalid parameter type for 'ratio', expected: number"},
		{`{"device":"d","size":18446744073709551616}`, "Parameter 'size' expects uint64"},
		{`{"device":"d","size":1.0}`, "Parameter 'size' expects uint64"},
		{`{"device":"d","size":1,"Ignore":"x"}`, "Parameter 'Ignore' is unexpected"},
		{`{"device":"d","size":1,"hidden":1}`, "Parameter 'hidden' is unexpected"},
		{`[]`, "QMP input member 'arguments' must be an object"},
		{`{"device":"d"`, "JSON parse error, *"},
		{`{} {}`, "JSON parse error, trailing data after arguments"},
	}
	for _, tc := range cases {
		var v withEmbedded
		err := Decode(json.RawMessage(tc.in), &v)
		var qerr *Error
		if !errors.As(err, &qerr) || qerr.Class != ClassGenericError {
			t.Errorf("%s: error %v, want GenericError %q", tc.in, err, tc.want)
			continue
		}
		if p, ok := strings.CutSuffix(tc.want, "*"); ok {
			if !strings.HasPrefix(qerr.Desc, p) {
				t.Errorf("%s: %q, want prefix %q", tc.in, qerr.Desc, p)
			}
		} else if qerr.Desc != tc.want {
			t.Errorf("%s: %q, want %q", tc.in, qerr.Desc, tc.want)
		}
	}
}

func TestDecodeEmptyAndInvalidTargets(t *testing.T) {
	var empty struct{}
	for _, in := range []string{``, `null`, ` {} `} {
		if err := Decode(json.RawMessage(in), &empty); err != nil {
			t.Errorf("Decode(%q) into struct{}: %v", in, err)
		}
	}
	if err := Decode(json.RawMessage(`{"x":1}`), &empty); err == nil || !strings.Contains(err.Error(), "Parameter 'x' is unexpected") {
		t.Errorf("struct{} accepted a member: %v", err)
	}
	var m map[string]int
	if err := Decode(json.RawMessage(`{"a":1,"b":-2}`), &m); err != nil || m["a"] != 1 || m["b"] != -2 {
		t.Errorf("map: %v %v", m, err)
	}
	// Programming errors come back as errors, not panics.
	var s struct{ C chan int }
	for _, target := range []any{nil, empty, (*struct{})(nil), &s} {
		if err := Decode(json.RawMessage(`{"C":1}`), target); err == nil {
			t.Errorf("Decode into %T succeeded", target)
		}
	}
	var ints struct {
		I8  int8  `json:"i8"`
		I16 int16 `json:"i16"`
		I64 int64 `json:"i64"`
	}
	for in, want := range map[string]string{
		`{"i8":128,"i16":0,"i64":0}`:                  "Parameter 'i8' expects int8",
		`{"i8":-129,"i16":0,"i64":0}`:                 "Parameter 'i8' expects int8",
		`{"i8":0,"i16":32768,"i64":0}`:                "Parameter 'i16' expects int16",
		`{"i8":0,"i16":0,"i64":9223372036854775808}`:  "Invalid parameter type for 'i64', expected: integer",
		`{"i8":0,"i16":0,"i64":-9223372036854775808}`: "",
		`{"i8":0,"i16":0,"i64":1e3}`:                  "Invalid parameter type for 'i64', expected: integer",
	} {
		err := Decode(json.RawMessage(in), &ints)
		got := ""
		if err != nil {
			got = err.(*Error).Desc
		}
		if got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}

func ExampleTyped() {
	type migrateArgs struct {
		URI    string `json:"uri"`
		Detach *bool  `json:"detach"`
	}
	srv := NewServer(Config{})
	defer srv.Close()
	err := srv.Register("migrate", Typed(func(_ context.Context, a migrateArgs) (any, error) {
		if !strings.HasPrefix(a.URI, "unix:") {
			return nil, Errorf(ClassGenericError, "Invalid URI '%s'", a.URI)
		}
		return nil, nil // start the migration in the background here
	}))
	fmt.Println(err)
	// Output: <nil>
}
