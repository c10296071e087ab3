package acpi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// testConfig is a machine with two vCPUs, three virtio-mmio devices (one
// edge-triggered) and two COM ports.
func testConfig() Config {
	return Config{
		CPUs: 2,
		VirtioMMIO: []VirtioMMIODevice{
			{Base: 0xd0000000, Size: 0x200, IRQ: 5},
			{Base: 0xd0001000, Size: 0x1000, IRQ: 6},
			{Base: 0xd0002000, Size: 0x1000, IRQ: 16, EdgeTriggered: true},
		},
		Serial: []SerialPort{{Port: 0x3f8, IRQ: 4}, {Port: 0x2f8, IRQ: 3}},
	}
}

func TestBuildChecksumsAndLinks(t *testing.T) {
	tabs, err := Build(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if tabs.RSDPAddr != DefaultAddr || tabs.Tables[0].Signature != "RSDP" || tabs.Tables[0].Addr != DefaultAddr {
		t.Fatalf("RSDP at %#x, first table %s at %#x", tabs.RSDPAddr, tabs.Tables[0].Signature, tabs.Tables[0].Addr)
	}
	prevEnd := uint64(0)
	for _, tab := range tabs.Tables {
		if tab.Addr < prevEnd || tab.Addr%16 != 0 {
			t.Errorf("%s at %#x overlaps the previous table (ending %#x) or is unaligned", tab.Signature, tab.Addr, prevEnd)
		}
		prevEnd = tab.Addr + uint64(len(tab.Data))
		switch tab.Signature {
		case "RSDP":
			if Sum8(tab.Data[:20]) != 0 || Sum8(tab.Data) != 0 {
				t.Errorf("RSDP checksums: first 20 bytes sum %#x, all 36 sum %#x", Sum8(tab.Data[:20]), Sum8(tab.Data))
			}
			if tab.Data[15] != 2 || le.Uint32(tab.Data[20:]) != 36 {
				t.Errorf("RSDP revision %d length %d", tab.Data[15], le.Uint32(tab.Data[20:]))
			}
		case "FACS":
			if tab.Addr%64 != 0 || le.Uint32(tab.Data[4:]) != 64 {
				t.Errorf("FACS at %#x, length %d", tab.Addr, le.Uint32(tab.Data[4:]))
			}
		default:
			if got := le.Uint32(tab.Data[4:]); int(got) != len(tab.Data) {
				t.Errorf("%s header length %d, table has %d bytes", tab.Signature, got, len(tab.Data))
			}
			if Sum8(tab.Data) != 0 {
				t.Errorf("%s checksum: bytes sum to %#x", tab.Signature, Sum8(tab.Data))
			}
			if string(tab.Data[:4]) != tab.Signature {
				t.Errorf("table %s has signature %q", tab.Signature, tab.Data[:4])
			}
		}
	}
	rsdp, xsdt, rsdt := tabs.Table("RSDP").Data, tabs.Table("XSDT"), tabs.Table("RSDT")
	if le.Uint64(rsdp[24:]) != xsdt.Addr || uint64(le.Uint32(rsdp[16:])) != rsdt.Addr {
		t.Error("RSDP does not point at the XSDT and the RSDT")
	}
	fadt, madt := tabs.Table("FACP"), tabs.Table("APIC")
	if le.Uint64(xsdt.Data[36:]) != fadt.Addr || le.Uint64(xsdt.Data[44:]) != madt.Addr || len(xsdt.Data) != 52 {
		t.Error("XSDT does not list exactly the FADT and the MADT")
	}
	if uint64(le.Uint32(rsdt.Data[36:])) != fadt.Addr || uint64(le.Uint32(rsdt.Data[40:])) != madt.Addr {
		t.Error("RSDT does not list the FADT and the MADT")
	}
	dsdt, facs := tabs.Table("DSDT"), tabs.Table("FACS")
	f := fadt.Data
	if len(f) != 276 || f[8] != 6 {
		t.Errorf("FADT length %d revision %d, want 276 and 6", len(f), f[8])
	}
	if uint64(le.Uint32(f[40:])) != dsdt.Addr || le.Uint64(f[140:]) != dsdt.Addr || le.Uint64(f[132:]) != facs.Addr {
		t.Error("FADT does not point at the DSDT and the FACS")
	}
	if le.Uint32(f[112:])&(1<<20) != 0 {
		t.Error("FADT is hardware-reduced; the guests need PM1a_CNT")
	}
	if le.Uint16(f[46:]) != 9 || le.Uint32(f[56:]) != 0x600 || le.Uint32(f[64:]) != 0x604 || le.Uint32(f[76:]) != 0x608 {
		t.Error("FADT SCI / PM block addresses wrong")
	}
	// X_PM1a_CNT_BLK: system I/O, 16 bits, at 0x604.
	if f[172] != 1 || f[173] != 16 || le.Uint64(f[176:]) != 0x604 {
		t.Errorf("X_PM1a_CNT_BLK = % x", f[172:184])
	}
	// MADT: header, 2 local APICs, IOAPIC, 2 overrides, 1 NMI.
	if want := 36 + 8 + 2*8 + 12 + 2*10 + 6; len(madt.Data) != want {
		t.Errorf("MADT length %d, want %d", len(madt.Data), want)
	}
}

// TestLegacyScanFindsTables writes the tables into guest memory and finds
// them the way an OS does without acpi_rsdp_addr: scan 0xe0000–0xfffff on
// 16-byte boundaries for a valid RSDP, then follow the XSDT to the FADT and
// the FADT to the DSDT.
func TestLegacyScanFindsTables(t *testing.T) {
	tabs, err := Build(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	mem := &byteMem{b: make([]byte, 1<<20)}
	if err := tabs.WriteToGuest(mem); err != nil {
		t.Fatal(err)
	}
	var rsdp uint64
	for a := uint64(0xe0000); a < 0x100000; a += 16 {
		if string(mem.b[a:a+8]) == "RSD PTR " && Sum8(mem.b[a:a+20]) == 0 {
			rsdp = a
			break
		}
	}
	if rsdp == 0 {
		t.Fatal("legacy scan found no RSDP")
	}
	xsdt := le.Uint64(mem.b[rsdp+24:])
	n := (le.Uint32(mem.b[xsdt+4:]) - 36) / 8
	var found []string
	for i := uint64(0); i < uint64(n); i++ {
		p := le.Uint64(mem.b[xsdt+36+8*i:])
		found = append(found, string(mem.b[p:p+4]))
		if string(mem.b[p:p+4]) == "FACP" {
			d := le.Uint64(mem.b[p+140:])
			if string(mem.b[d:d+4]) != "DSDT" {
				t.Errorf("FADT's X_DSDT %#x has signature %q", d, mem.b[d:d+4])
			}
			length := le.Uint32(mem.b[d+4:])
			if Sum8(mem.b[d:d+uint64(length)]) != 0 {
				t.Error("DSDT read back from guest memory has a bad checksum")
			}
		}
	}
	if strings.Join(found, ",") != "FACP,APIC" {
		t.Errorf("XSDT lists %v", found)
	}
}

// byteMem is guest memory backed by a plain byte slice.
type byteMem struct{ b []byte }

func (m *byteMem) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write %#x+%#x outside %#x bytes", off, len(p), len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func TestBuildPlacementAndErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Addr = 0x9f000
	tabs, err := Build(cfg)
	if err != nil || tabs.RSDPAddr != 0x9f000 {
		t.Fatalf("Build at 0x9f000: %v", err)
	}
	cfg.Size = 0x100
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "only 0x100") {
		t.Errorf("too little room: err = %v", err)
	}
	bad := []struct {
		name string
		mod  func(*Config)
	}{
		{"no CPUs", func(c *Config) { c.CPUs = 0 }},
		{"256 CPUs", func(c *Config) { c.CPUs = 256 }},
		{"device above 4 GiB", func(c *Config) { c.VirtioMMIO[0].Base = 1 << 32 }},
		{"device crossing 4 GiB", func(c *Config) { c.VirtioMMIO[0].Base = 0xffffff00; c.VirtioMMIO[0].Size = 0x200 }},
		{"empty device", func(c *Config) { c.VirtioMMIO[0].Size = 0 }},
		{"serial IRQ 16", func(c *Config) { c.Serial[0].IRQ = 16 }},
		{"unaligned address", func(c *Config) { c.Addr = 0xe0008 }},
		{"tables above 4 GiB", func(c *Config) { c.Addr = 0xffffff00; c.Size = 0x10000 }},
	}
	for _, b := range bad {
		c := testConfig()
		b.mod(&c)
		if _, err := Build(c); err == nil {
			t.Errorf("%s: accepted", b.name)
		}
	}
	if tabs, err := Build(Config{CPUs: MaxCPUs}); err != nil || len(tabs.Table("APIC").Data) != 36+8+255*8+12+20+6 {
		t.Errorf("255 CPUs: %v", err)
	}
}

