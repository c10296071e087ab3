package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// fuzzArgs exercises every kind Decode handles.
type fuzzArgs struct {
	base
	Name   string            `json:"name"`
	Count  int16             `json:"count,omitempty"`
	Size   *uint32           `json:"size"`
	Flag   bool              `json:"flag,omitempty"`
	Ratio  float32           `json:"ratio,omitempty"`
	List   []int8            `json:"list,omitempty"`
	Props  map[string]uint64 `json:"props,omitempty"`
	Nested *struct {
		URI string `json:"uri"`
	} `json:"nested"`
	Any  any             `json:"any,omitempty"`
	Raw  json.RawMessage `json:"raw,omitempty"`
	Mode mode            `json:"mode,omitempty"`
}

// FuzzRequestDecoder feeds arbitrary bytes through the whole input path: the
// framer (whole, and split at an arbitrary point), ParseRequest, then Decode.
// Nothing may panic, framing must not depend on how the bytes arrive, and
// every error must be a QMP error.
func FuzzRequestDecoder(f *testing.F) {
	for _, seed := range []string{
		`{"execute":"qmp_capabilities"}`,
		`{"execute":"migrate","arguments":{"uri":"unix:/tmp/x"},"id":1}`,
		`{"execute":"t","arguments":{"device":"d","name":"n","count":-3,"size":7,"list":[1,-2],"props":{"a":1},"nested":{"uri":"u"},"any":[null,{}],"raw":"r","mode":"normal"}}`,
		`{ "execute": }`,
		"{\"execute\":\"x\x01\"}{}",
		`[[[[[[]]]]]]"s"12 nul}{`,
		`{"execute":"x","exec-oob":"y","arguments":[],"id":{"a":"\u00e9\ud83d\ude00"}}`,
	} {
		f.Add([]byte(seed), uint16(5))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		whole := frames(data, 256, 0)
		at := int(split) % (len(data) + 1)
		f1 := newFramer(256)
		var parts []string
		emit := func(fr frameResult) {
			if fr.err != nil {
				parts = append(parts, "!"+fr.err.Desc)
			} else {
				parts = append(parts, string(fr.msg))
			}
		}
		f1.feed(data[:at], emit)
		f1.feed(data[at:], emit)
		if !reflect.DeepEqual(whole, parts) {
			t.Fatalf("framing depends on chunking: whole %q, split at %d %q", whole, at, parts)
		}

		fr := newFramer(256)
		fr.feed(data, func(res frameResult) {
			if res.err != nil {
				return
			}
			if len(res.msg) > 256 {
				t.Fatalf("framer emitted %d bytes over a 256-byte limit", len(res.msg))
			}
			req, id, qerr := ParseRequest(res.msg)
			if qerr != nil {
				if req != nil {
					t.Fatal("ParseRequest returned both a request and an error")
				}
				if id != nil && !json.Valid(id) {
					t.Fatalf("invalid id %q", id)
				}
				return
			}
			if req.ID != nil && !json.Valid(req.ID) {
				t.Fatalf("invalid id %q", req.ID)
			}
			if !json.Valid(req.Arguments) || bytes.TrimSpace(req.Arguments)[0] != '{' {
				t.Fatalf("arguments not an object: %q", req.Arguments)
			}
			var a fuzzArgs
			if err := Decode(req.Arguments, &a); err != nil {
				var qe *Error
				if !errors.As(err, &qe) {
					t.Fatalf("Decode returned a non-QMP error %T: %v", err, err)
				}
			}
			var m map[string]any
			if err := Decode(req.Arguments, &m); err != nil {
				t.Fatalf("valid arguments object refused by a map: %v", err)
			}
			if _, err := encodeASCII(response{Return: req.Arguments, ID: req.ID}); err != nil {
				t.Fatalf("cannot encode a response echoing the request: %v", err)
			}
		})
	})
}
