package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testSeg is a program header plus the bytes it carries in the file.
type testSeg struct {
	typ          uint32
	paddr, vaddr uint64
	data         []byte
	memsz        uint64 // 0 means len(data)
	offset       uint64 // 0 means "where the builder puts data"
	filesz       uint64 // 0 means len(data)
}

// testELF describes an ELF64 file the tests build byte by byte.
type testELF struct {
	class, data byte
	machine     uint16
	typ         uint16
	entry       uint64
	segs        []testSeg
}

// defaultELF is a valid two-segment kernel at 1 MiB with a PVH note.
func defaultELF() testELF {
	code := bytes.Repeat([]byte{0x90}, 300)
	code[0] = 0xf4
	data := []byte("wasmvmm test guest data")
	return testELF{
		class: elfClass64, data: elfData2LSB, machine: elfMachineX86, typ: elfTypeExec,
		entry: 0x100010,
		segs: []testSeg{
			{typ: elfPTLoad, paddr: 0x100000, vaddr: 0x100000, data: code},
			{typ: elfPTLoad, paddr: 0x200000, vaddr: 0xffffffff80200000, data: data, memsz: 0x3000},
			{typ: elfPTNote, data: xenNote(0x100040)},
		},
	}
}

// xenNote encodes a PVH entry note (name "Xen", type 18, 4-byte entry).
func xenNote(entry uint32) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	_ = binary.Write(&b, le, [3]uint32{4, 4, pvhEntryType})
	b.WriteString("Xen\x00")
	_ = binary.Write(&b, le, entry)
	return b.Bytes()
}

// bytes encodes the ELF: header, program headers, then segment data.
func (e testELF) bytes() []byte {
	le := binary.LittleEndian
	h := make([]byte, elfHeaderSize)
	copy(h, []byte{0x7f, 'E', 'L', 'F', e.class, e.data, 1})
	le.PutUint16(h[16:], e.typ)
	le.PutUint16(h[18:], e.machine)
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[24:], e.entry)
	le.PutUint64(h[32:], elfHeaderSize)
	le.PutUint16(h[52:], elfHeaderSize)
	le.PutUint16(h[54:], elfPhdrSize)
	le.PutUint16(h[56:], uint16(len(e.segs)))
	out := append([]byte(nil), h...)
	dataOff := uint64(elfHeaderSize + elfPhdrSize*len(e.segs))
	var payload []byte
	for _, s := range e.segs {
		p := make([]byte, elfPhdrSize)
		off := dataOff + uint64(len(payload))
		if s.offset != 0 {
			off = s.offset
		}
		filesz := uint64(len(s.data))
		if s.filesz != 0 {
			filesz = s.filesz
		}
		memsz := filesz
		if s.memsz != 0 {
			memsz = s.memsz
		}
		le.PutUint32(p[0:], s.typ)
		le.PutUint32(p[4:], 7)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], s.vaddr)
		le.PutUint64(p[24:], s.paddr)
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], memsz)
		le.PutUint64(p[48:], 0x1000)
		out = append(out, p...)
		payload = append(payload, s.data...)
	}
	return append(out, payload...)
}

func TestLoadELF(t *testing.T) {
	e := defaultELF()
	mem := newGuestRAM(t, 16<<20)
	mem.fill(0x200000, 0x4000, 0xaa) // bss must be cleared
	entry, end, err := LoadELF(bytes.NewReader(e.bytes()), mem, 16<<20)
	if err != nil {
		t.Fatalf("LoadELF: %v", err)
	}
	if entry != 0x100010 {
		t.Errorf("entry = %#x, want 0x100010", entry)
	}
	if end != 0x203000 {
		t.Errorf("end = %#x, want 0x203000", end)
	}
	if !bytes.Equal(mem.b[0x100000:0x100000+300], e.segs[0].data) {
		t.Error("code segment not loaded at its p_paddr")
	}
	d := e.segs[1].data
	if !bytes.Equal(mem.b[0x200000:0x200000+len(d)], d) {
		t.Error("data segment not loaded at its p_paddr")
	}
	if !bytes.Equal(mem.b[0x200000+len(d):0x203000], make([]byte, 0x3000-len(d))) {
		t.Error("bss (p_memsz beyond p_filesz) not zeroed")
	}
	if mem.b[0x203000] != 0xaa {
		t.Error("loader wrote past the end of the segment")
	}
	pvh, found, err := FindPVHEntry(bytes.NewReader(e.bytes()))
	if err != nil || !found || pvh != 0x100040 {
		t.Errorf("FindPVHEntry = %#x, %v, %v; want 0x100040, true, nil", pvh, found, err)
	}
}

