package kvm

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"
)

// Hand-assembled guest programs (64-bit; offsets checked with GNU as).
var (
	// mov al,0x42; mov dx,0x10; out dx,al; mov dx,0x11; in eax,dx;
	// mov dx,0x12; out dx,eax; mov dx,0x13; mov ax,0x1234; out dx,ax; ud2
	codePIO = []byte{
		0xb0, 0x42, 0x66, 0xba, 0x10, 0x00, 0xee,
		0x66, 0xba, 0x11, 0x00, 0xed,
		0x66, 0xba, 0x12, 0x00, 0xef,
		0x66, 0xba, 0x13, 0x00, 0x66, 0xb8, 0x34, 0x12, 0x66, 0xef,
		0x0f, 0x0b,
	}
	// mov dword [0x10000000],0x12345678; mov rax,[0x10000008]; mov dx,0x12;
	// out dx,eax; shr rax,32; out dx,eax; mov byte [0x10000010],0xab; ud2
	codeMMIO = []byte{
		0xc7, 0x04, 0x25, 0x00, 0x00, 0x00, 0x10, 0x78, 0x56, 0x34, 0x12,
		0x48, 0x8b, 0x04, 0x25, 0x08, 0x00, 0x00, 0x10,
		0x66, 0xba, 0x12, 0x00, 0xef,
		0x48, 0xc1, 0xe8, 0x20, 0xef,
		0xc6, 0x04, 0x25, 0x10, 0x00, 0x00, 0x10, 0xab,
		0x0f, 0x0b,
	}
	codeHLT = []byte{0xf4} // hlt
	// xor ecx,ecx; xgetbv; mov dx,0x12; out dx,eax; ud2
	codeXGETBV = []byte{0x31, 0xc9, 0x0f, 0x01, 0xd0, 0x66, 0xba, 0x12, 0x00, 0xef, 0x0f, 0x0b}
	codeUD2    = []byte{0x0f, 0x0b}
	codeSpin   = []byte{0xeb, 0xfe} // jmp $
	// mov dx,0x30; 1: out dx,al; jmp 1b
	codeOutLoop = []byte{0x66, 0xba, 0x30, 0x00, 0xee, 0xeb, 0xfd}
)

