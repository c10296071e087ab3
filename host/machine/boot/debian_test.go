package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"wasmvmm/testsuite/linux"
)

// TestDebianKernel parses, loads and prepares the boot of Debian's real
// cloud kernel. It does not run it: the software KVM on the project's
// machines cannot boot Linux (see KVM-HOSTS.md); a VT-x/AMD-V test does.
func TestDebianKernel(t *testing.T) {
	if !linux.Enabled() {
		t.Skip("skipping: set WASMVMM_LINUX_TEST=1 (or CI=true) to download Debian's linux-image-cloud-amd64 and check it")
	}
	path, pkg := linux.Kernel(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s from %s, %d bytes", path, pkg, st.Size())

	ver, err := KernelVersion(f)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimPrefix(pkg, "linux-image-")
	if !strings.HasPrefix(ver, want+" ") {
		t.Errorf("kernel_version string %q does not start with the package's version %q", ver, want)
	}
	t.Logf("kernel_version: %s", ver)

	const ram = 512 << 20
	mem := newGuestRAM(t, ram)
	k, err := LoadBzImage(f, mem, ram, 0)
	if err != nil {
		t.Fatalf("LoadBzImage: %v", err)
	}
	h := k.Header
	t.Logf("protocol %d.%02d, setup_sects %d, syssize %#x, loadflags %#x, xloadflags %#x, relocatable %v, kernel_alignment %#x, pref_address %#x, init_size %#x, cmdline_size %d, initrd_addr_max %#x",
		h.Version>>8, h.Version&0xff, h.SetupSects, h.Syssize, h.Loadflags, h.Xloadflags, h.Relocatable, h.KernelAlignment, h.PrefAddress, h.InitSize, h.CmdlineSize, h.InitrdAddrMax)
	t.Logf("loaded at %#x, 64-bit entry %#x, end %#x", k.LoadAddr, k.Entry, k.End)
	if h.Version < 0x0206 || !h.Has64BitEntry() || !h.Relocatable {
		t.Fatalf("protocol %#x xloadflags %#x relocatable %v: want >= 2.06, XLF_KERNEL_64, relocatable", h.Version, h.Xloadflags, h.Relocatable)
	}
	if k.LoadAddr%uint64(h.KernelAlignment) != 0 || k.Entry != k.LoadAddr+0x200 || k.End > ram {
		t.Errorf("placement load %#x entry %#x end %#x", k.LoadAddr, k.Entry, k.End)
	}
	// The protected-mode code must sit at the load address byte for byte.
	setup := (int64(h.SetupSects) + 1) * 512
	code := make([]byte, int64(h.Syssize)*16)
	if _, err := f.ReadAt(code, setup); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem.b[k.LoadAddr:k.LoadAddr+uint64(len(code))], code) {
		t.Error("protected-mode code in guest memory differs from the file")
	}

	initrd := bytes.Repeat([]byte("070701"), 1<<20) // 6 MiB
	initrdAddr, err := LoadInitrd(bytes.NewReader(initrd), uint64(len(initrd)), mem, k.End, uint64(h.InitrdAddrMax), ram)
	if err != nil {
		t.Fatal(err)
	}
	if initrdAddr < k.End || initrdAddr+uint64(len(initrd))-1 > uint64(h.InitrdAddrMax) || initrdAddr%pageSize != 0 {
		t.Errorf("initrd at %#x", initrdAddr)
	}
	mmio, err := VirtioMMIOCmdline([]VirtioMMIODevice{{Base: VirtioMMIOBase, Size: 0x200, IRQ: 5}})
	if err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 reboot=k panic=1 " + mmio
	e820, err := MemoryLayout{RAMSize: ram}.E820()
	if err != nil {
		t.Fatal(err)
	}
	cfg := BootParamsConfig{
		Header: h.Raw, CmdlineAddr: CmdlineAddr, Cmdline: cmdline,
		InitrdAddr: initrdAddr, InitrdSize: uint64(len(initrd)),
		E820: e820, RSDPAddr: ACPITablesAddr,
	}
	if err := WriteBootParams(mem, ZeroPageAddr, cfg); err != nil {
		t.Fatal(err)
	}
	zp := mem.b[ZeroPageAddr : ZeroPageAddr+ZeroPageSize]
	le := binary.LittleEndian
	if le.Uint32(zp[0x202:]) != headerMagic || le.Uint16(zp[0x206:]) != h.Version {
		t.Error("setup header not copied into the zero page")
	}
	if le.Uint32(zp[0x228:]) != CmdlineAddr || string(mem.b[CmdlineAddr:CmdlineAddr+len(cmdline)]) != cmdline {
		t.Error("command line not in place")
	}
	if le.Uint32(zp[0x218:]) != uint32(initrdAddr) || le.Uint32(zp[0x21c:]) != uint32(len(initrd)) {
		t.Error("initrd fields wrong")
	}
	if int(zp[0x1e8]) != len(e820) || le.Uint64(zp[0x2d0+20*2:]) != HighMemStart {
		t.Error("E820 table wrong")
	}
	if le.Uint64(zp[0x070:]) != ACPITablesAddr {
		t.Error("acpi_rsdp_addr not set")
	}
	// A command line longer than the kernel's cmdline_size is refused.
	cfg.Cmdline = strings.Repeat("x", int(h.CmdlineSize)+1)
	if _, err := BootParams(cfg); err == nil {
		t.Errorf("command line of %d bytes accepted (cmdline_size %d)", len(cfg.Cmdline), h.CmdlineSize)
	}
	cpu, err := SetupLongMode(mem, ram)
	if err != nil {
		t.Fatal(err)
	}
	cpu.RIP = k.Entry
	if pa, ok := translate(t, mem, cpu.CR3, cpu.RIP); !ok || pa != k.Entry {
		t.Errorf("entry %#x not identity mapped", k.Entry)
	}
}