func TestAMLEncoding(t *testing.T) {
	var a aml
	for _, c := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}},          // 65 = 0x41: low nibble 1, then 4
		{0xffd, []byte{0x4f, 0xff}},       // 0xfff
		{0xffe, []byte{0x81, 0x00, 0x01}}, // 0x1001
	} {
		if got := a.pkgLength(c.n); !bytes.Equal(got, c.want) {
			t.Errorf("pkgLength(%d) = % x, want % x", c.n, got, c.want)
		}
	}
	if got := a.eisaID("PNP0501"); got != 0x0105d041 {
		t.Errorf("EisaId(PNP0501) = %#x, want 0x0105d041", got)
	}
	if got := a.eisaID("PNP0C0C"); got != 0x0c0cd041 {
		t.Errorf("EisaId(PNP0C0C) = %#x, want 0x0c0cd041", got)
	}
	for v, want := range map[uint64][]byte{
		0: {0}, 1: {1}, 2: {0x0a, 2}, 0x1234: {0x0b, 0x34, 0x12},
		0x12345678: {0x0c, 0x78, 0x56, 0x34, 0x12}, 1 << 32: {0x0e, 0, 0, 0, 0, 1, 0, 0, 0},
	} {
		if got := a.integer(v); !bytes.Equal(got, want) {
			t.Errorf("integer(%#x) = % x, want % x", v, got, want)
		}
	}
	if got := a.nameString("\\_SB_.COM1"); !bytes.Equal(got, []byte("\\\x2e_SB_COM1")) {
		t.Errorf("nameString dual = %q", got)
	}
	if got := a.nameString("\\A.B.C"); !bytes.Equal(got, []byte("\\\x2f\x03A___B___C___")) {
		t.Errorf("nameString multi = %q", got)
	}
	if a.err != nil {
		t.Fatalf("valid input flagged: %v", a.err)
	}
	for _, bad := range []func(*aml){
		func(a *aml) { a.nameSeg("TOOLONG") },
		func(a *aml) { a.nameSeg("1ABC") },
		func(a *aml) { a.nameSeg("a") },
		func(a *aml) { a.eisaID("PNP05") },
		func(a *aml) { a.eisaID("pnp0501") },
		func(a *aml) { a.eisaID("PNP05G1") },
		func(a *aml) { a.str("bad\x00") },
	} {
		var b aml
		bad(&b)
		if b.err == nil {
			t.Error("invalid AML input accepted")
		}
	}
	// A _CRS over 63 bytes needs a 2-byte PkgLength; the buffer must stay
	// consistent (checked again by iasl in the iasl test).
	long := a.resourceTemplate(bytes.Repeat(memory32Fixed(0xd0000000, 0x200), 8))
	if long[0] != amlBufferOp || long[1]&0xc0 != 0x40 {
		t.Errorf("long buffer header % x", long[:3])
	}
}
