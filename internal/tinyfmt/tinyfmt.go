// Package tinyfmt formats text like package fmt for the verbs and types
// device plugins use, without fmt's weight: a plugin that imports fmt
// links fmt's printer, its reflection-driven paths and package os with
// its runtime (about 0.75 MB of a plugin's WebAssembly module), while the
// SDK only needs messages for logs and errors.
//
// Supported: the verbs %v %s %q %d %x %X %o %b %c %t %T %w (Errorf) and
// %%, with the flags '+', '-', '#', '0' and ' ', a width, and a precision
// for strings. Operands may be any bool, integer, string, []byte, error,
// Stringer, pointer, or arrays, slices and structs of those; they print as
// fmt prints them. Floats, complex numbers, maps, channels, functions,
// argument indexes ([n]) and '*' widths are not supported and print as
// %!verb(type). Missing and extra operands print as fmt prints them.
package tinyfmt

import (
	"reflect"
	"strconv"
	"unicode/utf8"
)

// Stringer is fmt.Stringer.
type Stringer interface{ String() string }

// Sprintf formats according to format and returns the string.
func Sprintf(format string, args ...any) string {
	p := printer{}
	p.doPrintf(format, args)
	return string(p.buf)
}

// Appendf formats according to format and appends the result to b.
func Appendf(b []byte, format string, args ...any) []byte {
	p := printer{buf: b}
	p.doPrintf(format, args)
	return p.buf
}

// Errorf formats according to format and returns the text as an error.
// Like fmt.Errorf, each %w operand (an error) is wrapped: errors.Is and
// errors.As see through the result.
func Errorf(format string, args ...any) error {
	p := printer{wrap: true}
	p.doPrintf(format, args)
	msg := string(p.buf)
	switch len(p.wrapped) {
	case 0:
		return &plainError{msg}
	case 1:
		return &wrapError{msg, p.wrapped[0]}
	}
	return &wrapErrors{msg, p.wrapped}
}

type plainError struct{ msg string }

func (e *plainError) Error() string { return e.msg }

type wrapError struct {
	msg string
	err error
}

func (e *wrapError) Error() string { return e.msg }
func (e *wrapError) Unwrap() error { return e.err }

type wrapErrors struct {
	msg  string
	errs []error
}

func (e *wrapErrors) Error() string   { return e.msg }
func (e *wrapErrors) Unwrap() []error { return e.errs }

type flags struct {
	plus, minus, sharp, zero, space bool
	width, prec                     int // -1: none
}

type printer struct {
	buf     []byte
	wrap    bool
	wrapped []error
}

func (p *printer) doPrintf(format string, args []any) {
	argNum := 0
	for i := 0; i < len(format); {
		c := format[i]
		if c != '%' {
			j := i
			for j < len(format) && format[j] != '%' {
				j++
			}
			p.buf = append(p.buf, format[i:j]...)
			i = j
			continue
		}
		i++
		f := flags{width: -1, prec: -1}
	flagLoop:
		for ; i < len(format); i++ {
			switch format[i] {
			case '+':
				f.plus = true
			case '-':
				f.minus = true
			case '#':
				f.sharp = true
			case '0':
				f.zero = true
			case ' ':
				f.space = true
			default:
				break flagLoop
			}
		}
		f.width, i = num(format, i)
		if i < len(format) && format[i] == '.' {
			f.prec, i = num(format, i+1)
			if f.prec < 0 {
				f.prec = 0
			}
		}
		if i >= len(format) {
			p.buf = append(p.buf, "%!(NOVERB)"...)
			break
		}
		verb, size := rune(format[i]), 1
		if verb >= utf8.RuneSelf {
			verb, size = utf8.DecodeRuneInString(format[i:])
		}
		i += size
		if verb == '%' {
			p.buf = append(p.buf, '%')
			continue
		}
		if argNum >= len(args) {
			p.buf = append(p.buf, '%', '!')
			p.buf = utf8.AppendRune(p.buf, verb)
			p.buf = append(p.buf, "(MISSING)"...)
			continue
		}
		a := args[argNum]
		argNum++
		if verb == 'w' {
			if err, ok := a.(error); ok && p.wrap {
				p.wrapped = append(p.wrapped, err)
				verb = 'v'
			} else {
				p.bad(verb, a)
				continue
			}
		}
		p.arg(a, verb, f)
	}
	if argNum < len(args) {
		p.buf = append(p.buf, "%!(EXTRA "...)
		for k, a := range args[argNum:] {
			if k > 0 {
				p.buf = append(p.buf, ", "...)
			}
			if a == nil {
				p.buf = append(p.buf, "<nil>"...)
				continue
			}
			p.buf = append(p.buf, reflect.TypeOf(a).String()...)
			p.buf = append(p.buf, '=')
			p.arg(a, 'v', flags{width: -1, prec: -1})
		}
		p.buf = append(p.buf, ')')
	}
}