// lz4LegacyMagic starts an LZ4 "legacy" stream, the format of the kernel
// payload when it is built with CONFIG_KERNEL_LZ4.
const lz4LegacyMagic = 0x184c2102

// decodeLZ4Legacy decompresses an LZ4 legacy stream: the magic, then blocks
// each preceded by their 32-bit compressed size. The kernel appends the
// 32-bit uncompressed size, which ends the walk.
func decodeLZ4Legacy(in []byte) ([]byte, bool) {
	le := binary.LittleEndian
	if len(in) < 4 || le.Uint32(in) != lz4LegacyMagic {
		return nil, false
	}
	var out []byte
	for p := 4; p+4 <= len(in); {
		n := int(le.Uint32(in[p:]))
		p += 4
		if n == lz4LegacyMagic {
			continue
		}
		if n > len(in)-p {
			break // the appended uncompressed size
		}
		var ok bool
		if out, ok = decodeLZ4Block(out, in[p:p+n]); !ok {
			return nil, false
		}
		p += n
	}
	return out, true
}

// decodeLZ4Block appends one decompressed LZ4 block to out.
func decodeLZ4Block(out, blk []byte) ([]byte, bool) {
	length := func(p *int, n int) (int, bool) {
		if n != 15 {
			return n, true
		}
		for *p < len(blk) {
			b := blk[*p]
			*p++
			n += int(b)
			if b != 255 {
				return n, true
			}
		}
		return 0, false
	}
	for p := 0; p < len(blk); {
		token := blk[p]
		p++
		lit, ok := length(&p, int(token>>4))
		if !ok || lit > len(blk)-p {
			return nil, false
		}
		out = append(out, blk[p:p+lit]...)
		p += lit
		if p == len(blk) {
			return out, true // the last sequence has only literals
		}
		if p+2 > len(blk) {
			return nil, false
		}
		off := int(binary.LittleEndian.Uint16(blk[p:]))
		p += 2
		ml, ok := length(&p, int(token&15))
		if !ok || off == 0 || off > len(out) {
			return nil, false
		}
		for i, start := 0, len(out)-off; i < ml+4; i++ {
			out = append(out, out[start+i])
		}
	}
	return out, true
}

// TestDebianVmlinux extracts the uncompressed vmlinux from Debian's
// bzImage (its payload_offset/payload_length) and loads it with LoadELF.
func TestDebianVmlinux(t *testing.T) {
	if !linux.Enabled() {
		t.Skip("skipping: set WASMVMM_LINUX_TEST=1 (or CI=true) to download Debian's linux-image-cloud-amd64 and check it")
	}
	path, _ := linux.Kernel(t)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseSetupHeader(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	start := (int(h.SetupSects)+1)*512 + int(le.Uint32(h.Raw[0x248-hdrStart:]))
	size := int(le.Uint32(h.Raw[0x24c-hdrStart:]))
	if start+size > len(img) {
		t.Fatalf("payload %#x+%#x beyond the file", start, size)
	}
	vmlinux, ok := decodeLZ4Legacy(img[start : start+size])
	if !ok {
		t.Skipf("skipping: payload (magic % x) is not LZ4 or does not decode; only LZ4 is decoded here", img[start:start+4])
	}
	t.Logf("vmlinux: %d bytes", len(vmlinux))
	const ram = 512 << 20
	mem := newGuestRAM(t, ram)
	entry, end, err := LoadELF(bytes.NewReader(vmlinux), mem, ram)
	if err != nil {
		t.Fatalf("LoadELF(vmlinux): %v", err)
	}
	t.Logf("vmlinux entry %#x end %#x", entry, end)
	if entry != 0x1000000 || end <= entry || end > ram {
		t.Errorf("entry %#x end %#x", entry, end)
	}
	// The first PT_LOAD (.text) starts at the entry: compare with the file.
	phoff := le.Uint64(vmlinux[32:])
	textOff := le.Uint64(vmlinux[phoff+8:])
	if !bytes.Equal(mem.b[entry:entry+4096], vmlinux[textOff:textOff+4096]) {
		t.Error("vmlinux .text not loaded at its physical address")
	}
	pvh, found, err := FindPVHEntry(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PVH entry note: found %v at %#x", found, pvh)
	if found && (pvh < entry || pvh >= end) {
		t.Errorf("PVH entry %#x outside the loaded kernel", pvh)
	}
}
