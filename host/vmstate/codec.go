package vmstate

import (
	"fmt"

	"wasmvmm/abi"
)

// sectionState records what went on the wire for one section or subsection:
// the version and, in wire order, the subsections sent.
type sectionState struct {
	p       *plan
	version uint32
	subs    []*sectionState
}

// encodeDevice runs the device's PreSave hook and appends its section body
// (fields, then needed subsections) to dst. A device whose hooks count its
// changes (ChangeCounter) and that did not change since its last encoding
// gets that body again, without its hooks: they would find the same state
// and answer the same (hooks are idempotent, and one that asks the outside
// world moves the count).
func (e *entry) encodeDevice(dst []byte) ([]byte, *sectionState, error) {
	cc, counts := e.dev.Hooks.(ChangeCounter)
	var before uint64
	if counts {
		before = cc.StateChanges()
		if s := e.saved; s != nil && s.changes == before {
			return append(dst, s.body...), s.st, nil
		}
	}
	e.saved = nil
	start := len(dst)
	if e.dev.Hooks != nil {
		if err := e.dev.Hooks.PreSave(); err != nil {
			return dst, nil, fmt.Errorf("pre-save: %w", err)
		}
	}
	dst, st, err := e.encodeSection(dst, e.plan)
	if err == nil && counts && cc.StateChanges() == before {
		// Nothing reached the device while it was read: the body is its
		// state as of now, and stays so until the count moves.
		e.saved = &savedBody{changes: before, body: append([]byte(nil), dst[start:]...), st: st}
	}
	return dst, st, err
}

func (e *entry) encodeSection(dst []byte, p *plan) ([]byte, *sectionState, error) {
	st := &sectionState{p: p, version: p.sec.VersionID}
	var scratch []byte
	for i := range p.fields {
		pf := &p.fields[i]
		if !pf.exists(st.version) {
			continue
		}
		n := int(pf.f.Size) * int(pf.f.Count)
		if cap(scratch) < n {
			scratch = make([]byte, n)
		}
		mem := scratch[:n]
		if _, err := e.dev.Store.ReadAt(mem, int64(pf.f.Offset)); err != nil {
			return dst, nil, fmt.Errorf("%s field %s: read store: %w", p.wireName, pf.f.Name, err)
		}
		dst = encodeElems(dst, pf, mem)
	}
	for _, sp := range p.subs {
		if e.dev.Hooks != nil && !e.dev.Hooks.SubsectionNeeded(sp.sec.NeededID) {
			continue
		}
		dst = append(dst, SectionSubsection, byte(len(sp.wireName)))
		dst = append(dst, sp.wireName...)
		dst = appendBE32(dst, sp.sec.VersionID)
		var sub *sectionState
		var err error
		dst, sub, err = e.encodeSection(dst, sp)
		if err != nil {
			return dst, nil, err
		}
		st.subs = append(st.subs, sub)
	}
	return dst, st, nil
}

// encodeElems appends the wire form of a field's elements, read from mem
// (the field's bytes as they are in the store).
func encodeElems(dst []byte, pf *planField, mem []byte) []byte {
	f := pf.f
	size := int(f.Size)
	switch f.Type {
	case abi.FieldBuffer, abi.FieldU8, abi.FieldI8:
		return append(dst, mem...)
	case abi.FieldBool:
		for _, b := range mem {
			if b != 0 {
				b = 1
			}
			dst = append(dst, b)
		}
		return dst
	case abi.FieldStruct:
		nested := pf.nested
		for i := 0; i < int(f.Count); i++ {
			el := mem[i*size : (i+1)*size]
			for j := range nested.fields {
				nf := &nested.fields[j]
				if !nf.exists(nested.sec.VersionID) {
					continue
				}
				lo := int(nf.f.Offset)
				dst = encodeElems(dst, nf, el[lo:lo+int(nf.f.Size)*int(nf.f.Count)])
			}
		}
		return dst
	default: // integers: little endian in the store, big endian on the wire
		for i := 0; i < len(mem); i += size {
			for k := size - 1; k >= 0; k-- {
				dst = append(dst, mem[i+k])
			}
		}
		return dst
	}
}

// swapInPlace turns the wire form of integer or bool elements (already in
// mem) into their store form.
func swapInPlace(pf *planField, mem []byte) {
	switch pf.f.Type {
	case abi.FieldBuffer, abi.FieldU8, abi.FieldI8:
	case abi.FieldBool:
		for i, b := range mem {
			if b != 0 {
				mem[i] = 1
			}
		}
	default:
		size := int(pf.f.Size)
		for i := 0; i+size <= len(mem); i += size {
			el := mem[i : i+size]
			for a, b := 0, size-1; a < b; a, b = a+1, b-1 {
				el[a], el[b] = el[b], el[a]
			}
		}
	}
}

func appendBE32(dst []byte, v uint32) []byte {
	return append(dst, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendBE64(dst []byte, v uint64) []byte {
	return append(dst, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
		byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}
