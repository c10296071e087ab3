package meter

import "fmt"

// Opcodes the instrumentation looks at or emits.
const (
	opUnreachable  = 0x00
	opBlock        = 0x02
	opLoop         = 0x03
	opIf           = 0x04
	opEnd          = 0x0b
	opCall         = 0x10
	opCallIndirect = 0x11
	opGlobalGet    = 0x23
	opGlobalSet    = 0x24
	opI64Const     = 0x42
	opI64Eqz       = 0x50
	opI64Sub       = 0x7d
	opPrefixFC     = 0xfc
	blockTypeEmpty = 0x40
)

// opInfo is what the rewriter needs to know about one decoded instruction.
type opInfo struct {
	op   byte
	call bool // call or call_indirect
	// control is set for instructions that may transfer control (branches,
	// if, else, return, unreachable): after one of them, code is no longer
	// guaranteed to run on every entry of the function. Entering a block or
	// loop and leaving it at its end is straight-line code.
	control bool
}

// isValType reports whether c is a one-byte value type the decoder knows
// (numeric, v128, funcref, externref).
func isValType(c byte) bool {
	switch c {
	case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
		return true
	}
	return false
}

// blockType skips a block type: empty (0x40), a value type, or a
// non-negative s33 type index (multi-value).
func (r *reader) blockType() error {
	if r.pos >= len(r.b) {
		return errTruncated
	}
	if c := r.b[r.pos]; c == blockTypeEmpty || isValType(c) {
		r.pos++
		return nil
	}
	start := r.pos
	idx, err := r.signed(33)
	if err != nil {
		return err
	}
	if idx < 0 {
		return fmt.Errorf("unknown block type %#x at offset %d", r.b[start], start)
	}
	return nil
}

// memarg skips a memory argument: alignment (bit 6 announces a memory
// index, multi-memory) and offset.
func (r *reader) memarg() error {
	align, err := r.u32()
	if err != nil {
		return err
	}
	if align&0x40 != 0 {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	_, err = r.u32()
	return err
}

// u32s skips n unsigned LEB128 immediates.
func (r *reader) u32s(n int) error {
	for range n {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	return nil
}

// unsupportedError names an opcode the decoder refuses.
type unsupportedError struct {
	op      string
	feature string
}

func (e *unsupportedError) Error() string {
	return fmt.Sprintf("unsupported opcode %s (%s)", e.op, e.feature)
}

func (e *unsupportedError) Unwrap() error { return ErrUnsupported }

func unsupported(op byte, feature string) error {
	return &unsupportedError{op: fmt.Sprintf("%#02x", op), feature: feature}
}

// instr decodes the instruction at r.pos and advances past it and its
// immediates. It knows the MVP instruction set, sign extension, the 0xFC
// prefix (saturating truncation, bulk memory, table instructions),
// reference types and multi-value block types; anything else is an error.
func (r *reader) instr() (opInfo, error) {
	op, err := r.byte()
	if err != nil {
		return opInfo{}, err
	}
	info := opInfo{op: op}
	switch {
	case op == 0x00 || op == 0x01: // unreachable, nop
		info.control = op == 0x00
	case op == opBlock || op == opLoop:
		err = r.blockType()
	case op == opIf:
		info.control = true
		err = r.blockType()
	case op == 0x05: // else
		info.control = true
	case op == opEnd:
	case op >= 0x06 && op <= 0x0a, op == 0x18, op == 0x19, op == 0x1f:
		return info, unsupported(op, "exception handling")
	case op == 0x0c || op == 0x0d: // br, br_if
		info.control = true
		_, err = r.u32()
	case op == 0x0e: // br_table
		info.control = true
		var n uint32
		if n, err = r.u32(); err == nil {
			if int(n) > len(r.b)-r.pos {
				return info, errTruncated
			}
			err = r.u32s(int(n) + 1)
		}
	case op == 0x0f: // return
		info.control = true
	case op == opCall:
		info.call = true
		_, err = r.u32()
	case op == opCallIndirect: // type index, table index
		info.call = true
		err = r.u32s(2)
	case op == 0x12 || op == 0x13:
		return info, unsupported(op, "tail calls, which could loop without passing a loop header")
	case op == 0x14 || op == 0x15:
		return info, unsupported(op, "typed function references")
	case op == 0x1a || op == 0x1b: // drop, select
	case op == 0x1c: // select with types
		var n uint32
		if n, err = r.u32(); err == nil {
			for range n {
				var c byte
				if c, err = r.byte(); err != nil {
					break
				}
				if !isValType(c) {
					return info, fmt.Errorf("unknown value type %#x in select at offset %d", c, r.pos-1)
				}
			}
		}
	case op >= 0x20 && op <= 0x26: // local.get/set/tee, global.get/set, table.get/set
		_, err = r.u32()
	case op >= 0x28 && op <= 0x3e: // loads and stores
		err = r.memarg()
	case op == 0x3f || op == 0x40: // memory.size, memory.grow
		_, err = r.u32()
	case op == 0x41:
		_, err = r.signed(32)
	case op == opI64Const:
		_, err = r.signed(64)
	case op == 0x43:
		_, err = r.bytes(4)
	case op == 0x44:
		_, err = r.bytes(8)
	case op >= 0x45 && op <= 0xc4: // numeric (MVP and sign extension)
	case op == 0xd0: // ref.null heaptype
		var c byte
		if c, err = r.byte(); err == nil && c != 0x70 && c != 0x6f {
			return info, fmt.Errorf("unknown heap type %#x in ref.null at offset %d", c, r.pos-1)
		}
	case op == 0xd1: // ref.is_null
	case op == 0xd2: // ref.func
		_, err = r.u32()
	case op >= 0xd3 && op <= 0xd6:
		return info, unsupported(op, "typed function references")
	case op == opPrefixFC:
		return info, r.prefixFC()
	case op == 0xfb:
		return info, unsupported(op, "garbage collection prefix")
	case op == 0xfd:
		return info, unsupported(op, "SIMD prefix")
	case op == 0xfe:
		return info, unsupported(op, "threads prefix")
	default:
		return info, unsupported(op, "unknown")
	}
	return info, err
}

// prefixFC decodes the rest of a 0xFC-prefixed instruction.
func (r *reader) prefixFC() error {
	sub, err := r.u32()
	if err != nil {
		return err
	}
	switch {
	case sub <= 7: // saturating truncation
		return nil
	case sub == 8: // memory.init data, memory
		return r.u32s(2)
	case sub == 9: // data.drop
		return r.u32s(1)
	case sub == 10: // memory.copy dst, src
		return r.u32s(2)
	case sub == 11: // memory.fill
		return r.u32s(1)
	case sub == 12: // table.init elem, table
		return r.u32s(2)
	case sub == 13: // elem.drop
		return r.u32s(1)
	case sub == 14: // table.copy dst, src
		return r.u32s(2)
	case sub >= 15 && sub <= 17: // table.grow, table.size, table.fill
		return r.u32s(1)
	}
	return &unsupportedError{op: fmt.Sprintf("0xfc %d", sub), feature: "unknown 0xFC instruction"}
}
