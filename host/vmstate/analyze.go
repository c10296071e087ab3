package vmstate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
)

// Analysis is a stream decoded without knowing its devices, from the vmdesc
// it carries, in the spirit of QEMU's scripts/analyze-migration.py:
// State maps "name (section id)" to the decoded fields of each section
// (integers as hex strings, negative ones with their value, bools as
// booleans, buffers as spaced hex, arrays as lists, structs and subsections
// as objects); for RAM it lists the block sizes and counts the page records.
type Analysis struct {
	Machine     string          `json:"machine"`
	PageSize    int64           `json:"page_size"`
	State       *Object         `json:"state"`
	Description json.RawMessage `json:"description"`
}

// Bounds on what a (possibly hostile) description makes Analyze do: one
// field's size, and the number of values decoded in all (fields of size 0
// in huge arrays would otherwise cost time without consuming the stream).
const (
	maxAnalyzeField  = 64 << 20
	maxAnalyzeValues = 4 << 20
)

// Analyze decodes a whole stream. The vmdesc sits at the end, so r is read
// from its tail first when it is an io.ReadSeeker (a file); any other
// reader is read into memory.
func Analyze(r io.Reader) (*Analysis, error) {
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		data, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("analyze: read: %w", err)
		}
		rs = bytes.NewReader(data)
	}
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("analyze: seek: %w", err)
	}
	js, descOff, err := tailVMDesc(rs, start)
	if err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	if js == nil {
		return nil, errors.New("analyze: no vmdesc (0x00 0x06 length JSON) at the end of the stream; it cannot be decoded without one")
	}
	var root descRoot
	if err := json.Unmarshal(js, &root); err != nil {
		return nil, where{section: "vmdesc", sectionID: -1}.err(descOff, "malformed JSON: %v", err)
	}
	if root.PageSize <= 0 || root.PageSize&(root.PageSize-1) != 0 || root.PageSize > 1<<30 {
		return nil, where{section: "vmdesc", sectionID: -1}.err(descOff, "bad page_size %d", root.PageSize)
	}
	if _, err := rs.Seek(start, io.SeekStart); err != nil {
		return nil, fmt.Errorf("analyze: seek: %w", err)
	}
	a := &analyzer{r: newStreamReader(rs), root: &root, ramSections: map[uint32]*ramSummary{}}
	a.out = &Analysis{PageSize: root.PageSize, State: NewObject(), Description: js}
	if err := a.run(); err != nil {
		return nil, err
	}
	return a.out, nil
}

// tailVMDesc reads the end of a seekable stream that starts at start and
// returns the vmdesc JSON found there (nil if none) and the stream offset of
// its 0x06 byte. It leaves the read position anywhere.
func tailVMDesc(rs io.ReadSeeker, start int64) ([]byte, int64, error) {
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, fmt.Errorf("seek: %w", err)
	}
	size := end - start
	if size < 0 {
		return nil, 0, nil
	}
	// A vmdesc is usually tens of KiB: look in a short tail first, and in
	// the longest one allowed only when it holds none. A match in the short
	// tail is the one the long tail would give (the nearest to the end).
	for _, n := range []int64{256 << 10, MaxVMDescLen + 6} {
		tailLen := min(size, n)
		if _, err := rs.Seek(end-tailLen, io.SeekStart); err != nil {
			return nil, 0, fmt.Errorf("seek: %w", err)
		}
		tail := make([]byte, tailLen)
		if _, err := io.ReadFull(rs, tail); err != nil {
			return nil, 0, fmt.Errorf("read the tail: %w", err)
		}
		if js, at := findVMDesc(tail); js != nil {
			return js, size - tailLen + int64(at), nil
		}
		if tailLen == size {
			break
		}
	}
	return nil, 0, nil
}

