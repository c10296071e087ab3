package kvm

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Test guest memory layout (guest-physical addresses).
const (
	guestPML4 = 0x1000
	guestPDPT = 0x2000
	guestPD   = 0x3000
	guestGDT  = 0x4000
	guestTSS  = 0x5000
	// guestTSSLimit covers the TSS, an 8 KiB I/O bitmap and its 0xff end byte.
	guestTSSLimit = 0x68 + 0x2000
	guestCode     = 0x8000
	guestData     = 0x100000 // start of slot 1
	guestStack    = 0x1ff000
	guestMem      = 2 << 20
	lowSlotSize   = 1 << 20
	mmioBase      = 0x10000000 // mapped by the page tables, backed by no slot
)

// GDT selectors of the test guest.
const (
	selKernelCode = 0x08
	selKernelData = 0x10
	selUserCode   = 0x18 | 3
	selUserData   = 0x20 | 3
	selTSS        = 0x28
)

// openKVM opens /dev/kvm; a missing device fails under CI=true and skips otherwise.
func openKVM(tb testing.TB) *System {
	tb.Helper()
	if _, err := os.Stat(DefaultDevice); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("CI=true and %s is unavailable: %v", DefaultDevice, err)
		}
		tb.Skipf("%s unavailable (%v): these tests need a host with KVM", DefaultDevice, err)
	}
	sys, err := Open("")
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { sys.Close() })
	return sys
}

// newGuestMemory maps size bytes of anonymous memory.
func newGuestMemory(tb testing.TB, size int) []byte {
	tb.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		tb.Fatalf("mmap guest memory: %v", err)
	}
	tb.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// guestConfig describes a test guest.
type guestConfig struct {
	code       []byte
	ring0      bool // run the code at CPL 0 instead of CPL 3 with IOPL 3
	irqchip    bool // create the in-kernel irqchip and PIT
	dirtyLog   bool // log dirty pages of slot 1 (guestData..guestMem)
	mem        []byte
	skipLayout bool // mem already holds a guest (restore tests)
}

// testGuest is a VM with one vCPU and 2 MiB of memory: slot 0 holds page
// tables, GDT, TSS and code; slot 1 holds data and the stack.
type testGuest struct {
	sys  *System
	vm   *VM
	vcpu *VCPU
	mem  []byte
}

// newGuest builds a VM for cfg and, unless cfg.skipLayout, writes the
// identity-mapped 64-bit environment and the code, and points the vCPU at it.
func newGuest(tb testing.TB, sys *System, cfg guestConfig) *testGuest {
	tb.Helper()
	vm, err := sys.CreateVM()
	if err != nil {
		tb.Fatalf("CreateVM: %v", err)
	}
	tb.Cleanup(func() { vm.Close() })
	if cfg.irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			tb.Fatal(err)
		}
		if err := vm.CreatePIT2(); err != nil {
			tb.Fatal(err)
		}
	}
	mem := cfg.mem
	if mem == nil {
		mem = newGuestMemory(tb, guestMem)
	}
	if err := vm.SetUserMemoryRegion(0, 0, mem[:lowSlotSize], 0); err != nil {
		tb.Fatal(err)
	}
	var flags MemoryFlags
	if cfg.dirtyLog {
		flags = MemLogDirtyPages
	}
	if err := vm.SetUserMemoryRegion(1, guestData, mem[lowSlotSize:], flags); err != nil {
		tb.Fatal(err)
	}
	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { vcpu.Close() })
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		tb.Fatal(err)
	}
	if err := vcpu.SetCPUID(cpuid); err != nil {
		tb.Fatal(err)
	}
	g := &testGuest{sys: sys, vm: vm, vcpu: vcpu, mem: mem}
	if !cfg.skipLayout {
		writeLongModeTables(mem)
		copy(mem[guestCode:], cfg.code)
		g.enterLongMode(tb, cfg.ring0)
	}
	return g
}

