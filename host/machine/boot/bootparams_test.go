package boot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func smallE820(t *testing.T) []E820Entry {
	t.Helper()
	m, err := MemoryLayout{RAMSize: 512 << 20}.E820()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBootParamsSyntheticHeader(t *testing.T) {
	m := smallE820(t)
	zp, err := BootParams(BootParamsConfig{
		CmdlineAddr: CmdlineAddr, Cmdline: "console=ttyS0",
		InitrdAddr: 0x1_2000_0000, InitrdSize: 0x1_0000_1000,
		E820: m, RSDPAddr: 0xe0000,
	})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	checks := []struct {
		name      string
		off, size int
		want      uint64
	}{
		{"boot_flag", 0x1fe, 2, 0xaa55},
		{"header", 0x202, 4, 0x53726448},
		{"version", 0x206, 2, 0x020f},
		{"type_of_loader", 0x210, 1, 0xff},
		{"loadflags", 0x211, 1, LoadflagLoadedHigh | LoadflagCanUseHeap},
		{"cmd_line_ptr", 0x228, 4, CmdlineAddr},
		{"ext_cmd_line_ptr", 0x0c8, 4, 0},
		{"ramdisk_image", 0x218, 4, 0x2000_0000},
		{"ext_ramdisk_image", 0x0c0, 4, 1},
		{"ramdisk_size", 0x21c, 4, 0x1000},
		{"ext_ramdisk_size", 0x0c4, 4, 1},
		{"kernel_alignment", 0x230, 4, 0x200000},
		{"cmdline_size", 0x238, 4, 2047},
		{"e820_entries", 0x1e8, 1, uint64(len(m))},
		{"acpi_rsdp_addr", 0x070, 8, 0xe0000},
		{"header end (0x202 + jump byte)", 0x201, 1, 0x26c - 0x202},
	}
	for _, c := range checks {
		var got uint64
		switch c.size {
		case 1:
			got = uint64(zp[c.off])
		case 2:
			got = uint64(le.Uint16(zp[c.off:]))
		case 4:
			got = uint64(le.Uint32(zp[c.off:]))
		case 8:
			got = le.Uint64(zp[c.off:])
		}
		if got != c.want {
			t.Errorf("%s at %#x = %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	for i, e := range m {
		p := zp[0x2d0+20*i:]
		if le.Uint64(p) != e.Addr || le.Uint64(p[8:]) != e.Size || E820Type(le.Uint32(p[16:])) != e.Type {
			t.Errorf("e820 entry %d = % x, want %+v", i, p[:20], e)
		}
	}
}

func TestBootParamsCopiesBzImageHeader(t *testing.T) {
	h, err := ParseSetupHeader(bytes.NewReader(defaultBzImage().bytes()))
	if err != nil {
		t.Fatal(err)
	}
	zp, err := BootParams(BootParamsConfig{Header: h.Raw, CmdlineAddr: CmdlineAddr, Cmdline: "quiet", E820: smallE820(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(zp[offPrefAddress:]); got != 0x1000000 {
		t.Errorf("pref_address in zero page = %#x: header not copied", got)
	}
	if zp[offTypeOfLoader] != 0xff || zp[offLoadflags] != LoadflagLoadedHigh|LoadflagCanUseHeap {
		t.Errorf("type_of_loader %#x loadflags %#x", zp[offTypeOfLoader], zp[offLoadflags])
	}
	if got := binary.LittleEndian.Uint32(zp[offRamdiskImage:]); got != 0 {
		t.Errorf("ramdisk_image = %#x without an initrd", got)
	}
}

func TestBootParamsErrors(t *testing.T) {
	m := smallE820(t)
	long := strings.Repeat("a", 2048)
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, Cmdline: long, E820: m}); err == nil || !strings.Contains(err.Error(), "cmdline_size 2047") {
		t.Errorf("2048-byte command line: err = %v", err)
	}
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, Cmdline: long[:2047], E820: m}); err != nil {
		t.Errorf("2047-byte command line: %v", err)
	}
	big := make([]E820Entry, MaxE820Entries+1)
	for i := range big {
		big[i] = E820Entry{Addr: uint64(i) << 20, Size: 1 << 20, Type: E820RAM}
	}
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, E820: big}); err == nil || !strings.Contains(err.Error(), "129 entries") {
		t.Errorf("129-entry E820: err = %v", err)
	}
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, E820: big[:MaxE820Entries]}); err != nil {
		t.Errorf("128-entry E820: %v", err)
	}
	overlap := []E820Entry{{0, 0x2000, E820RAM}, {0x1000, 0x1000, E820Reserved}}
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, E820: overlap}); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlapping E820: err = %v", err)
	}
	if _, err := BootParams(BootParamsConfig{CmdlineAddr: CmdlineAddr, Cmdline: "a\x00b", E820: m}); err == nil {
		t.Error("command line with NUL accepted")
	}
	if _, err := BootParams(BootParamsConfig{Header: []byte{1, 2, 3}, CmdlineAddr: CmdlineAddr, E820: m}); err == nil {
		t.Error("3-byte setup header accepted")
	}
}