// findVMDesc finds "0x00 0x06 be32-length JSON" ending exactly at the end
// of tail. It returns the JSON and the offset of the 0x06 byte.
func findVMDesc(tail []byte) ([]byte, int) {
	for p := len(tail) - 6; p >= 1; p-- {
		if tail[p] != SectionVMDescription || tail[p-1] != SectionEOF {
			continue
		}
		n := binary.BigEndian.Uint32(tail[p+1:])
		if int64(p)+5+int64(n) == int64(len(tail)) && tail[p+5] == '{' {
			return tail[p+5:], p
		}
	}
	return nil, 0
}

type ramSummary struct {
	obj        *Object
	sizes      *Object
	pages      uint64
	zeroPages  uint64
	lastBlock  string
	blockSizes map[string]uint64
}

type analyzer struct {
	r           *streamReader
	root        *descRoot
	out         *Analysis
	ramSections map[uint32]*ramSummary
	values      int
	// mapped is set when the configuration names the mapped-ram
	// capability: each block in the list is followed by its header, and
	// the stream goes on after the block's pages region.
	mapped bool
}

func (a *analyzer) run() error {
	magic, err := a.r.be32()
	if err != nil || magic != FileMagic {
		return nowhere.err(0, "bad file magic %#08x (%v)", magic, err)
	}
	if v, err := a.r.be32(); err != nil || v != FileVersion {
		return nowhere.err(4, "unsupported stream version %d (%v)", v, err)
	}
	var lastID int64 = -1
	for {
		off := a.r.off
		t, err := a.r.u8()
		if err != nil {
			return nowhere.wrap(off, fmt.Errorf("section type: %w", err))
		}
		switch t {
		case SectionEOF:
			return nil
		case SectionConfiguration:
			if err := a.configuration(off); err != nil {
				return err
			}
		case SectionStart, SectionFull:
			id, err := a.r.be32()
			if err != nil {
				return nowhere.wrap(off, err)
			}
			w := where{sectionID: int64(id)}
			name, err := a.r.str()
			if err != nil {
				return w.wrap(off, err)
			}
			w.section = name
			inst, err := a.r.be32()
			if err != nil {
				return w.wrap(off, err)
			}
			if _, err := a.r.be32(); err != nil {
				return w.wrap(off, err)
			}
			lastID = int64(id)
			key := fmt.Sprintf("%s (%d)", name, id)
			if name == RAMSectionName && inst == 0 {
				rs := &ramSummary{obj: NewObject(), sizes: NewObject(), blockSizes: map[string]uint64{}}
				rs.obj.Set("section sizes", rs.sizes)
				a.ramSections[id] = rs
				a.out.State.Set(key, rs.obj)
				if err := a.ram(rs, w); err != nil {
					return err
				}
				continue
			}
			d := a.device(name, inst)
			if d == nil {
				return w.err(off, "instance %d is not described by the vmdesc", inst)
			}
			obj, err := a.decode(d, w)
			if err != nil {
				return err
			}
			a.out.State.Set(key, obj)
		case SectionPart, SectionEnd:
			id, err := a.r.be32()
			if err != nil {
				return nowhere.wrap(off, err)
			}
			rs := a.ramSections[id]
			if rs == nil {
				return nowhere.err(off, "PART/END for section id %d, which is not a RAM section", id)
			}
			lastID = int64(id)
			if err := a.ram(rs, where{section: RAMSectionName, sectionID: int64(id)}); err != nil {
				return err
			}
		case SectionFooter:
			id, err := a.r.be32()
			if err != nil {
				return nowhere.wrap(off, err)
			}
			if int64(id) != lastID {
				return nowhere.err(off, "section footer names section id %d, the section was %d", id, lastID)
			}
		case SectionCommand:
			var h [4]byte
			if err := a.r.full(h[:]); err != nil {
				return nowhere.wrap(off, err)
			}
			if _, err := a.r.readVar(int64(binary.BigEndian.Uint16(h[2:]))); err != nil {
				return nowhere.wrap(off, err)
			}
		default:
			return nowhere.err(off, "unknown section type %#02x", t)
		}
	}
}