// writeLongModeTables writes identity page tables for the first GiB (2 MiB
// pages, user accessible), a GDT and a 64-bit TSS.
func writeLongModeTables(mem []byte) {
	le := binary.LittleEndian
	const present, writable, user, large = 1, 2, 4, 0x80
	le.PutUint64(mem[guestPML4:], guestPDPT|present|writable|user)
	le.PutUint64(mem[guestPDPT:], guestPD|present|writable|user)
	for i := uint64(0); i < 512; i++ {
		le.PutUint64(mem[guestPD+8*i:], i<<21|present|writable|user|large)
	}
	gdt := []uint64{
		0,
		0x00af9a000000ffff, // 0x08 kernel code, 64-bit
		0x00cf92000000ffff, // 0x10 kernel data
		0x00affa000000ffff, // 0x18 user code, 64-bit, DPL 3
		0x00cff2000000ffff, // 0x20 user data, DPL 3
	}
	for i, d := range gdt {
		le.PutUint64(mem[guestGDT+8*i:], d)
	}
	// 0x28: 64-bit available TSS, base guestTSS, limit guestTSSLimit.
	tss := uint64(guestTSSLimit) | uint64(guestTSS&0xffffff)<<16 | uint64(0x89)<<40 | uint64(guestTSS>>24&0xff)<<56
	le.PutUint64(mem[guestGDT+0x28:], tss)
	le.PutUint64(mem[guestGDT+0x30:], 0)
	le.PutUint64(mem[guestTSS+4:], guestStack) // RSP0
	// An all-zero I/O permission bitmap (every port allowed) right after the
	// 104-byte TSS, closed by the required 0xff byte. With IOPL 3 hardware
	// never looks at it, but PVM's emulator checks it for ring-3 port I/O
	// even then (observed: ports whose bit falls on nonzero TSS bytes #GP).
	le.PutUint16(mem[guestTSS+0x66:], 0x68)
	clear(mem[guestTSS+0x68 : guestTSS+0x68+0x2000])
	mem[guestTSS+0x68+0x2000] = 0xff
}

// enterLongMode loads 64-bit paging state and starts the code at CPL 3 with
// IOPL 3 (or at CPL 0 when ring0 is set).
func (g *testGuest) enterLongMode(tb testing.TB, ring0 bool) {
	tb.Helper()
	s, err := g.vcpu.Sregs()
	if err != nil {
		tb.Fatal(err)
	}
	code := Segment{Limit: 0xffffffff, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := Segment{Limit: 0xffffffff, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	if ring0 {
		code.Selector, code.DPL = selKernelCode, 0
		data.Selector, data.DPL = selKernelData, 0
	} else {
		code.Selector, code.DPL = selUserCode, 3
		data.Selector, data.DPL = selUserData, 3
	}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = Segment{Base: guestTSS, Limit: guestTSSLimit, Selector: selTSS, Type: 0xb, Present: 1}
	s.LDT = Segment{Limit: 0xffff, Type: 0x2, Present: 1}
	s.GDT = DTable{Base: guestGDT, Limit: 0x37}
	s.IDT = DTable{}   // no IDT: any exception ends in a triple fault
	s.CR0 = 0x80050033 // PG | AM | WP | NE | ET | MP | PE
	s.CR3 = guestPML4
	s.CR4 = 0x20   // PAE
	s.EFER = 0x500 // LMA | LME
	if err := g.vcpu.SetSregs(s); err != nil {
		tb.Fatal(err)
	}
	r := Regs{RIP: guestCode, RSP: guestStack, RBX: guestData, RFLAGS: 0x2}
	if !ring0 {
		r.RFLAGS |= 0x3000 // IOPL 3: port I/O from ring 3 exits to us
	}
	if err := g.vcpu.SetRegs(r); err != nil {
		tb.Fatal(err)
	}
}

// runExit runs the vCPU until an exit that is not a plain interruption.
func runExit(tb testing.TB, v *VCPU) Exit {
	tb.Helper()
	for i := 0; i < 1000; i++ {
		e, err := v.Run()
		if err != nil {
			tb.Fatalf("Run: %v", err)
		}
		if e.Interrupted() && !e.Kicked {
			continue
		}
		return e
	}
	tb.Fatal("Run: interrupted 1000 times in a row")
	return Exit{}
}

// expectIO runs to the next exit and checks that it is port I/O on port in direction dir.
func expectIO(tb testing.TB, v *VCPU, port uint16, dir IODirection, size uint8) IOExit {
	tb.Helper()
	e := runExit(tb, v)
	if e.Reason != ExitIO {
		regs, _ := v.Regs()
		tb.Fatalf("exit %s (%+v), want IO on port %#x; rip %#x", e.Reason, e, port, regs.RIP)
	}
	if e.IO.Port != port || e.IO.Direction != dir || e.IO.Size != size || e.IO.Count != 1 {
		tb.Fatalf("IO exit %+v, want port %#x dir %d size %d count 1", e.IO, port, dir, size)
	}
	if len(e.IO.Data) != int(size) {
		tb.Fatalf("IO data has %d bytes, want %d", len(e.IO.Data), size)
	}
	return e.IO
}

// hostHasHardwareVirt reports whether the CPU advertises VT-x or AMD-V, i.e.
// whether KVM runs guest ring 0 natively rather than through PVM's emulator.
func hostHasHardwareVirt() bool {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	for _, f := range []string{" vmx", " svm"} {
		for i := 0; i+len(f) < len(b); i++ {
			if string(b[i:i+len(f)]) == f && (b[i+len(f)] == ' ' || b[i+len(f)] == '\n') {
				return true
			}
		}
	}
	return false
}
