package qmp

import (
	"encoding/json"
	"reflect"
	"testing"
)

// frames feeds input to a fresh framer in chunks of the given size (0: all at
// once) and returns what it emitted, errors as "!" + desc.
func frames(input []byte, maxSize, chunk int) []string {
	f := newFramer(maxSize)
	var out []string
	emit := func(fr frameResult) {
		if fr.err != nil {
			out = append(out, "!"+fr.err.Desc)
		} else {
			out = append(out, string(fr.msg))
		}
	}
	if chunk <= 0 {
		chunk = len(input) + 1
	}
	for len(input) > 0 {
		n := min(chunk, len(input))
		f.feed(input[:n], emit)
		input = input[n:]
	}
	return out
}

func TestFramer(t *testing.T) {
	cases := []struct {
		in      string
		maxSize int
		want    []string
	}{
		{`{"a":1}`, 0, []string{`{"a":1}`}},
		{" \r\n\t{\"a\":1}\n{\"b\":[1,{}]}", 0, []string{`{"a":1}`, `{"b":[1,{}]}`}},
		{`{"s":"}{\"]"}x`, 0, []string{`{"s":"}{\"]"}`}}, // "x" is an unfinished scalar
		{`"str" 12 true{}`, 0, []string{`"str"`, `12`, `true`, `{}`}},
		{`}]`, 0, []string{`}`, `]`}},
		{`{]`, 0, []string{`{]`}},
		{"{\"a\":\x01{}", 0, []string{"!JSON parse error, stray byte 0x01", `{}`}},
		{"\xff{}", 0, []string{"!JSON parse error, stray byte 0xff", `{}`}},
		{`{"a":"` + "0123456789" + `"}{}`, 8, []string{"!JSON token size limit exceeded: message larger than 8 bytes", `{}`}},
		{`[[[[1]]]]{}`, 8, []string{"!JSON token size limit exceeded: message larger than 8 bytes", `{}`}},
	}
	for _, tc := range cases {
		for _, chunk := range []int{0, 1, 2, 7} {
			got := frames([]byte(tc.in), tc.maxSize, chunk)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%q (chunk %d): got %q, want %q", tc.in, chunk, got, tc.want)
			}
		}
	}
}

func TestFramerNesting(t *testing.T) {
	in := make([]byte, 0, 2*(MaxNesting+1)+2)
	for i := 0; i <= MaxNesting; i++ {
		in = append(in, '[')
	}
	for i := 0; i <= MaxNesting; i++ {
		in = append(in, ']')
	}
	in = append(in, "{}"...)
	got := frames(in, 0, 0)
	want := []string{"!JSON nesting depth limit exceeded", "{}"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Exactly at the limit is fine.
	got = frames(in[1:len(in)-3], 0, 0)
	if len(got) != 1 || got[0][0] != '[' {
		t.Fatalf("nesting %d refused: %q", MaxNesting, got)
	}
}

func TestParseRequest(t *testing.T) {
	req, id, err := ParseRequest([]byte(`{"id": {"x": [1, 2]}, "arguments": {"a": "b"}, "execute": "cont"}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.Execute != "cont" || string(req.ID) != `{"x":[1,2]}` || string(id) != string(req.ID) {
		t.Fatalf("request %+v, id %s", req, id)
	}
	var args map[string]string
	if json.Unmarshal(req.Arguments, &args) != nil || args["a"] != "b" {
		t.Fatalf("arguments %s", req.Arguments)
	}
	req, _, err = ParseRequest([]byte(`{"execute":"stop"}`))
	if err != nil || string(req.Arguments) != "{}" || req.ID != nil {
		t.Fatalf("request %+v, %v", req, err)
	}
}
