package boot

import (
	"encoding/binary"
	"os"
	"syscall"
	"testing"
	"unsafe"
)

// This file runs a tiny 64-bit guest on the real /dev/kvm from the state
// SetupLongMode returns, so the page tables, the GDT and the register
// values are checked by KVM itself. It talks to KVM with raw ioctls because
// this package must not import wasmvmm's kvm package.

// KVM ioctl numbers (linux/kvm.h).
const (
	kvmGetAPIVersion       = 0xae00
	kvmCreateVM            = 0xae01
	kvmGetVCPUMmapSize     = 0xae04
	kvmGetSupportedCPUID   = 0xc008ae05
	kvmCreateVCPU          = 0xae41
	kvmSetUserMemoryRegion = 0x4020ae46
	kvmRun                 = 0xae80
	kvmGetRegs             = 0x8090ae81
	kvmSetRegs             = 0x4090ae82
	kvmGetSregs            = 0x8138ae83
	kvmSetSregs            = 0x4138ae84
	kvmSetCPUID2           = 0x4008ae90

	kvmExitIO       = 2
	kvmExitHLT      = 5
	kvmExitIOOut    = 1
	cpuidEntrySize  = 40
	cpuidMaxEntries = 256
)

type kvmSegment struct {
	Base                                              uint64
	Limit                                             uint32
	Selector                                          uint16
	Type, Present, DPL, DB, S, L, G, AVL, Unusable, _ uint8
}

type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT         kvmSegment
	GDT, IDT                                kvmDtable
	CR0, CR2, CR3, CR4, CR8, EFER, APICBase uint64
	InterruptBitmap                         [4]uint64
}

// kvmRegs is struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rip rflags.
type kvmRegs [18]uint64

const (
	regRAX, regRCX, regRSI, regRSP, regRIP, regRFLAGS = 0, 2, 4, 6, 16, 17
)

type kvmMemoryRegion struct {
	Slot, Flags                             uint32
	GuestPhysAddr, MemorySize, UserspaceAdr uint64
}

func ioctl(t *testing.T, fd uintptr, req uintptr, arg uintptr, what string) uintptr {
	t.Helper()
	r, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg)
	if errno != 0 {
		t.Fatalf("%s: %v", what, errno)
	}
	return r
}