func num(s string, i int) (int, int) {
	if i >= len(s) || s[i] < '0' || s[i] > '9' {
		return -1, i
	}
	n := 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		n = n*10 + int(s[i]-'0')
		if n > 1e6 {
			n = 1e6
		}
	}
	return n, i
}

// bad prints an operand the verb does not apply to: %!verb(type=value).
func (p *printer) bad(verb rune, a any) {
	p.buf = append(p.buf, '%', '!')
	p.buf = utf8.AppendRune(p.buf, verb)
	p.buf = append(p.buf, '(')
	if a == nil {
		p.buf = append(p.buf, "<nil>"...)
	} else {
		p.buf = append(p.buf, reflect.TypeOf(a).String()...)
		if k := reflect.TypeOf(a).Kind(); k <= reflect.Uintptr || k == reflect.String {
			p.buf = append(p.buf, '=')
			p.arg(a, 'v', flags{width: -1, prec: -1})
		}
	}
	p.buf = append(p.buf, ')')
}

// pad appends s, padded to the width.
func (p *printer) pad(s []byte, f flags) {
	n := f.width - utf8.RuneCount(s)
	if n <= 0 {
		p.buf = append(p.buf, s...)
		return
	}
	if f.minus {
		p.buf = append(p.buf, s...)
		p.spaces(n, ' ')
		return
	}
	p.spaces(n, ' ')
	p.buf = append(p.buf, s...)
}

func (p *printer) spaces(n int, c byte) {
	for ; n > 0; n-- {
		p.buf = append(p.buf, c)
	}
}

func (p *printer) arg(a any, verb rune, f flags) {
	if verb == 'T' {
		if a == nil {
			p.pad([]byte("<nil>"), f)
			return
		}
		p.pad([]byte(reflect.TypeOf(a).String()), f)
		return
	}
	if a == nil {
		if verb == 'v' {
			p.pad([]byte("<nil>"), f)
			return
		}
		p.bad(verb, a)
		return
	}
	switch verb {
	case 'v', 's', 'x', 'X', 'q':
		switch v := a.(type) {
		case error:
			p.str(v.Error(), verb, f)
			return
		case Stringer:
			p.str(v.String(), verb, f)
			return
		}
	}
	p.value(reflect.ValueOf(a), verb, f, 0)
}

func (p *printer) value(v reflect.Value, verb rune, f flags, depth int) {
	if depth > 0 && v.IsValid() && v.CanInterface() {
		switch verb {
		case 'v', 's', 'x', 'X', 'q':
			switch x := v.Interface().(type) {
			case error:
				p.str(x.Error(), verb, f)
				return
			case Stringer:
				p.str(x.String(), verb, f)
				return
			}
		}
	}
	switch v.Kind() {
	case reflect.Invalid:
		p.buf = append(p.buf, "<invalid reflect.Value>"...)
	case reflect.Bool:
		if verb != 'v' && verb != 't' {
			p.bad(verb, v.Interface())
			return
		}
		p.pad(strconv.AppendBool(nil, v.Bool()), f)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n := v.Int()
		if n < 0 {
			p.integer(uint64(-n), true, verb, f, v)
		} else {
			p.integer(uint64(n), false, verb, f, v)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		p.integer(v.Uint(), false, verb, f, v)
	case reflect.String:
		p.str(v.String(), verb, f)
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 && (verb == 's' || verb == 'q' || verb == 'x' || verb == 'X') {
			b := make([]byte, v.Len())
			for i := range b {
				b[i] = byte(v.Index(i).Uint())
			}
			p.bytes(b, verb, f)
			return
		}
		if v.Kind() == reflect.Slice && v.IsNil() && verb == 'v' && f.sharp {
			p.buf = append(p.buf, v.Type().String()...)
			p.buf = append(p.buf, "(nil)"...)
			return
		}
		p.buf = append(p.buf, '[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				p.buf = append(p.buf, ' ')
			}
			p.value(v.Index(i), verb, f, depth+1)
		}
		p.buf = append(p.buf, ']')
	case reflect.Struct:
		p.buf = append(p.buf, '{')
		for i := 0; i < v.NumField(); i++ {
			if i > 0 {
				p.buf = append(p.buf, ' ')
			}
			if f.plus {
				p.buf = append(p.buf, v.Type().Field(i).Name...)
				p.buf = append(p.buf, ':')
			}
			p.value(v.Field(i), verb, f, depth+1)
		}
		p.buf = append(p.buf, '}')
	case reflect.Pointer:
		if depth == 0 && !v.IsNil() && verb == 'v' {
			switch e := v.Elem(); e.Kind() {
			case reflect.Array, reflect.Slice, reflect.Struct:
				p.buf = append(p.buf, '&')
				p.value(e, verb, f, depth+1)
				return
			}
		}
		p.pointer(v, verb, f)
	case reflect.Interface:
		if v.IsNil() {
			p.pad([]byte("<nil>"), f)
			return
		}
		p.value(v.Elem(), verb, f, depth+1)
	default:
		p.buf = append(p.buf, '%', '!')
		p.buf = utf8.AppendRune(p.buf, verb)
		p.buf = append(p.buf, '(')
		p.buf = append(p.buf, v.Type().String()...)
		p.buf = append(p.buf, ')')
	}
}

