package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// ELF constants used by the loader (System V ABI, x86-64 supplement).
const (
	elfHeaderSize  = 64
	elfPhdrSize    = 56
	elfShdrSize    = 64
	elfClass64     = 2
	elfData2LSB    = 1
	elfVersion     = 1
	elfTypeExec    = 2
	elfTypeDyn     = 3
	elfMachineX86  = 62 // EM_X86_64
	elfPTLoad      = 1
	elfPTNote      = 4
	elfSHTNote     = 7
	elfPNXNum      = 0xffff
	maxNoteSize    = 1 << 20
	xenNoteName    = "Xen"
	pvhEntryType   = 18 // XEN_ELFNOTE_PHYS32_ENTRY
	maxSectionHdrs = 4096
)

// ErrNotELF reports a file that does not start with the ELF magic.
var ErrNotELF = errors.New("not an ELF file")

// elfHeader holds the fields of an ELF64 file header the loader uses.
type elfHeader struct {
	typ       uint16
	entry     uint64
	phoff     uint64
	shoff     uint64
	phnum     uint16
	shnum     uint16
	shentsize uint16
}

// elfSegment is one program header.
type elfSegment struct {
	index  int
	typ    uint32
	offset uint64
	vaddr  uint64
	paddr  uint64
	filesz uint64
	memsz  uint64
}

// readELFHeader reads and validates an ELF64 little-endian x86-64 header.
func readELFHeader(kernel io.ReaderAt) (elfHeader, error) {
	var b [elfHeaderSize]byte
	if err := readFull(kernel, b[:], 0); err != nil {
		return elfHeader{}, fmt.Errorf("ELF header: %w", err)
	}
	if !bytes.Equal(b[:4], []byte{0x7f, 'E', 'L', 'F'}) {
		return elfHeader{}, ErrNotELF
	}
	if b[4] != elfClass64 {
		return elfHeader{}, fmt.Errorf("ELF class %d: only 64-bit (class 2) kernels are supported", b[4])
	}
	if b[5] != elfData2LSB {
		return elfHeader{}, fmt.Errorf("ELF data encoding %d: only little-endian (1) is supported", b[5])
	}
	if b[6] != elfVersion {
		return elfHeader{}, fmt.Errorf("ELF ident version %d: want 1", b[6])
	}
	le := binary.LittleEndian
	h := elfHeader{
		typ:       le.Uint16(b[16:]),
		entry:     le.Uint64(b[24:]),
		phoff:     le.Uint64(b[32:]),
		shoff:     le.Uint64(b[40:]),
		phnum:     le.Uint16(b[56:]),
		shentsize: le.Uint16(b[58:]),
		shnum:     le.Uint16(b[60:]),
	}
	if m := le.Uint16(b[18:]); m != elfMachineX86 {
		return elfHeader{}, fmt.Errorf("ELF machine %d: only x86-64 (62) is supported", m)
	}
	if h.typ != elfTypeExec && h.typ != elfTypeDyn {
		return elfHeader{}, fmt.Errorf("ELF type %d: want an executable (2)", h.typ)
	}
	if v := le.Uint32(b[20:]); v != elfVersion {
		return elfHeader{}, fmt.Errorf("ELF version %d: want 1", v)
	}
	if es := le.Uint16(b[54:]); h.phnum != 0 && es != elfPhdrSize {
		return elfHeader{}, fmt.Errorf("ELF program header size %d: want %d", es, elfPhdrSize)
	}
	if h.phnum == elfPNXNum {
		return elfHeader{}, errors.New("ELF uses extended program header numbering (PN_XNUM), not supported")
	}
	return h, nil
}

// readSegments reads every program header.
func readSegments(kernel io.ReaderAt, h elfHeader) ([]elfSegment, error) {
	if h.phnum == 0 {
		return nil, nil
	}
	size := uint64(h.phnum) * elfPhdrSize
	if h.phoff > ^uint64(0)-size {
		return nil, fmt.Errorf("ELF program headers at %#x overflow", h.phoff)
	}
	tab := make([]byte, size)
	if err := readFull(kernel, tab, h.phoff); err != nil {
		return nil, fmt.Errorf("ELF program headers: %w", err)
	}
	le := binary.LittleEndian
	segs := make([]elfSegment, h.phnum)
	for i := range segs {
		p := tab[i*elfPhdrSize:]
		segs[i] = elfSegment{
			index:  i,
			typ:    le.Uint32(p[0:]),
			offset: le.Uint64(p[8:]),
			vaddr:  le.Uint64(p[16:]),
			paddr:  le.Uint64(p[24:]),
			filesz: le.Uint64(p[32:]),
			memsz:  le.Uint64(p[40:]),
		}
	}
	return segs, nil
}