func TestLoadELFEntryByVirtualAddress(t *testing.T) {
	e := defaultELF()
	e.entry = 0xffffffff80200008 // inside segment 1's virtual range
	mem := newGuestRAM(t, 16<<20)
	entry, _, err := LoadELF(bytes.NewReader(e.bytes()), mem, 16<<20)
	if err != nil {
		t.Fatalf("LoadELF: %v", err)
	}
	if entry != 0x200008 {
		t.Errorf("entry = %#x, want the physical 0x200008", entry)
	}
}

func TestFindPVHEntryAbsent(t *testing.T) {
	e := defaultELF()
	e.segs = e.segs[:2]
	_, found, err := FindPVHEntry(bytes.NewReader(e.bytes()))
	if err != nil || found {
		t.Fatalf("FindPVHEntry on a file without a note = found %v, err %v", found, err)
	}
}

func TestLoadELFRejectsBadFiles(t *testing.T) {
	const ram = 16 << 20
	cases := []struct {
		name   string
		file   func() []byte
		substr string
	}{
		{"not ELF", func() []byte {
			return []byte("MZ this is not an ELF file, it is something else entirely, padded out to 64 bytes")
		}, "not an ELF"},
		{"truncated header", func() []byte { return defaultELF().bytes()[:40] }, "too short"},
		{"truncated program headers", func() []byte { return defaultELF().bytes()[:elfHeaderSize+20] }, "program headers"},
		{"truncated segment data", func() []byte { b := defaultELF().bytes(); return b[:len(b)-200] }, "outside the file"},
		{"32-bit class", func() []byte { e := defaultELF(); e.class = 1; return e.bytes() }, "class 1"},
		{"big endian", func() []byte { e := defaultELF(); e.data = 2; return e.bytes() }, "little-endian"},
		{"wrong machine", func() []byte { e := defaultELF(); e.machine = 183; return e.bytes() }, "machine 183"},
		{"relocatable object", func() []byte { e := defaultELF(); e.typ = 1; return e.bytes() }, "type 1"},
		{"segment outside RAM", func() []byte { e := defaultELF(); e.segs[1].paddr = ram - 0x1000; return e.bytes() }, "outside guest RAM"},
		{"segment wraps", func() []byte { e := defaultELF(); e.segs[1].paddr = ^uint64(0) - 10; return e.bytes() }, "outside guest RAM"},
		{"segment below 1 MiB", func() []byte { e := defaultELF(); e.segs[1].paddr = 0x7000; return e.bytes() }, "below 0x100000"},
		{"filesz > memsz", func() []byte { e := defaultELF(); e.segs[1].memsz = 4; return e.bytes() }, "exceeds memory size"},
		{"overlapping segments", func() []byte { e := defaultELF(); e.segs[1].paddr = 0x100100; return e.bytes() }, "overlap"},
		{"offset beyond file", func() []byte { e := defaultELF(); e.segs[0].offset = 1 << 40; return e.bytes() }, "outside the file"},
		{"offset overflow", func() []byte { e := defaultELF(); e.segs[0].offset = ^uint64(0) - 5; return e.bytes() }, "overflows"},
		{"entry outside segments", func() []byte { e := defaultELF(); e.entry = 0x500000; return e.bytes() }, "entry point"},
		{"no load segments", func() []byte { e := defaultELF(); e.segs = e.segs[2:]; return e.bytes() }, "no loadable"},
		{"huge filesz", func() []byte {
			e := defaultELF()
			e.segs[0].filesz = 1 << 62
			e.segs[0].memsz = 1 << 62
			return e.bytes()
		}, "outside guest RAM"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mem := newGuestRAM(t, ram)
			_, _, err := LoadELF(bytes.NewReader(c.file()), mem, ram)
			if err == nil {
				t.Fatal("LoadELF accepted a bad file")
			}
			if !strings.Contains(err.Error(), c.substr) {
				t.Fatalf("error %q does not mention %q", err, c.substr)
			}
			if !bytes.Equal(mem.b[:4<<20], make([]byte, 4<<20)) {
				t.Fatal("guest memory was written although the file was rejected")
			}
		})
	}
	if _, _, err := LoadELF(bytes.NewReader([]byte("short")), newGuestRAM(t, ram), ram); !errors.Is(err, errShortFile) {
		t.Errorf("5-byte file: err = %v, want errShortFile", err)
	}
}

