package acpi

import (
	"encoding/binary"
	"fmt"
)

// AML opcodes and prefixes used by the encoder (ACPI 6.5, chapter 20).
const (
	amlZeroOp      = 0x00
	amlOneOp       = 0x01
	amlNameOp      = 0x08
	amlBytePrefix  = 0x0a
	amlWordPrefix  = 0x0b
	amlDWordPrefix = 0x0c
	amlStringPref  = 0x0d
	amlQWordPrefix = 0x0e
	amlScopeOp     = 0x10
	amlBufferOp    = 0x11
	amlPackageOp   = 0x12
	amlExtOpPrefix = 0x5b
	amlDeviceOp    = 0x82 // after amlExtOpPrefix
	amlRootChar    = '\\'
	amlDualName    = 0x2e
	amlMultiName   = 0x2f
)

// aml builds AML byte sequences, remembering the first error so that the
// table builders can compose terms without checking every step.
type aml struct {
	err error
}

// fail records err unless an earlier error is already recorded.
func (a *aml) fail(err error) {
	if a.err == nil {
		a.err = err
	}
}

// pkgLength encodes a PkgLength for a body of n bytes; the encoded value
// counts the PkgLength bytes themselves.
func (a *aml) pkgLength(n int) []byte {
	switch {
	case n+1 <= 0x3f:
		return []byte{byte(n + 1)}
	case n+2 <= 0xfff:
		t := n + 2
		return []byte{0x40 | byte(t&0xf), byte(t >> 4)}
	case n+3 <= 0xfffff:
		t := n + 3
		return []byte{0x80 | byte(t&0xf), byte(t >> 4), byte(t >> 12)}
	case n+4 <= 0xfffffff:
		t := n + 4
		return []byte{0xc0 | byte(t&0xf), byte(t >> 4), byte(t >> 12), byte(t >> 20)}
	}
	a.fail(fmt.Errorf("aml: package of %d bytes is too long", n))
	return []byte{0}
}

// nameSeg encodes one 4-character name segment, padding short names
// with '_'. Lead characters are A-Z or '_', the others also 0-9.
func (a *aml) nameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		a.fail(fmt.Errorf("aml: name segment %q must have 1 to 4 characters", s))
		return []byte("____")
	}
	seg := []byte("____")
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			a.fail(fmt.Errorf("aml: invalid character %q in name segment %q", c, s))
		}
		seg[i] = c
	}
	return seg
}

// nameString encodes a name path such as "\\_SB_", "_HID", "COM1" or
// "\\_SB_.VR00": an optional root prefix and dot-separated segments.
func (a *aml) nameString(path string) []byte {
	var out []byte
	if len(path) > 0 && path[0] == amlRootChar {
		out = append(out, amlRootChar)
		path = path[1:]
	}
	var segs [][]byte
	for start := 0; start <= len(path); {
		end := start
		for end < len(path) && path[end] != '.' {
			end++
		}
		segs = append(segs, a.nameSeg(path[start:end]))
		start = end + 1
	}
	switch {
	case len(segs) == 1:
	case len(segs) == 2:
		out = append(out, amlDualName)
	case len(segs) < 256:
		out = append(out, amlMultiName, byte(len(segs)))
	default:
		a.fail(fmt.Errorf("aml: name path %q has too many segments", path))
	}
	for _, s := range segs {
		out = append(out, s...)
	}
	return out
}

// integer encodes v with the shortest encoding (ZeroOp, OneOp, or a
// byte/word/dword/qword constant).
func (a *aml) integer(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{amlQWordPrefix}, v)
}

// dword encodes v as a dword constant, whatever its value (the encoding
// ASL's EisaId() produces).
func (a *aml) dword(v uint32) []byte {
	return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, v)
}

// str encodes an ASCII string constant (printable characters only).
func (a *aml) str(s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x01 || s[i] > 0x7f {
			a.fail(fmt.Errorf("aml: string %q has a non-ASCII or NUL byte", s))
		}
	}
	out := append([]byte{amlStringPref}, s...)
	return append(out, 0)
}

// name encodes Name(path, value).
func (a *aml) name(path string, value []byte) []byte {
	out := append([]byte{amlNameOp}, a.nameString(path)...)
	return append(out, value...)
}

// scope encodes Scope(path) { body }.
func (a *aml) scope(path string, body ...[]byte) []byte {
	inner := append(a.nameString(path), concat(body)...)
	return append(append([]byte{amlScopeOp}, a.pkgLength(len(inner))...), inner...)
}

// device encodes Device(name) { body }.
func (a *aml) device(name string, body ...[]byte) []byte {
	inner := append(a.nameString(name), concat(body)...)
	return append(append([]byte{amlExtOpPrefix, amlDeviceOp}, a.pkgLength(len(inner))...), inner...)
}

// pkg encodes Package() { elems } (at most 255 elements).
func (a *aml) pkg(elems ...[]byte) []byte {
	if len(elems) > 255 {
		a.fail(fmt.Errorf("aml: package of %d elements", len(elems)))
	}
	inner := append([]byte{byte(len(elems))}, concat(elems)...)
	return append(append([]byte{amlPackageOp}, a.pkgLength(len(inner))...), inner...)
}

// buffer encodes Buffer() { data }.
func (a *aml) buffer(data []byte) []byte {
	inner := append(a.integer(uint64(len(data))), data...)
	return append(append([]byte{amlBufferOp}, a.pkgLength(len(inner))...), inner...)
}

// eisaID compresses a 7-character EISA id such as "PNP0501" into the
// 32-bit form ASL's EisaId() produces.
func (a *aml) eisaID(id string) uint32 {
	if len(id) != 7 {
		a.fail(fmt.Errorf("aml: EISA id %q must have 7 characters", id))
		return 0
	}
	var v [4]byte
	var letters uint16
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			a.fail(fmt.Errorf("aml: EISA id %q: %q is not an upper-case letter", id, c))
		}
		letters = letters<<5 | uint16(c-0x40)&0x1f
	}
	v[0], v[1] = byte(letters>>8), byte(letters)
	for i := 0; i < 2; i++ {
		var b byte
		for _, c := range []byte(id[3+2*i : 5+2*i]) {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'A' && c <= 'F':
				d = c - 'A' + 10
			default:
				a.fail(fmt.Errorf("aml: EISA id %q: %q is not a hex digit", id, c))
			}
			b = b<<4 | d
		}
		v[2+i] = b
	}
	return binary.LittleEndian.Uint32(v[:])
}

// concat joins byte slices.
func concat(parts [][]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