// LoadELF loads an ELF64 x86-64 kernel (a freestanding guest or an
// uncompressed Linux vmlinux) into guest memory at the physical addresses of
// its PT_LOAD segments (p_paddr), zero-filling each segment's tail beyond
// p_filesz. It returns the physical entry point and the end of the highest
// segment (first free byte above the kernel).
//
// Every segment must lie inside [HighMemStart, memSize) (below 1 MiB are the
// boot structures), inside the file, must not overlap another segment, and
// must have p_filesz <= p_memsz. The entry point must fall inside a loaded
// segment, either as a physical address or as a virtual address, which is
// translated to its physical address. Nothing is written to guest memory
// before the whole file has been validated.
func LoadELF(kernel io.ReaderAt, mem io.WriterAt, memSize uint64) (entry uint64, end uint64, err error) {
	h, err := readELFHeader(kernel)
	if err != nil {
		return 0, 0, err
	}
	segs, err := readSegments(kernel, h)
	if err != nil {
		return 0, 0, err
	}
	var loads []elfSegment
	for _, s := range segs {
		if s.typ != elfPTLoad || s.memsz == 0 {
			continue
		}
		if s.filesz > s.memsz {
			return 0, 0, fmt.Errorf("ELF segment %d: file size %#x exceeds memory size %#x", s.index, s.filesz, s.memsz)
		}
		if !rangeFits(s.paddr, s.memsz, memSize) {
			return 0, 0, fmt.Errorf("ELF segment %d: physical range %#x+%#x is outside guest RAM (size %#x)", s.index, s.paddr, s.memsz, memSize)
		}
		if s.paddr < HighMemStart {
			return 0, 0, fmt.Errorf("ELF segment %d: physical address %#x is below %#x, where the boot structures live", s.index, s.paddr, HighMemStart)
		}
		if s.offset > ^uint64(0)-s.filesz {
			return 0, 0, fmt.Errorf("ELF segment %d: file range %#x+%#x overflows", s.index, s.offset, s.filesz)
		}
		if s.filesz > 0 {
			// Probe the last byte so a truncated file fails before any write.
			var last [1]byte
			if err := readFull(kernel, last[:], s.offset+s.filesz-1); err != nil {
				return 0, 0, fmt.Errorf("ELF segment %d: file range %#x+%#x is outside the file: %w", s.index, s.offset, s.filesz, err)
			}
		}
		loads = append(loads, s)
	}
	if len(loads) == 0 {
		return 0, 0, errors.New("ELF has no loadable segments")
	}
	sorted := append([]elfSegment(nil), loads...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].paddr < sorted[j].paddr })
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if a.paddr+a.memsz > b.paddr {
			return 0, 0, fmt.Errorf("ELF segments %d (%#x+%#x) and %d (%#x+%#x) overlap", a.index, a.paddr, a.memsz, b.index, b.paddr, b.memsz)
		}
	}
	entry, err = physicalEntry(h.entry, loads)
	if err != nil {
		return 0, 0, err
	}
	for _, s := range loads {
		if err := copyToGuest(mem, s.paddr, kernel, s.offset, s.filesz); err != nil {
			return 0, 0, fmt.Errorf("ELF segment %d: %w", s.index, err)
		}
		if err := zeroGuest(mem, s.paddr+s.filesz, s.memsz-s.filesz); err != nil {
			return 0, 0, fmt.Errorf("ELF segment %d: clear bss: %w", s.index, err)
		}
		end = max(end, s.paddr+s.memsz)
	}
	return entry, end, nil
}

// physicalEntry maps e_entry to a physical address inside a loaded segment.
func physicalEntry(e uint64, loads []elfSegment) (uint64, error) {
	for _, s := range loads {
		if e >= s.paddr && e-s.paddr < s.memsz {
			return e, nil
		}
	}
	for _, s := range loads {
		if e >= s.vaddr && e-s.vaddr < s.memsz {
			return s.paddr + (e - s.vaddr), nil
		}
	}
	return 0, fmt.Errorf("ELF entry point %#x is not inside any loadable segment", e)
}

