package kvm

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// The counter guest, at CPL 3 with RBX = guestData:
//
//	top: inc qword [rbx]; inc r12; mov rax,[rbx]; mov dx,0x20; out dx,eax
//	     mov dx,0x22; in eax,dx; add [rbx+8],rax; mov rax,[rbx+8]
//	     mov dx,0x21; out dx,eax; mov ecx,20000; 1: dec ecx; jnz 1b; jmp top
var codeCounter = []byte{
	0x48, 0xff, 0x03,
	0x49, 0xff, 0xc4,
	0x48, 0x8b, 0x03,
	0x66, 0xba, 0x20, 0x00, 0xef,
	0x66, 0xba, 0x22, 0x00, 0xed,
	0x48, 0x01, 0x43, 0x08,
	0x48, 0x8b, 0x43, 0x08,
	0x66, 0xba, 0x21, 0x00, 0xef,
	0xb9, 0x20, 0x4e, 0x00, 0x00,
	0xff, 0xc9, 0x75, 0xfc,
	0xeb, 0xd5,
}

// counterGuest drives the counter guest: in each iteration the guest
// reports its counter c on port 0x20, reads 3*c from port 0x22, adds it to
// a sum in memory and reports the sum on port 0x21.
type counterGuest struct {
	tb testing.TB
	v  *VCPU
}

