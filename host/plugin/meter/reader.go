package meter

import (
	"errors"
	"fmt"
)

// errTruncated reports input that ends inside a field.
var errTruncated = errors.New("unexpected end of input")

// reader decodes the primitive encodings of the WebAssembly binary format
// from a byte slice. Every method checks bounds; none panics.
type reader struct {
	b   []byte
	pos int
}

func (r *reader) eof() bool { return r.pos >= len(r.b) }

func (r *reader) byte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, errTruncated
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

func (r *reader) bytes(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.pos {
		return nil, errTruncated
	}
	p := r.b[r.pos : r.pos+n]
	r.pos += n
	return p, nil
}

// u32 reads an unsigned LEB128 of at most 5 bytes whose value fits 32 bits.
func (r *reader) u32() (uint32, error) {
	var v uint32
	for shift := uint(0); ; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if shift == 28 {
			if c&0x80 != 0 || c&0x70 != 0 {
				return 0, fmt.Errorf("u32 LEB128 too long or out of range at offset %d", r.pos-1)
			}
			return v | uint32(c)<<shift, nil
		}
		v |= uint32(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
}

// signed skips a signed LEB128 of at most bits bits (33 for block types,
// 32 or 64 for constants) and returns its value.
func (r *reader) signed(bits uint) (int64, error) {
	maxBytes := int((bits + 6) / 7)
	var v int64
	var shift uint
	for n := 1; ; n++ {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if n == maxBytes {
				// The unused bits of the last byte must be the sign
				// extension of the value's top bit.
				used := bits - 7*uint(maxBytes-1)
				rest := int8(c<<1) >> (used)
				if rest != 0 && rest != -1 {
					return 0, fmt.Errorf("s%d LEB128 out of range at offset %d", bits, r.pos-1)
				}
			}
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v, nil
		}
		if n == maxBytes {
			return 0, fmt.Errorf("s%d LEB128 too long at offset %d", bits, r.pos-1)
		}
	}
}

// name reads a length-prefixed UTF-8 name (not checked for UTF-8 here:
// wazero validates what it loads).
func (r *reader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	p, err := r.bytes(int(n))
	if err != nil {
		return "", err
	}
	return string(p), nil
}

// limits skips table or memory limits: a flags byte, a minimum, and a
// maximum when flags bit 0 is set (bit 1 shared, bit 2 64-bit indices).
func (r *reader) limits() error {
	flags, err := r.byte()
	if err != nil {
		return err
	}
	if flags > 7 {
		return fmt.Errorf("unknown limits flags %#x at offset %d", flags, r.pos-1)
	}
	read := func() error {
		if flags&4 != 0 {
			_, err := r.u64()
			return err
		}
		_, err := r.u32()
		return err
	}
	if err := read(); err != nil {
		return err
	}
	if flags&1 != 0 {
		return read()
	}
	return nil
}

// u64 reads an unsigned LEB128 of at most 10 bytes.
func (r *reader) u64() (uint64, error) {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if shift == 63 {
			if c > 1 {
				return 0, fmt.Errorf("u64 LEB128 too long or out of range at offset %d", r.pos-1)
			}
			return v | uint64(c)<<shift, nil
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
}

// appendU32 appends v as an unsigned LEB128.
func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// appendS64 appends v as a signed LEB128.
func appendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