func TestFindPVHEntryRejectsBadNotes(t *testing.T) {
	e := defaultELF()
	n := xenNote(0x100040)
	binary.LittleEndian.PutUint32(n[4:], 0x1000) // descsz runs past the area
	e.segs[2].data = n
	if _, _, err := FindPVHEntry(bytes.NewReader(e.bytes())); err == nil || !strings.Contains(err.Error(), "runs past") {
		t.Fatalf("FindPVHEntry with an oversized descriptor: err = %v", err)
	}
}

// FuzzLoadELF checks that no input makes the loader or the note parser
// panic or write outside guest memory.
func FuzzLoadELF(f *testing.F) {
	f.Add(defaultELF().bytes())
	e := defaultELF()
	e.entry = 0xffffffff80200008
	f.Add(e.bytes())
	f.Add([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	const ram = 4 << 20
	mem := newGuestRAM(f, ram)
	f.Fuzz(func(t *testing.T, b []byte) {
		entry, end, err := LoadELF(bytes.NewReader(b), mem, ram)
		if err == nil && (end > ram || entry >= end) {
			t.Fatalf("accepted file: entry %#x end %#x outside RAM %#x", entry, end, ram)
		}
		_, _, _ = FindPVHEntry(bytes.NewReader(b))
	})
}

// guestSource is a freestanding 64-bit guest with a PVH note, compiled with
// the host gcc to check the loader against a real toolchain's output.
const guestSource = `
	.section .note.Xen, "a", @note
	.p2align 2
	.long 4, 4, 18
	.asciz "Xen"
	.long pvh_start
	.text
	.code32
	.globl pvh_start
pvh_start:
	hlt
	.code64
	.globl _start
_start:
	movl $0x2a, %eax
	hlt
	.data
message:
	.ascii "hello from the wasmvmm test guest"
	.bss
	.balign 4096
scratch:
	.skip 8192
`

const guestLinkerScript = `
ENTRY(_start)
PHDRS { text PT_LOAD FLAGS(5); data PT_LOAD FLAGS(6); note PT_NOTE FLAGS(4); }
SECTIONS {
	. = 0x100000;
	.text : { *(.text) } :text
	.note.Xen : { *(.note.Xen) } :text :note
	. = ALIGN(0x1000);
	.data : { *(.data) } :data
	.bss : { *(.bss) } :data
	/DISCARD/ : { *(.note.gnu.property) *(.comment) }
}
`

func TestLoadELFBuiltByGCC(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	requirePrereq(t, err == nil, "gcc not found: %v", err)
	dir := t.TempDir()
	src := filepath.Join(dir, "guest.S")
	lds := filepath.Join(dir, "guest.lds")
	out := filepath.Join(dir, "guest.elf")
	if err := os.WriteFile(src, []byte(guestSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lds, []byte(guestLinkerScript), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gcc, "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-T,"+lds, "-o", out, src)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const ram = 8 << 20
	mem := newGuestRAM(t, ram)
	mem.fill(0x101000, 0x4000, 0xcc)
	entry, end, err := LoadELF(f, mem, ram)
	if err != nil {
		t.Fatalf("LoadELF(gcc output): %v", err)
	}
	// _start follows the 1-byte hlt at pvh_start.
	if entry != 0x100001 {
		t.Errorf("entry = %#x, want 0x100001", entry)
	}
	if want := []byte{0xf4, 0xb8, 0x2a, 0, 0, 0, 0xf4}; !bytes.Equal(mem.b[0x100000:0x100007], want) {
		t.Errorf("code at 1 MiB = % x, want % x", mem.b[0x100000:0x100007], want)
	}
	if !bytes.Contains(mem.b[0x101000:0x102000], []byte("hello from the wasmvmm test guest")) {
		t.Error(".data not loaded at 0x101000")
	}
	// .bss (8 KiB at the next page) must be zero and end the image.
	if end != 0x104000 {
		t.Errorf("end = %#x, want 0x104000", end)
	}
	if !bytes.Equal(mem.b[0x102000:0x104000], make([]byte, 0x2000)) {
		t.Error(".bss not zeroed")
	}
	pvh, found, err := FindPVHEntry(f)
	if err != nil || !found || pvh != 0x100000 {
		t.Errorf("FindPVHEntry = %#x, %v, %v; want 0x100000, true, nil", pvh, found, err)
	}
}
