package tinyfmt

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

type status int32

func (s status) Error() string { return fmt.Sprintf("status %d", int32(s)) }

type kind uint8

func (k kind) String() string { return "kind-" + string(rune('a'+k)) }

type region int32

type pair struct {
	A uint32
	B string
}

// TestMatchesFmt checks every supported verb, flag and operand type
// against package fmt.
func TestMatchesFmt(t *testing.T) {
	x := 7
	var nilErr error
	cases := []struct {
		format string
		args   []any
	}{
		{"plain text", nil},
		{"100%%", nil},
		{"%d %d %d %d %d", []any{0, -5, int8(-128), uint64(1 << 63), uintptr(9)}},
		{"%v %v %v", []any{int64(-1), uint16(65535), true}},
		{"%x %X %#x %#X %x", []any{255, 255, 255, 0xabc, -31}},
		{"%#x %#02x %08x %-6d| %6d| %+d % d", []any{-31, 5, 0xbeef, 12, 12, 3, 3}},
		{"%o %#o %b %c %q", []any{8, 8, 5, 'é', 'x'}},
		{"%s|%q|%v|%10s|%-10s|%.2s", []any{"a", "b\n", "c", "r", "l", "abc"}},
		{"%#q %+q %x %X % x %#x", []any{"back", "é", "hi", "hi", "hi", "hi"}},
		{"%s %x % x %q %v", []any{[]byte("ab"), []byte{1, 0xfe}, []byte{1, 2}, []byte("q"), []byte{3, 4}}},
		{"%v %s %d", []any{status(-3), status(-3), status(-3)}},
		{"%v %s %d %x", []any{kind(1), kind(2), kind(2), kind(3)}},
		{"%d %v %#x", []any{region(4), region(-1), region(16)}},
		{"%v %s", []any{io.EOF, errors.New("boom")}},
		{"%v %+v %v", []any{pair{1, "x"}, pair{2, "y"}, &pair{3, "z"}}},
		{"%v %d %v", []any{[]uint32{1, 2}, [3]int8{-1, 0, 1}, []string{"a", "b"}}},
		{"%T %T %T %T", []any{1, "s", &x, status(1)}},
		{"%v %T", []any{nil, nil}},
		{"%v", []any{nilErr}},
		{"%d", []any{"str"}},
		{"%s", []any{12}},
		{"%t %t", []any{true, false}},
		{"%d %d", []any{1}},
		{"%d", []any{1, "extra", 3}},
		{"%!", nil},
		{"%", nil},
		{"%z", []any{3}},
		{"%v %v", []any{[]error{io.EOF}, []kind{0, 1}}},
	}
	for _, c := range cases {
		want := fmt.Sprintf(c.format, c.args...)
		if got := Sprintf(c.format, c.args...); got != want {
			t.Errorf("Sprintf(%q, %#v) = %q, fmt gives %q", c.format, c.args, got, want)
		}
		if got := string(Appendf([]byte("pre:"), c.format, c.args...)); got != "pre:"+want {
			t.Errorf("Appendf(%q) = %q, want %q", c.format, got, "pre:"+want)
		}
	}
}

func TestErrorf(t *testing.T) {
	base := status(-6)
	err := Errorf("read %d bytes: %w", 4, base)
	want := fmt.Errorf("read %d bytes: %w", 4, base)
	if err.Error() != want.Error() {
		t.Errorf("Errorf = %q, fmt gives %q", err, want)
	}
	var s status
	if !errors.Is(err, base) || !errors.As(err, &s) || s != base {
		t.Errorf("Errorf(%%w) does not wrap: Is=%v As=%v", errors.Is(err, base), s)
	}
	two := Errorf("%w and %w", io.EOF, base)
	if two.Error() != fmt.Errorf("%w and %w", io.EOF, base).Error() || !errors.Is(two, io.EOF) || !errors.Is(two, base) {
		t.Errorf("Errorf with two %%w = %q, does not wrap both", two)
	}
	plain := Errorf("no wrap %v", io.EOF)
	if errors.Is(plain, io.EOF) || plain.Error() != "no wrap EOF" {
		t.Errorf("Errorf(%%v) = %q, wraps: %v", plain, errors.Is(plain, io.EOF))
	}
	bad := Errorf("%w", 5)
	if want := "%!w(int=5)"; bad.Error() != want { // what fmt.Errorf gives
		t.Errorf("Errorf(%%w, 5) = %q, fmt gives %q", bad, want)
	}
}