func (a *analyzer) configuration(off int64) error {
	w := where{section: configurationName, sectionID: -1}
	n, err := a.r.be32()
	if err != nil {
		return w.wrap(off, err)
	}
	if n > MaxMachineNameLen {
		return w.err(off+1, "machine type name of %d bytes", n)
	}
	name, err := a.r.readVar(int64(n))
	if err != nil {
		return w.wrap(off+5, err)
	}
	a.out.Machine = string(name)
	obj := NewObject()
	obj.Set("name", a.out.Machine)
	if c := a.root.Configuration; c != nil && len(c.Subsections) > 0 {
		if err := a.subsections(obj, c, w); err != nil {
			return err
		}
		if caps, ok := obj.Get(capabilitiesName); ok {
			a.mapped = namesCapability(caps, MappedRAMCapability)
		}
	}
	a.out.State.Set(configurationName, obj)
	return nil
}

func (a *analyzer) device(name string, inst uint32) *descSection {
	for _, d := range a.root.Devices {
		if d != nil && d.Name == name && d.InstanceID != nil && *d.InstanceID == int64(inst) {
			return d
		}
	}
	return nil
}

func (a *analyzer) ram(rs *ramSummary, w where) error {
	ps := uint64(a.root.PageSize)
	for {
		off := a.r.off
		v, err := a.r.be64()
		if err != nil {
			return w.wrap(off, err)
		}
		flags, addr := v&(ps-1), v&^(ps-1)
		if flags&RAMFlagMemSize != 0 {
			for total := addr; total > 0; {
				name, err := a.r.str()
				if err != nil {
					return w.wrap(off, err)
				}
				n, err := a.r.be64()
				if err != nil {
					return w.wrap(off, err)
				}
				if n > total {
					return w.err(off, "RAM block %q size exceeds the announced total", name)
				}
				total -= n
				rs.sizes.Set(name, fmt.Sprintf("0x%016x", n))
				rs.blockSizes[name] = n
				if a.mapped {
					if err := a.mappedBlock(rs, name, n, w); err != nil {
						return err
					}
				}
			}
			flags &^= RAMFlagMemSize
		}
		if flags&(RAMFlagZero|RAMFlagPage) != 0 {
			if flags&RAMFlagContinue == 0 {
				name, err := a.r.str()
				if err != nil {
					return w.wrap(off, err)
				}
				rs.lastBlock = name
			} else if rs.lastBlock == "" {
				return w.err(off, "CONTINUE page record without a previous block")
			}
			if _, ok := rs.blockSizes[rs.lastBlock]; !ok {
				return w.err(off, "page for RAM block %q, which the block list does not name", rs.lastBlock)
			}
			if flags&RAMFlagZero != 0 {
				if _, err := a.r.u8(); err != nil {
					return w.wrap(off, err)
				}
				rs.zeroPages++
			} else {
				if _, err := a.r.skip(int64(ps)); err != nil {
					return w.wrap(off, err)
				}
				rs.pages++
			}
			flags &^= RAMFlagZero | RAMFlagPage | RAMFlagContinue
		}
		rs.obj.Set("pages", rs.pages)
		rs.obj.Set("zero pages", rs.zeroPages)
		if flags&RAMFlagMultifdFlush != 0 {
			continue
		}
		if flags&RAMFlagEOS != 0 {
			return nil
		}
		if flags != 0 {
			return w.err(off, "unsupported RAM record flags %#x", flags)
		}
	}
}