func (p *printer) pointer(v reflect.Value, verb rune, f flags) {
	if verb != 'v' && verb != 'p' && verb != 'x' && verb != 'X' {
		p.bad(verb, v.Interface())
		return
	}
	if v.IsNil() && verb == 'v' {
		p.pad([]byte("<nil>"), f)
		return
	}
	f.sharp = verb != 'x' && verb != 'X' || f.sharp
	if verb == 'v' || verb == 'p' {
		verb = 'x'
	}
	p.integer(uint64(v.Pointer()), false, verb, f, v)
}

func (p *printer) integer(u uint64, neg bool, verb rune, f flags, v reflect.Value) {
	base := 10
	var prefix string
	switch verb {
	case 'd', 'v':
	case 'x':
		base = 16
		if f.sharp {
			prefix = "0x"
		}
	case 'X':
		base = 16
		if f.sharp {
			prefix = "0X"
		}
	case 'o':
		base = 8
		if f.sharp {
			prefix = "0"
		}
	case 'b':
		base = 2
	case 'c':
		p.pad(utf8.AppendRune(nil, rune(u)), f)
		return
	case 'q':
		p.pad([]byte(strconv.QuoteRune(rune(u))), f)
		return
	default:
		p.bad(verb, v.Interface())
		return
	}
	digits := strconv.AppendUint(nil, u, base)
	if verb == 'X' {
		for i, c := range digits {
			if c >= 'a' && c <= 'f' {
				digits[i] = c - 'a' + 'A'
			}
		}
	}
	var sign string
	switch {
	case neg:
		sign = "-"
	case f.plus && verb != 'v': // %+v is fmt's "field names" flag
		sign = "+"
	case f.space:
		sign = " "
	}
	if f.zero && !f.minus && f.width > 0 {
		for n := f.width - len(sign) - len(digits); n > 0; n-- { // as fmt: the prefix does not count
			digits = append([]byte{'0'}, digits...)
		}
	}
	out := make([]byte, 0, len(sign)+len(prefix)+len(digits))
	out = append(append(append(out, sign...), prefix...), digits...)
	p.pad(out, f)
}

func (p *printer) str(s string, verb rune, f flags) {
	if f.prec >= 0 && verb != 'x' && verb != 'X' {
		n := 0
		for i := range s {
			if n == f.prec {
				s = s[:i]
				break
			}
			n++
		}
	}
	switch verb {
	case 'v', 's':
		p.pad([]byte(s), f)
	case 'q':
		if f.sharp && strconv.CanBackquote(s) {
			p.pad([]byte("`"+s+"`"), f)
			return
		}
		if f.plus {
			p.pad([]byte(strconv.QuoteToASCII(s)), f)
			return
		}
		p.pad([]byte(strconv.Quote(s)), f)
	case 'x', 'X':
		p.hex([]byte(s), verb, f)
	default:
		p.bad(verb, s)
	}
}

func (p *printer) bytes(b []byte, verb rune, f flags) {
	if verb == 'x' || verb == 'X' {
		p.hex(b, verb, f)
		return
	}
	p.str(string(b), verb, f)
}

func (p *printer) hex(b []byte, verb rune, f flags) {
	digits := "0123456789abcdef"
	if verb == 'X' {
		digits = "0123456789ABCDEF"
	}
	if f.prec >= 0 && f.prec < len(b) {
		b = b[:f.prec]
	}
	var out []byte
	for i, c := range b {
		if f.space && i > 0 {
			out = append(out, ' ')
		}
		if f.sharp && (f.space || i == 0) {
			out = append(out, '0', byte(verb))
		}
		out = append(out, digits[c>>4], digits[c&0xf])
	}
	p.pad(out, f)
}