func TestOpenAndCapabilities(t *testing.T) {
	sys := openKVM(t)
	if err := sys.CheckCapabilities(); err != nil {
		t.Fatalf("CheckCapabilities: %v", err)
	}
	if sys.VCPUMmapSize() < 4096 {
		t.Errorf("VCPUMmapSize = %d", sys.VCPUMmapSize())
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	var leaf0 *CPUIDEntry
	for i := range cpuid {
		if cpuid[i].Function == 0 {
			leaf0 = &cpuid[i]
		}
	}
	if leaf0 == nil || leaf0.EAX == 0 {
		t.Fatalf("SupportedCPUID (%d entries) has no usable leaf 0", len(cpuid))
	}
	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	found := map[uint32]bool{}
	for _, m := range msrs {
		found[m] = true
	}
	if !found[MSRIA32TSC] {
		t.Errorf("MSR index list (%d entries) lacks IA32_TSC", len(msrs))
	}
	t.Logf("%d CPUID entries, %d MSRs, mmap size %d, SREGS2 %v, XSAVE2 %v, manual dirty protect %v",
		len(cpuid), len(msrs), sys.VCPUMmapSize(), sys.HasCapability(CapSREGS2),
		sys.HasCapability(CapXSAVE2), sys.HasCapability(CapManualDirtyLogProtect2))
}

func TestPortIOExit(t *testing.T) {
	sys := openKVM(t)
	g := newGuest(t, sys, guestConfig{code: codePIO})
	io := expectIO(t, g.vcpu, 0x10, IOOut, 1)
	if io.Data[0] != 0x42 {
		t.Errorf("out 0x10 wrote %#x, want 0x42", io.Data[0])
	}
	io = expectIO(t, g.vcpu, 0x11, IOIn, 4)
	binary.LittleEndian.PutUint32(io.Data, 0xdeadbeef)
	io = expectIO(t, g.vcpu, 0x12, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0xdeadbeef {
		t.Errorf("guest echoed %#x from in 0x11, want 0xdeadbeef", got)
	}
	io = expectIO(t, g.vcpu, 0x13, IOOut, 2)
	if got := binary.LittleEndian.Uint16(io.Data); got != 0x1234 {
		t.Errorf("out 0x13 wrote %#x, want 0x1234", got)
	}
	if e := runExit(t, g.vcpu); e.Reason != ExitShutdown {
		t.Errorf("ud2 without IDT: exit %s, want SHUTDOWN", e.Reason)
	}
}

func TestMMIOExit(t *testing.T) {
	sys := openKVM(t)
	g := newGuest(t, sys, guestConfig{code: codeMMIO})
	e := runExit(t, g.vcpu)
	if e.Reason != ExitMMIO || !e.MMIO.IsWrite || e.MMIO.Addr != mmioBase || len(e.MMIO.Data) != 4 {
		t.Fatalf("exit %s %+v, want 4-byte MMIO write at %#x", e.Reason, e.MMIO, mmioBase)
	}
	if got := binary.LittleEndian.Uint32(e.MMIO.Data); got != 0x12345678 {
		t.Errorf("MMIO write data %#x, want 0x12345678", got)
	}
	e = runExit(t, g.vcpu)
	if e.Reason != ExitMMIO || e.MMIO.IsWrite || e.MMIO.Addr != mmioBase+8 || len(e.MMIO.Data) != 8 {
		t.Fatalf("exit %s %+v, want 8-byte MMIO read at %#x", e.Reason, e.MMIO, mmioBase+8)
	}
	binary.LittleEndian.PutUint64(e.MMIO.Data, 0x1122334455667788)
	io := expectIO(t, g.vcpu, 0x12, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0x55667788 {
		t.Errorf("low half of MMIO read = %#x, want 0x55667788", got)
	}
	io = expectIO(t, g.vcpu, 0x12, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0x11223344 {
		t.Errorf("high half of MMIO read = %#x, want 0x11223344", got)
	}
	e = runExit(t, g.vcpu)
	if e.Reason != ExitMMIO || !e.MMIO.IsWrite || e.MMIO.Addr != mmioBase+0x10 || len(e.MMIO.Data) != 1 || e.MMIO.Data[0] != 0xab {
		t.Fatalf("exit %s %+v, want 1-byte MMIO write of 0xab at %#x", e.Reason, e.MMIO, mmioBase+0x10)
	}
}

func TestHLTExit(t *testing.T) {
	sys := openKVM(t)
	// Without an in-kernel irqchip HLT is handed to userspace.
	g := newGuest(t, sys, guestConfig{code: codeHLT, ring0: true})
	e := runExit(t, g.vcpu)
	if e.Reason != ExitHLT {
		t.Fatalf("exit %s, want HLT", e.Reason)
	}
	regs, err := g.vcpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RIP != guestCode+1 {
		t.Errorf("RIP after hlt = %#x, want %#x", regs.RIP, guestCode+1)
	}
}

func TestShutdownOnTripleFault(t *testing.T) {
	sys := openKVM(t)
	for _, ring0 := range []bool{false, true} {
		g := newGuest(t, sys, guestConfig{code: codeUD2, ring0: ring0})
		if e := runExit(t, g.vcpu); e.Reason != ExitShutdown {
			t.Errorf("ring0=%v: ud2 with no IDT: exit %s, want SHUTDOWN", ring0, e.Reason)
		}
	}
}

func TestInternalErrorOrFault(t *testing.T) {
	sys := openKVM(t)
	g := newGuest(t, sys, guestConfig{code: codeXGETBV, ring0: true})
	e := runExit(t, g.vcpu)
	if hostHasHardwareVirt() {
		// XGETBV runs natively and faults (#UD: CR4.OSXSAVE is clear), which
		// without an IDT ends in a triple fault.
		if e.Reason != ExitShutdown {
			t.Fatalf("exit %s, want SHUTDOWN", e.Reason)
		}
		return
	}
	// PVM emulates ring 0 and cannot emulate XGETBV.
	if e.Reason != ExitInternalError {
		t.Fatalf("exit %s, want INTERNAL_ERROR", e.Reason)
	}
	if e.Internal.Suberror != InternalErrorEmulation {
		t.Errorf("suberror %d, want %d (emulation)", e.Internal.Suberror, InternalErrorEmulation)
	}
	t.Logf("internal error data: %#x", e.Internal.Data)
}

func TestKickStopsSpinningVCPU(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := openKVM(t)
	g := newGuest(t, sys, guestConfig{code: codeSpin, irqchip: true})

	// A kick before the first Run is kept and ends that Run at once.
	if err := g.vcpu.Kick(); err != nil {
		t.Fatal(err)
	}
	if e := runExit(t, g.vcpu); !e.Interrupted() || !e.Kicked {
		t.Fatalf("Run after early kick: %+v, want kicked interruption", e)
	}

	const delay = 50 * time.Millisecond
	for round := 0; round < 3; round++ {
		kicked := make(chan time.Time, 1)
		kickErr := make(chan error, 1)
		go func() {
			time.Sleep(delay)
			kicked <- time.Now()
			kickErr <- g.vcpu.Kick()
		}()
		start := time.Now()
		e := runExit(t, g.vcpu)
		end := time.Now()
		if !e.Interrupted() || !e.Kicked {
			t.Fatalf("round %d: exit %+v, want kicked interruption", round, e)
		}
		sent := <-kicked
		if err := <-kickErr; err != nil {
			t.Fatal(err)
		}
		latency := end.Sub(sent)
		if end.Sub(start) < delay {
			t.Errorf("round %d: Run returned after %v, before the kick", round, end.Sub(start))
		}
		if latency > time.Second {
			t.Errorf("round %d: kick took %v to stop the vCPU", round, latency)
		}
		t.Logf("round %d: kick to return %v", round, latency)
	}
	// The guest is still where it was: spinning on its jmp.
	regs, err := g.vcpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RIP != guestCode {
		t.Errorf("RIP = %#x after kicks, want %#x", regs.RIP, guestCode)
	}
	if err := g.vcpu.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.vcpu.Kick(); err == nil {
		t.Error("Kick on a closed vCPU succeeded")
	}
	if _, err := g.vcpu.Run(); err == nil {
		t.Error("Run on a closed vCPU succeeded")
	}
}

// BenchmarkPIOExit measures a port I/O exit round trip: the guest runs
// "out dx, al" in a loop and the host returns at once. ring3 is how test
// workloads run here; ring0 shows the cost when the kernel issues the out.
func BenchmarkPIOExit(b *testing.B) {
	for _, ring0 := range []bool{false, true} {
		name := "ring3"
		if ring0 {
			name = "ring0"
		}
		b.Run(name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			sys := openKVM(b)
			g := newGuest(b, sys, guestConfig{code: codeOutLoop, ring0: ring0})
			expectIO(b, g.vcpu, 0x30, IOOut, 1)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e, err := g.vcpu.Run()
				if err != nil {
					b.Fatal(err)
				}
				if e.Reason != ExitIO && !e.Interrupted() {
					b.Fatalf("exit %s", e.Reason)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/exit")
		})
	}
}