// decode reads a section as its description says.
func (a *analyzer) decode(d *descSection, w where) (*Object, error) {
	obj := NewObject()
	lists := map[string]bool{}
	for _, f := range d.Fields {
		if f == nil {
			return nil, w.err(a.r.off, "null field in the vmdesc")
		}
		n := int64(1)
		if f.ArrayLen != nil {
			n = *f.ArrayLen
			if n < 0 || n > maxAnalyzeField {
				return nil, w.err(a.r.off, "field %q: bad array_len %d", f.Name, n)
			}
		}
		fw := w
		fw.field = f.Name
		for i := int64(0); i < n; i++ {
			v, err := a.value(f, fw)
			if err != nil {
				return nil, err
			}
			prev, seen := obj.Get(f.Name)
			switch {
			case !seen && (f.ArrayLen != nil || f.Index != nil):
				obj.Set(f.Name, []any{v})
				lists[f.Name] = true
			case !seen:
				obj.Set(f.Name, v)
			case lists[f.Name]:
				obj.Set(f.Name, append(prev.([]any), v))
			default:
				obj.Set(f.Name, []any{prev, v})
				lists[f.Name] = true
			}
		}
	}
	if err := a.subsections(obj, d, w); err != nil {
		return nil, err
	}
	return obj, nil
}

func (a *analyzer) subsections(obj *Object, d *descSection, w where) error {
	for _, sub := range d.Subsections {
		if sub == nil {
			return w.err(a.r.off, "null subsection in the vmdesc")
		}
		off := a.r.off
		sw := w
		sw.subsection = sub.VMSDName
		if t, err := a.r.u8(); err != nil || t != SectionSubsection {
			return sw.err(off, "subsection expected (0x05), found %#02x (%v)", t, err)
		}
		name, err := a.r.str()
		if err != nil {
			return sw.wrap(off, err)
		}
		if name != sub.VMSDName {
			return sw.err(off, "subsection %q in the stream, the vmdesc says %q", name, sub.VMSDName)
		}
		if _, err := a.r.be32(); err != nil {
			return sw.wrap(off, err)
		}
		so, err := a.decode(sub, sw)
		if err != nil {
			return err
		}
		obj.Set(name, so)
	}
	return nil
}

func (a *analyzer) value(f *descField, w where) (any, error) {
	off := a.r.off
	if a.values++; a.values > maxAnalyzeValues {
		return nil, w.err(off, "the vmdesc describes more than %d values", maxAnalyzeValues)
	}
	if f.Type == "struct" {
		if f.Struct == nil {
			return nil, w.err(off, "struct field without a struct description")
		}
		return a.decode(f.Struct, w)
	}
	if f.Type == "capability" {
		s, err := a.r.str()
		if err != nil {
			return nil, w.wrap(off, err)
		}
		return s, nil
	}
	if f.Size < 0 || f.Size > maxAnalyzeField {
		return nil, w.err(off, "bad size %d", f.Size)
	}
	b, err := a.r.readVar(f.Size)
	if err != nil {
		return nil, w.wrap(off, err)
	}
	switch {
	case f.Type == "bool" && len(b) >= 1:
		return b[0] != 0, nil
	case f.Type == "nullptr":
		return "nullptr", nil
	case isIntType(f.Type) && len(b) >= 1 && len(b) <= 8:
		var u uint64
		for _, c := range b {
			u = u<<8 | uint64(c)
		}
		s := fmt.Sprintf("0x%0*x", 2*len(b), u)
		if !strings.HasPrefix(f.Type, "uint") || strings.HasSuffix(f.Type, " equal") && f.Type != "uint32 equal" {
			shift := 64 - 8*len(b)
			if sv := int64(u<<shift) >> shift; sv < 0 {
				s = fmt.Sprintf("%s (%d)", s, sv)
			}
		}
		return s, nil
	default:
		return spaced(b), nil
	}
}

func isIntType(t string) bool {
	t = strings.TrimSuffix(strings.TrimSuffix(t, " equal"), " le")
	switch t {
	case "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64":
		return true
	}
	return false
}

func spaced(b []byte) string {
	const hexdig = "0123456789abcdef"
	out := make([]byte, 0, len(b)*3)
	for i, c := range b {
		if i > 0 {
			out = append(out, ' ')
		}
		out = append(out, hexdig[c>>4], hexdig[c&15])
	}
	return string(out)
}