// outA expects the counter report and checks it is c.
func (cg counterGuest) outA(c uint64) {
	cg.tb.Helper()
	io := expectIO(cg.tb, cg.v, 0x20, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != uint32(c) {
		cg.tb.Fatalf("guest counter %d, want %d", got, c)
	}
}

// inB expects the read of port 0x22 and answers 3*c.
func (cg counterGuest) inB(c uint64) {
	cg.tb.Helper()
	io := expectIO(cg.tb, cg.v, 0x22, IOIn, 4)
	binary.LittleEndian.PutUint32(io.Data, uint32(3*c))
}

// outC expects the sum report: 3*(1+...+c).
func (cg counterGuest) outC(c uint64) {
	cg.tb.Helper()
	io := expectIO(cg.tb, cg.v, 0x21, IOOut, 4)
	if got, want := binary.LittleEndian.Uint32(io.Data), uint32(3*c*(c+1)/2); got != want {
		cg.tb.Fatalf("guest sum %d at counter %d, want %d", got, c, want)
	}
}

func (cg counterGuest) iteration(c uint64) {
	cg.tb.Helper()
	cg.outA(c)
	cg.inB(c)
	cg.outC(c)
}

func TestSaveRestoreContinuesGuestInFreshVM(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := openKVM(t)
	src := newGuest(t, sys, guestConfig{code: codeCounter, irqchip: true})
	scg := counterGuest{t, src.vcpu}
	for c := uint64(1); c <= 5; c++ {
		scg.iteration(c)
	}
	// Stop in the middle of iteration 6, right after answering the IN: the
	// answer is only in kvm_run until the IN completes.
	const stopAt = 6
	scg.outA(stopAt)
	scg.inB(stopAt)

	vst, err := src.vcpu.SaveState()
	if err != nil {
		t.Fatalf("vcpu SaveState: %v", err)
	}
	vmst, err := src.vm.SaveState()
	if err != nil {
		t.Fatalf("vm SaveState: %v", err)
	}
	memCopy := newGuestMemory(t, guestMem)
	copy(memCopy, src.mem)

	if vst.Regs.RAX != 3*stopAt || vst.Regs.R12 != stopAt {
		t.Errorf("saved RAX %d R12 %d, want %d and %d (IN completed before saving)",
			vst.Regs.RAX, vst.Regs.R12, 3*stopAt, stopAt)
	}
	if vst.Sregs.CS.DPL != 3 || vst.Sregs.EFER&0x400 == 0 {
		t.Errorf("saved CS.DPL %d EFER %#x, want CPL 3 in long mode", vst.Sregs.CS.DPL, vst.Sregs.EFER)
	}
	if len(vst.MSRs) == 0 || len(vst.XSAVE) < 4096 || vst.MPState != MPStateRunnable || !vmst.HasIRQChip || !vmst.HasPIT {
		t.Errorf("saved state incomplete: %d MSRs, %d XSAVE bytes, MP %s, irqchip %v, pit %v",
			len(vst.MSRs), len(vst.XSAVE), vst.MPState, vmst.HasIRQChip, vmst.HasPIT)
	}
	haveTSC := false
	for _, m := range vst.MSRs {
		haveTSC = haveTSC || m.Index == MSRIA32TSC
	}
	if !haveTSC {
		t.Error("saved MSRs lack IA32_TSC")
	}
	t.Logf("saved %d MSRs, refused %x, XSAVE %d bytes, clock %d ns", len(vst.MSRs), vst.RefusedMSRs, len(vst.XSAVE), vmst.Clock.Clock)

	// The source goes on undisturbed; the copy must not see this.
	scg.outC(stopAt)
	scg.iteration(stopAt + 1)
	scg.iteration(stopAt + 2)

	// Carry the state through gob, as a migration stream would.
	var stream bytes.Buffer
	if err := gob.NewEncoder(&stream).Encode(struct {
		VCPU *VCPUState
		VM   *VMState
	}{vst, vmst}); err != nil {
		t.Fatalf("gob encode: %v", err)
	}
	var decoded struct {
		VCPU *VCPUState
		VM   *VMState
	}
	if err := gob.NewDecoder(&stream).Decode(&decoded); err != nil {
		t.Fatalf("gob decode: %v", err)
	}

	dst := newGuest(t, sys, guestConfig{irqchip: true, mem: memCopy, skipLayout: true})
	if err := dst.vcpu.RestoreState(decoded.VCPU); err != nil {
		t.Fatalf("vcpu RestoreState: %v", err)
	}
	if err := dst.vm.RestoreState(decoded.VM); err != nil {
		t.Fatalf("vm RestoreState: %v", err)
	}
	checkStateRoundTrip(t, dst, vst, vmst)

	dcg := counterGuest{t, dst.vcpu}
	dcg.outC(stopAt)
	for c := uint64(stopAt + 1); c <= stopAt+4; c++ {
		dcg.iteration(c)
	}
	if got := binary.LittleEndian.Uint64(memCopy[guestData:]); got != stopAt+4 {
		t.Errorf("counter in restored guest memory %d, want %d", got, stopAt+4)
	}
	if got := binary.LittleEndian.Uint64(src.mem[guestData:]); got != stopAt+2 {
		t.Errorf("counter in source memory %d, want %d", got, stopAt+2)
	}
	regs, err := dst.vcpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.R12 != stopAt+4 {
		t.Errorf("restored guest R12 %d, want %d", regs.R12, stopAt+4)
	}
}

// checkStateRoundTrip reads the state back from the restored VM and compares
// it with what was saved, except values that move with time.
func checkStateRoundTrip(t *testing.T, g *testGuest, vst *VCPUState, vmst *VMState) {
	t.Helper()
	got, err := g.vcpu.SaveState()
	if err != nil {
		t.Fatalf("SaveState after restore: %v", err)
	}
	if got.Regs != vst.Regs {
		t.Errorf("regs after restore %+v, saved %+v", got.Regs, vst.Regs)
	}
	if got.Sregs != vst.Sregs {
		t.Errorf("sregs after restore %+v, saved %+v", got.Sregs, vst.Sregs)
	}
	if got.XCRs != vst.XCRs || got.Events != vst.Events || got.MPState != vst.MPState || got.DebugRegs != vst.DebugRegs {
		t.Errorf("xcrs/events/mp/debugregs differ after restore")
	}
	if got.FPU != vst.FPU || !bytes.Equal(got.XSAVE, vst.XSAVE) {
		t.Errorf("FPU/XSAVE differ after restore")
	}
	lapicGot, lapicSaved := got.LAPIC, vst.LAPIC
	clear(lapicGot[0x390:0x394]) // timer current count moves with time
	clear(lapicSaved[0x390:0x394])
	if lapicGot != lapicSaved {
		t.Errorf("LAPIC differs after restore")
	}
	saved := map[uint32]uint64{}
	for _, m := range vst.MSRs {
		saved[m.Index] = m.Data
	}
	for _, m := range got.MSRs {
		if m.Index == MSRIA32TSC {
			if m.Data < saved[m.Index] {
				t.Errorf("TSC went back: %d < %d", m.Data, saved[m.Index])
			}
			continue
		}
		if m.Data != saved[m.Index] {
			t.Errorf("MSR %#x = %#x after restore, saved %#x", m.Index, m.Data, saved[m.Index])
		}
	}
	if len(got.MSRs) != len(vst.MSRs) {
		t.Errorf("%d MSRs after restore, %d saved", len(got.MSRs), len(vst.MSRs))
	}
	vmGot, err := g.vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if vmGot.PICMaster != vmst.PICMaster || vmGot.PICSlave != vmst.PICSlave || vmGot.IOAPIC != vmst.IOAPIC {
		t.Errorf("irqchip state differs after restore")
	}
	for i := range vmGot.PIT.Channels {
		a, b := vmGot.PIT.Channels[i], vmst.PIT.Channels[i]
		a.CountLoadTime, b.CountLoadTime = 0, 0
		if a != b {
			t.Errorf("PIT channel %d after restore %+v, saved %+v", i, a, b)
		}
	}
	if vmGot.Clock.Clock < vmst.Clock.Clock {
		t.Errorf("kvmclock went back: %d < %d", vmGot.Clock.Clock, vmst.Clock.Clock)
	}
}

func TestSetMPStateStartsAP(t *testing.T) {
	sys := openKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	bsp, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer bsp.Close()
	ap, err := vm.CreateVCPU(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	if s, err := bsp.MPState(); err != nil || s != MPStateRunnable {
		t.Errorf("BSP MP state %s (%v), want RUNNABLE", s, err)
	}
	if s, err := ap.MPState(); err != nil || s != MPStateUninitialized {
		t.Errorf("AP MP state %s (%v), want UNINITIALIZED", s, err)
	}
	if err := ap.SetMPState(MPStateRunnable); err != nil {
		t.Fatal(err)
	}
	if s, err := ap.MPState(); err != nil || s != MPStateRunnable {
		t.Errorf("AP MP state after SetMPState %s (%v), want RUNNABLE", s, err)
	}
}

// benchGuest is a counter guest stopped mid-run, for state benchmarks.
func benchGuest(b *testing.B) *testGuest {
	sys := openKVM(b)
	g := newGuest(b, sys, guestConfig{code: codeCounter, irqchip: true})
	cg := counterGuest{b, g.vcpu}
	cg.iteration(1)
	cg.outA(2)
	return g
}

func BenchmarkSaveState(b *testing.B) {
	g := benchGuest(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := g.vcpu.SaveState(); err != nil {
			b.Fatal(err)
		}
		if _, err := g.vm.SaveState(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRestoreState(b *testing.B) {
	g := benchGuest(b)
	vst, err := g.vcpu.SaveState()
	if err != nil {
		b.Fatal(err)
	}
	vmst, err := g.vm.SaveState()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := g.vcpu.RestoreState(vst); err != nil {
			b.Fatal(err)
		}
		if err := g.vm.RestoreState(vmst); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// The guest still continues correctly after all those restores.
	cg := counterGuest{b, g.vcpu}
	cg.inB(2)
	cg.outC(2)
	cg.iteration(3)
}

// mapMemfd maps size bytes of fd shared.
func mapMemfd(tb testing.TB, fd, size int) []byte {
	tb.Helper()
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		tb.Fatalf("mmap memfd: %v", err)
	}
	return mem
}

// TestRestoreOverSharedMemfd hands the guest over the way cpr-transfer does:
// the destination maps the same memfd (a new mapping, as another process
// would) instead of receiving a copy, and the source is gone.
func TestRestoreOverSharedMemfd(t *testing.T) {
	sys := openKVM(t)
	fd, err := unix.MemfdCreate("kvm-test-ram", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, guestMem); err != nil {
		t.Fatal(err)
	}
	srcMem := mapMemfd(t, fd, guestMem)
	src := newGuest(t, sys, guestConfig{code: codeCounter, irqchip: true, mem: srcMem})
	scg := counterGuest{t, src.vcpu}
	for c := uint64(1); c <= 3; c++ {
		scg.iteration(c)
	}
	scg.outA(4)
	vst, err := src.vcpu.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	vmst, err := src.vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := src.vcpu.Close(); err != nil {
		t.Fatal(err)
	}
	if err := src.vm.Close(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Munmap(srcMem); err != nil {
		t.Fatal(err)
	}

	dstMem := mapMemfd(t, fd, guestMem)
	defer unix.Munmap(dstMem)
	dst := newGuest(t, sys, guestConfig{irqchip: true, mem: dstMem, skipLayout: true})
	if err := dst.vcpu.RestoreState(vst); err != nil {
		t.Fatal(err)
	}
	if err := dst.vm.RestoreState(vmst); err != nil {
		t.Fatal(err)
	}
	dcg := counterGuest{t, dst.vcpu}
	dcg.inB(4)
	dcg.outC(4)
	dcg.iteration(5)
	if got := binary.LittleEndian.Uint64(dstMem[guestData:]); got != 5 {
		t.Errorf("counter %d in the memfd, want 5", got)
	}
}

// TestTSCDeadlineSurvivesRestore arms the LAPIC timer in TSC-deadline mode
// and checks that RestoreState brings the deadline back: KVM ignores the
// deadline MSR unless the LAPIC is already in that mode, so this fails if
// the MSR is written before the LAPIC.
func TestTSCDeadlineSurvivesRestore(t *testing.T) {
	sys := openKVM(t)
	if !sys.HasCapability(CapTSCDeadlineTimer) {
		t.Skip("host lacks KVM_CAP_TSC_DEADLINE_TIMER")
	}
	src := newGuest(t, sys, guestConfig{code: codeSpin, irqchip: true})
	lapic, err := src.vcpu.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	le.PutUint32(lapic[0xf0:], le.Uint32(lapic[0xf0:])|0x100|0xff) // SVR: APIC enabled
	le.PutUint32(lapic[0x320:], 0x10000|0x40000|0xec)              // LVT timer: masked, TSC-deadline, vector 0xec
	if err := src.vcpu.SetLAPIC(lapic); err != nil {
		t.Fatal(err)
	}
	tsc, n, err := src.vcpu.MSRs([]uint32{MSRIA32TSC})
	if err != nil || n != 1 {
		t.Fatalf("read TSC: %v (%d)", err, n)
	}
	deadline := tsc[0].Data + 1<<40
	if err := src.vcpu.SetMSRs([]MSREntry{{Index: MSRIA32TSCDeadline, Data: deadline}}); err != nil {
		t.Fatal(err)
	}
	vst, err := src.vcpu.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	saved := uint64(0)
	for _, m := range vst.MSRs {
		if m.Index == MSRIA32TSCDeadline {
			saved = m.Data
		}
	}
	if saved != deadline {
		t.Fatalf("saved TSC deadline %#x, want %#x", saved, deadline)
	}

	dst := newGuest(t, sys, guestConfig{irqchip: true, mem: newGuestMemory(t, guestMem), skipLayout: true})
	if err := dst.vcpu.RestoreState(vst); err != nil {
		t.Fatal(err)
	}
	got, n, err := dst.vcpu.MSRs([]uint32{MSRIA32TSCDeadline})
	if err != nil || n != 1 {
		t.Fatalf("read TSC deadline: %v (%d)", err, n)
	}
	if got[0].Data != deadline {
		t.Errorf("TSC deadline after restore %#x, want %#x", got[0].Data, deadline)
	}
}