func TestWriteBootParams(t *testing.T) {
	mem := newGuestRAM(t, 2<<20)
	mem.fill(CmdlineAddr, 64, 0xee)
	err := WriteBootParams(mem, ZeroPageAddr, BootParamsConfig{CmdlineAddr: CmdlineAddr, Cmdline: "console=ttyS0", E820: smallE820(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(mem.b[CmdlineAddr : CmdlineAddr+14]); got != "console=ttyS0\x00" {
		t.Errorf("command line in memory = %q", got)
	}
	if binary.LittleEndian.Uint32(mem.b[ZeroPageAddr+offHeader:]) != headerMagic {
		t.Error("zero page not written at ZeroPageAddr")
	}
}

func TestE820Layout(t *testing.T) {
	small, err := MemoryLayout{RAMSize: 512 << 20}.E820()
	if err != nil {
		t.Fatal(err)
	}
	want := []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x60400, E820Reserved},
		{0x100000, 511 << 20, E820RAM},
		{0xfec00000, 0x1400000, E820Reserved},
	}
	if !equalE820(small, want) {
		t.Errorf("512 MiB map = %+v, want %+v", small, want)
	}
	l := MemoryLayout{RAMSize: 8 << 30}
	big, err := l.E820()
	if err != nil {
		t.Fatal(err)
	}
	want = []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x60400, E820Reserved},
		{0x100000, 0xc0000000 - 0x100000, E820RAM},
		{0xfec00000, 0x1400000, E820Reserved},
		{0x100000000, 5 << 30, E820RAM},
	}
	if !equalE820(big, want) {
		t.Errorf("8 GiB map = %+v, want %+v", big, want)
	}
	if l.RAMEnd() != 0x100000000+5<<30 || l.LowRAMEnd() != 0xc0000000 {
		t.Errorf("RAMEnd %#x LowRAMEnd %#x", l.RAMEnd(), l.LowRAMEnd())
	}
	var ram uint64
	for _, e := range big {
		if e.Type == E820RAM {
			ram += e.Size
		}
	}
	if ram != 8<<30-0x60400 {
		t.Errorf("RAM in map = %#x, want all RAM but the legacy hole", ram)
	}
	if err := ValidateE820(big); err != nil {
		t.Error(err)
	}
	if _, err := (MemoryLayout{RAMSize: 1 << 20}).E820(); err == nil {
		t.Error("1 MiB guest accepted")
	}
	if _, err := (MemoryLayout{RAMSize: 1 << 30, HoleStart: 0xfff00000}).E820(); err == nil {
		t.Error("hole start above the platform area accepted")
	}
}

func equalE820(a, b []E820Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPlaceInitrd(t *testing.T) {
	const ramEnd = 512 << 20
	addr, err := PlaceInitrd(0x123456, 0x2000000, 0x7fffffff, ramEnd)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(ramEnd-0x123456) &^ 0xfff; addr != want {
		t.Errorf("initrd at %#x, want the highest page below RAM end %#x", addr, want)
	}
	// initrd_addr_max is the last byte the initrd may occupy.
	addr, err = PlaceInitrd(0x1000, 0x200000, 0x0fffffff, ramEnd)
	if err != nil || addr != 0x0ffff000 {
		t.Errorf("with initrd_addr_max 0x0fffffff: %#x, %v; want 0xffff000", addr, err)
	}
	if addr, err = PlaceInitrd(0x1000, 0x200000, 0, 8<<30); err != nil || addr != 0x7ffff000 {
		t.Errorf("default initrd_addr_max: %#x, %v; want 0x7ffff000", addr, err)
	}
	if _, err := PlaceInitrd(ramEnd, 0x2000000, 0x7fffffff, ramEnd); err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("initrd as big as RAM: err = %v", err)
	}
	if _, err := PlaceInitrd(0x100000, ramEnd-0x80000, 0x7fffffff, ramEnd); err == nil {
		t.Error("initrd overlapping the kernel accepted")
	}
	if _, err := PlaceInitrd(0, 0, 0, ramEnd); err == nil {
		t.Error("empty initrd accepted")
	}
	mem := newGuestRAM(t, 16<<20)
	data := bytes.Repeat([]byte("initrd"), 1000)
	addr, err = LoadInitrd(bytes.NewReader(data), uint64(len(data)), mem, 0x200000, 0x7fffffff, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	if addr%pageSize != 0 || addr+uint64(len(data)) > 16<<20 || !bytes.Equal(mem.b[addr:addr+uint64(len(data))], data) {
		t.Errorf("initrd at %#x not loaded correctly", addr)
	}
	if _, err := LoadInitrd(bytes.NewReader(data), uint64(len(data))+10, mem, 0x200000, 0x7fffffff, 16<<20); err == nil {
		t.Error("initrd shorter than its announced size accepted")
	}
}

func TestVirtioMMIOCmdline(t *testing.T) {
	s, err := VirtioMMIOCmdline([]VirtioMMIODevice{
		{Base: 0xd0000000, Size: 0x200, IRQ: 5},
		{Base: 0xd0001000, Size: 0x1000, IRQ: 6},
		{Base: 0xd0100000, Size: 0x100000, IRQ: 7},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=1M@0xd0100000:7"
	if s != want {
		t.Errorf("got  %q\nwant %q", s, want)
	}
	if _, err := VirtioMMIOCmdline([]VirtioMMIODevice{{Base: 0xd0000000, Size: 0, IRQ: 5}}); err == nil {
		t.Error("zero size accepted")
	}
	if _, err := VirtioMMIOCmdline([]VirtioMMIODevice{{Base: 0xd0000000, Size: 0x200}}); err == nil {
		t.Error("IRQ 0 accepted")
	}
	if s, err := VirtioMMIOCmdline(nil); err != nil || s != "" {
		t.Errorf("no devices: %q, %v", s, err)
	}
}