func toKVM(s Segment) kvmSegment {
	return kvmSegment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

// guestCode, at the entry point: reload DS from the GDT, read the "HdrS"
// magic through RSI (the zero page), push/pop through RSP, report it with
// `out %eax, $0x10`, write 0xcafebabe at 6 MiB (the fourth 2 MiB page) and
// halt.
var guestCode = []byte{
	0x66, 0xb8, 0x18, 0x00, // mov $0x18, %ax
	0x8e, 0xd8, // mov %ax, %ds
	0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov 0x202(%rsi), %eax
	0x50,       // push %rax
	0x59,       // pop %rcx
	0x89, 0xc8, // mov %ecx, %eax
	0xe7, 0x10, // out %eax, $0x10
	0xc7, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00, 0xbe, 0xba, 0xfe, 0xca, // movl $0xcafebabe, 0x600000
	0xf4, // hlt
}

func TestLongModeOnKVM(t *testing.T) {
	kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	requirePrereq(t, err == nil, "/dev/kvm not usable: %v", err)
	defer kvm.Close()
	kfd := kvm.Fd()
	if v := ioctl(t, kfd, kvmGetAPIVersion, 0, "KVM_GET_API_VERSION"); v != 12 {
		t.Fatalf("KVM API version %d", v)
	}
	vmfd := ioctl(t, kfd, kvmCreateVM, 0, "KVM_CREATE_VM")
	defer syscall.Close(int(vmfd))

	const ramSize = 8 << 20
	mem := newGuestRAM(t, ramSize)
	region := kvmMemoryRegion{MemorySize: ramSize, UserspaceAdr: uint64(uintptr(unsafe.Pointer(&mem.b[0])))}
	ioctl(t, vmfd, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region)), "KVM_SET_USER_MEMORY_REGION")

	vcpufd := ioctl(t, vmfd, kvmCreateVCPU, 0, "KVM_CREATE_VCPU")
	defer syscall.Close(int(vcpufd))
	cpuid := make([]byte, 8+cpuidEntrySize*cpuidMaxEntries)
	binary.LittleEndian.PutUint32(cpuid, cpuidMaxEntries)
	ioctl(t, kfd, kvmGetSupportedCPUID, uintptr(unsafe.Pointer(&cpuid[0])), "KVM_GET_SUPPORTED_CPUID")
	ioctl(t, vcpufd, kvmSetCPUID2, uintptr(unsafe.Pointer(&cpuid[0])), "KVM_SET_CPUID2")
	runSize := ioctl(t, kfd, kvmGetVCPUMmapSize, 0, "KVM_GET_VCPU_MMAP_SIZE")
	run, err := syscall.Mmap(int(vcpufd), 0, int(runSize), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(run)

	// Guest memory: code at 1 MiB, boot_params at the zero page.
	if _, err := mem.WriteAt(guestCode, KernelAddr); err != nil {
		t.Fatal(err)
	}
	e820, err := MemoryLayout{RAMSize: ramSize}.E820()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBootParams(mem, ZeroPageAddr, BootParamsConfig{CmdlineAddr: CmdlineAddr, Cmdline: "console=ttyS0", E820: e820}); err != nil {
		t.Fatal(err)
	}
	st, err := SetupLongMode(mem, ramSize)
	if err != nil {
		t.Fatal(err)
	}
	st.RIP = KernelAddr

	var sregs kvmSregs
	ioctl(t, vcpufd, kvmGetSregs, uintptr(unsafe.Pointer(&sregs)), "KVM_GET_SREGS")
	sregs.CS, sregs.DS, sregs.ES = toKVM(st.CS), toKVM(st.DS), toKVM(st.ES)
	sregs.FS, sregs.GS, sregs.SS = toKVM(st.FS), toKVM(st.GS), toKVM(st.SS)
	sregs.TR, sregs.LDT = toKVM(st.TR), toKVM(st.LDT)
	sregs.GDT = kvmDtable{Base: st.GDT.Base, Limit: st.GDT.Limit}
	sregs.IDT = kvmDtable{Base: st.IDT.Base, Limit: st.IDT.Limit}
	sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	ioctl(t, vcpufd, kvmSetSregs, uintptr(unsafe.Pointer(&sregs)), "KVM_SET_SREGS")
	var regs kvmRegs
	regs[regRIP], regs[regRSI], regs[regRSP], regs[regRFLAGS] = st.RIP, st.RSI, st.RSP, st.RFLAGS
	ioctl(t, vcpufd, kvmSetRegs, uintptr(unsafe.Pointer(&regs)), "KVM_SET_REGS")

	var reported uint32
	halted := false
	for i := 0; i < 10 && !halted; i++ {
		ioctl(t, vcpufd, kvmRun, 0, "KVM_RUN")
		switch reason := binary.LittleEndian.Uint32(run[8:]); reason {
		case kvmExitIO:
			dir, size := run[32], run[33]
			port := binary.LittleEndian.Uint16(run[34:])
			off := binary.LittleEndian.Uint64(run[40:])
			if dir != kvmExitIOOut || size != 4 || port != 0x10 {
				t.Fatalf("unexpected I/O exit: dir %d size %d port %#x", dir, size, port)
			}
			reported = binary.LittleEndian.Uint32(run[off:])
		case kvmExitHLT:
			halted = true
		default:
			ioctl(t, vcpufd, kvmGetRegs, uintptr(unsafe.Pointer(&regs)), "KVM_GET_REGS")
			t.Fatalf("unexpected exit reason %d at RIP %#x", reason, regs[regRIP])
		}
	}
	if !halted {
		t.Fatal("guest did not halt")
	}
	if reported != headerMagic {
		t.Errorf("guest read %#x through RSI+0x202, want the HdrS magic %#x", reported, headerMagic)
	}
	if got := binary.LittleEndian.Uint32(mem.b[0x600000:]); got != 0xcafebabe {
		t.Errorf("guest write at 6 MiB: %#x", got)
	}
	ioctl(t, vcpufd, kvmGetRegs, uintptr(unsafe.Pointer(&regs)), "KVM_GET_REGS")
	if regs[regRIP] != KernelAddr+uint64(len(guestCode)) || regs[regRSP] != BootStackTop || uint32(regs[regRCX]) != headerMagic {
		t.Errorf("after halt: RIP %#x RSP %#x RCX %#x", regs[regRIP], regs[regRSP], regs[regRCX])
	}
	ioctl(t, vcpufd, kvmGetSregs, uintptr(unsafe.Pointer(&sregs)), "KVM_GET_SREGS")
	if sregs.EFER&EFERLMA == 0 || sregs.CS.L != 1 || sregs.DS.Selector != BootDS {
		t.Errorf("after run: EFER %#x CS.L %d DS %#x", sregs.EFER, sregs.CS.L, sregs.DS.Selector)
	}
}