// namesCapability reports whether a decoded capabilities subsection (or
// any value inside it) is the string name.
func namesCapability(v any, name string) bool {
	switch x := v.(type) {
	case string:
		return x == name
	case *Object:
		for _, k := range x.keys {
			if namesCapability(x.vals[k], name) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if namesCapability(e, name) {
				return true
			}
		}
	}
	return false
}

// mappedBlock reads a block's mapped-ram header, counts the pages its
// bitmap marks present (the rest are zero pages), records the layout under
// "mapped-ram" and moves past the pages region.
func (a *analyzer) mappedBlock(rs *ramSummary, name string, size uint64, w where) error {
	off := a.r.off
	var h [MappedRAMHeaderLen]byte
	if err := a.r.full(h[:]); err != nil {
		return w.wrap(off, fmt.Errorf("RAM block %q: mapped-ram header: %w", name, err))
	}
	pageSize := binary.BigEndian.Uint64(h[4:])
	bitmapOff := binary.BigEndian.Uint64(h[12:])
	pagesOff := binary.BigEndian.Uint64(h[20:])
	if pageSize == 0 || pageSize&(pageSize-1) != 0 || pageSize > 1<<30 || size%pageSize != 0 {
		return w.err(off+4, "RAM block %q: mapped-ram page size %d", name, pageSize)
	}
	// The header's offsets are file offsets; the stream's first byte is at
	// the reader's base.
	base := uint64(a.r.base)
	pages := size / pageSize
	if bitmapOff < base || pagesOff < base || pagesOff > 1<<62 || pages > 1<<40 {
		return w.err(off+12, "RAM block %q: bitmap at %#x, pages at %#x, before the stream or out of range", name, bitmapOff, pagesOff)
	}
	bm, err := a.readAt(int64(bitmapOff-base), int64((pages+63)/64*8))
	if err != nil {
		return w.err(off+12, "RAM block %q: read the bitmap at file offset %#x: %v", name, bitmapOff, err)
	}
	var present uint64
	for i := 0; i+8 <= len(bm); i += 8 {
		present += uint64(bits.OnesCount64(binary.LittleEndian.Uint64(bm[i:])))
	}
	present = min(present, pages)
	rs.pages += present
	rs.zeroPages += pages - present
	m, _ := rs.obj.Get("mapped-ram")
	mo, ok := m.(*Object)
	if !ok {
		mo = NewObject()
		rs.obj.Set("mapped-ram", mo)
	}
	bo := NewObject()
	bo.Set("version", binary.BigEndian.Uint32(h[0:]))
	bo.Set("page_size", pageSize)
	bo.Set("bitmap_offset", fmt.Sprintf("0x%x", bitmapOff))
	bo.Set("pages_offset", fmt.Sprintf("0x%x", pagesOff))
	bo.Set("pages present", present)
	mo.Set(name, bo)
	if err := a.r.seekTo(int64(pagesOff - base + size)); err != nil {
		return w.wrap(off+20, fmt.Errorf("RAM block %q: the stream after the pages region: %w", name, err))
	}
	return nil
}

// readAt reads n bytes at stream offset off without moving the stream.
func (a *analyzer) readAt(off, n int64) ([]byte, error) {
	if a.r.rs == nil {
		return nil, errors.New("the stream cannot seek")
	}
	end, err := a.r.rs.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || a.r.base+off > end || end-(a.r.base+off) < n {
		return nil, fmt.Errorf("%w: %d bytes at %#x are past the end", ErrTruncated, n, a.r.base+off)
	}
	buf := make([]byte, n)
	if _, err := a.r.rs.Seek(a.r.base+off, io.SeekStart); err != nil {
		return nil, err
	}
	_, err = io.ReadFull(a.r.rs, buf)
	// Put the reader back where the buffered stream expects it.
	if _, serr := a.r.rs.Seek(a.r.base+a.r.off, io.SeekStart); serr != nil && err == nil {
		err = serr
	}
	a.r.br.Reset(a.r.rs)
	return buf, err
}