// FindPVHEntry looks for the PVH entry note (owner "Xen", type 18,
// XEN_ELFNOTE_PHYS32_ENTRY) in the PT_NOTE segments, then in the SHT_NOTE
// sections, of an ELF64 x86-64 file. It returns the 32-bit physical entry
// point and found=true, or found=false when the file has no such note.
func FindPVHEntry(kernel io.ReaderAt) (entry uint64, found bool, err error) {
	h, err := readELFHeader(kernel)
	if err != nil {
		return 0, false, err
	}
	segs, err := readSegments(kernel, h)
	if err != nil {
		return 0, false, err
	}
	var regions [][2]uint64
	for _, s := range segs {
		if s.typ == elfPTNote {
			regions = append(regions, [2]uint64{s.offset, s.filesz})
		}
	}
	if sections, err := noteSections(kernel, h); err != nil {
		return 0, false, err
	} else {
		regions = append(regions, sections...)
	}
	for _, r := range regions {
		if r[1] > maxNoteSize {
			return 0, false, fmt.Errorf("ELF note area at %#x: size %#x exceeds %#x", r[0], r[1], maxNoteSize)
		}
		data := make([]byte, r[1])
		if err := readFull(kernel, data, r[0]); err != nil {
			return 0, false, fmt.Errorf("ELF note area at %#x: %w", r[0], err)
		}
		e, ok, err := pvhEntryInNotes(data)
		if err != nil {
			return 0, false, fmt.Errorf("ELF note area at %#x: %w", r[0], err)
		}
		if ok {
			return e, true, nil
		}
	}
	return 0, false, nil
}

// noteSections returns the file ranges of SHT_NOTE sections.
func noteSections(kernel io.ReaderAt, h elfHeader) ([][2]uint64, error) {
	if h.shoff == 0 || h.shnum == 0 {
		return nil, nil
	}
	if h.shentsize != elfShdrSize {
		return nil, fmt.Errorf("ELF section header size %d: want %d", h.shentsize, elfShdrSize)
	}
	if h.shnum > maxSectionHdrs {
		return nil, fmt.Errorf("ELF has %d section headers, more than %d", h.shnum, maxSectionHdrs)
	}
	tab := make([]byte, uint64(h.shnum)*elfShdrSize)
	if err := readFull(kernel, tab, h.shoff); err != nil {
		return nil, fmt.Errorf("ELF section headers: %w", err)
	}
	le := binary.LittleEndian
	var out [][2]uint64
	for i := 0; i < int(h.shnum); i++ {
		s := tab[i*elfShdrSize:]
		if le.Uint32(s[4:]) == elfSHTNote {
			out = append(out, [2]uint64{le.Uint64(s[24:]), le.Uint64(s[32:])})
		}
	}
	return out, nil
}

// pvhEntryInNotes walks a note area (4-byte aligned Elf64_Nhdr records).
func pvhEntryInNotes(data []byte) (uint64, bool, error) {
	le := binary.LittleEndian
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for off := uint64(0); off+12 <= uint64(len(data)); {
		namesz := uint64(le.Uint32(data[off:]))
		descsz := uint64(le.Uint32(data[off+4:]))
		typ := le.Uint32(data[off+8:])
		nameOff := off + 12
		descOff := nameOff + align4(namesz)
		next := descOff + align4(descsz)
		if descOff+descsz > uint64(len(data)) || next < off {
			return 0, false, fmt.Errorf("note at %#x (name %d bytes, desc %d bytes) runs past the note area", off, namesz, descsz)
		}
		name := data[nameOff : nameOff+namesz]
		if typ == pvhEntryType && string(bytes.TrimRight(name, "\x00")) == xenNoteName {
			desc := data[descOff : descOff+descsz]
			switch descsz {
			case 4:
				return uint64(le.Uint32(desc)), true, nil
			case 8:
				return le.Uint64(desc), true, nil
			default:
				return 0, false, fmt.Errorf("PVH entry note has a %d-byte descriptor, want 4 or 8", descsz)
			}
		}
		off = min(next, uint64(len(data)))
	}
	return 0, false, nil
}
