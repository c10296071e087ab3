package kvm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KickSignal is the signal Kick sends to the OS thread running a vCPU. It is
// SIGURG because Go's runtime already installs a handler for it on every
// thread (asynchronous preemption) and ignores deliveries it did not ask for,
// so no handler or signal mask has to be set up, and Go code is written to
// tolerate the EINTRs it causes. A signal interrupts KVM_RUN with EINTR; the
// immediate_exit flag that Kick sets first covers the window in which the
// thread is about to enter KVM_RUN and would otherwise miss the signal.
const KickSignal = unix.SIGURG

// VCPU is a virtual CPU with its mmapped kvm_run area.
//
// Run, CompletePendingIO, SaveState and RestoreState belong to the vCPU's
// owner, normally one goroutine that called runtime.LockOSThread and calls
// Run in a loop. Kick may be called from any goroutine.
type VCPU struct {
	vm  *VM
	id  int
	fd  int
	run []byte
	// ctl points at the first word of run (see controlWord).
	ctl *uint32
	// tid is the OS thread that last entered Run, for Kick.
	tid atomic.Int32
	// kickMu keeps Close from unmapping run while Kick writes to it.
	kickMu sync.RWMutex
	closed bool
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run area.
// With an in-kernel irqchip every vCPU but the boot vCPU (id 0) starts in
// MPStateUninitialized and waits for INIT/SIPI; a VMM that starts such a vCPU
// directly must call SetMPState(MPStateRunnable) first.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fdr, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU(%d): %w", id, err)
	}
	fd := int(fdr)
	unix.CloseOnExec(fd)
	run, err := unix.Mmap(fd, 0, vm.sys.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vcpu %d: mmap kvm_run (%d bytes): %w", id, vm.sys.mmapSize, err)
	}
	return &VCPU{vm: vm, id: id, fd: fd, run: run, ctl: (*uint32)(unsafe.Pointer(&run[0]))}, nil
}

// ID returns the id the vCPU was created with.
func (v *VCPU) ID() int { return v.id }

// Close unmaps the kvm_run area and closes the vCPU. The vCPU must not be running.
func (v *VCPU) Close() error {
	v.kickMu.Lock()
	defer v.kickMu.Unlock()
	v.closed = true
	var errs []error
	if v.run != nil {
		if err := unix.Munmap(v.run); err != nil {
			errs = append(errs, fmt.Errorf("vcpu %d: munmap kvm_run: %w", v.id, err))
		}
		v.run = nil
	}
	if v.fd >= 0 {
		if err := unix.Close(v.fd); err != nil {
			errs = append(errs, fmt.Errorf("vcpu %d: close: %w", v.id, err))
		}
		v.fd = -1
	}
	return errors.Join(errs...)
}

// header returns the fixed part of kvm_run.
func (v *VCPU) header() *runHeader { return (*runHeader)(unsafe.Pointer(&v.run[0])) }

// controlWord is the first 32-bit word of kvm_run: byte 0 is
// request_interrupt_window, byte 1 immediate_exit. It is only changed with
// atomic operations, because Kick writes it from other goroutines.
func (v *VCPU) controlWord() *uint32 { return v.ctl }

const immediateExitBit = 1 << 8 // immediate_exit = 1 in the little-endian control word

// Run enters the guest (KVM_RUN) until it exits to userspace and returns a
// typed view of the exit. EINTR and EAGAIN are not errors: they come back as
// an Exit with Reason ExitIntr (see Exit.Interrupted and Exit.Kicked), after
// which the caller runs again unless it wanted to stop. Data slices in the
// Exit point into the kvm_run area and are valid until the next Run; values
// for IN and MMIO reads must be written into them before the next Run.
//
// The calling goroutine should be locked to its OS thread
// (runtime.LockOSThread) so that Kick can reach it.
func (v *VCPU) Run() (Exit, error) {
	if v.run == nil {
		return Exit{}, fmt.Errorf("vcpu %d: run: vcpu is closed", v.id)
	}
	v.tid.Store(int32(unix.Gettid()))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
	switch errno {
	case 0:
		return decodeExit(v.run), nil
	case unix.EINTR, unix.EAGAIN:
		return Exit{Reason: ExitIntr, Kicked: v.takeKick()}, nil
	default:
		return Exit{}, fmt.Errorf("vcpu %d: KVM_RUN: %w", v.id, errno)
	}
}

// takeKick clears a pending kick and reports whether there was one.
func (v *VCPU) takeKick() bool {
	return atomic.AndUint32(v.controlWord(), ^uint32(immediateExitBit))&immediateExitBit != 0
}

// Kick forces the vCPU out of KVM_RUN: it sets kvm_run.immediate_exit and
// sends KickSignal to the thread that last entered Run. The running (or next)
// Run returns an Exit with Reason ExitIntr and Kicked set; the kick stays
// pending until such a Run consumes it, so a kick that arrives while the
// owner is handling an exit is not lost. Safe to call from any goroutine.
func (v *VCPU) Kick() error {
	v.kickMu.RLock()
	defer v.kickMu.RUnlock()
	if v.closed {
		return fmt.Errorf("vcpu %d: kick: vcpu is closed", v.id)
	}
	atomic.OrUint32(v.controlWord(), immediateExitBit)
	tid := v.tid.Load()
	if tid == 0 {
		return nil // never ran: the next Run returns at once
	}
	err := unix.Tgkill(unix.Getpid(), int(tid), KickSignal)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("vcpu %d: tgkill(%d, %s): %w", v.id, tid, KickSignal, err)
	}
	return nil
}

// RequestInterruptWindow sets kvm_run.request_interrupt_window, asking KVM
// to exit with ExitIRQWindowOpen as soon as the guest can take an interrupt
// (only meaningful without an in-kernel irqchip). It does nothing on a
// closed vCPU.
func (v *VCPU) RequestInterruptWindow(on bool) {
	if v.run == nil {
		return
	}
	if on {
		atomic.OrUint32(v.controlWord(), 1)
	} else {
		atomic.AndUint32(v.controlWord(), ^uint32(0xff))
	}
}

// ReadyForInterruptInjection reports kvm_run.ready_for_interrupt_injection
// after the last exit.
func (v *VCPU) ReadyForInterruptInjection() bool {
	return v.run != nil && v.header().ReadyForInterruptInjection != 0
}

// CompletePendingIO finishes any instruction KVM left half done at the last
// exit (the IN or MMIO read whose value userspace supplied, a string I/O
// instruction, an emulated instruction) without running guest code: it sets
// immediate_exit and calls KVM_RUN once, which completes the pending work and
// returns EINTR. Call it before reading the vCPU state for migration;
// SaveState does. If completing the work needs userspace again (e.g. the next
// element of a rep outs), the exit is returned: handle it and call again.
// A pending Kick survives the call.
func (v *VCPU) CompletePendingIO() (Exit, error) {
	if v.run == nil {
		return Exit{}, fmt.Errorf("vcpu %d: complete pending I/O: vcpu is closed", v.id)
	}
	old := atomic.OrUint32(v.controlWord(), immediateExitBit)
	defer func() {
		if old&immediateExitBit == 0 {
			atomic.AndUint32(v.controlWord(), ^uint32(immediateExitBit))
		}
	}()
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
		switch errno {
		case 0:
			return decodeExit(v.run), nil
		case unix.EINTR:
			return Exit{Reason: ExitIntr}, nil
		case unix.EAGAIN:
			continue
		default:
			return Exit{}, fmt.Errorf("vcpu %d: KVM_RUN with immediate_exit: %w", v.id, errno)
		}
	}
}

// SetCPUID sets the CPUID leaves the guest sees (KVM_SET_CPUID2). Start from
// (*System).SupportedCPUID and adjust. Call it before the first Run; the
// destination of a migration must set the same leaves before RestoreState.
func (v *VCPU) SetCPUID(entries []CPUIDEntry) error {
	entrySize := int(unsafe.Sizeof(CPUIDEntry{}))
	buf := make([]uint64, 1+(len(entries)*entrySize+7)/8)
	(*listHeader)(unsafe.Pointer(&buf[0])).N = uint32(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[1])), len(entries)), entries)
	}
	if _, err := ioctlPtr(v.fd, ioctlSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("vcpu %d: KVM_SET_CPUID2 (%d entries): %w", v.id, len(entries), err)
	}
	return nil
}

// CPUID returns the CPUID leaves in effect for the vCPU (KVM_GET_CPUID2).
func (v *VCPU) CPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 1<<14; n *= 2 {
		entries, err := getCPUIDList(v.fd, ioctlGetCPUID2, n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("vcpu %d: KVM_GET_CPUID2: %w", v.id, err)
		}
		return entries, nil
	}
	return nil, fmt.Errorf("vcpu %d: KVM_GET_CPUID2: too many entries", v.id)
}

// get and set wrap a fixed-size state ioctl.
func (v *VCPU) get(req uintptr, name string, p unsafe.Pointer) error {
	if _, err := ioctlPtr(v.fd, req, p); err != nil {
		return fmt.Errorf("vcpu %d: %s: %w", v.id, name, err)
	}
	return nil
}

// Regs returns the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) Regs() (Regs, error) {
	var r Regs
	return r, v.get(ioctlGetRegs, "KVM_GET_REGS", unsafe.Pointer(&r))
}

// SetRegs sets the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r Regs) error {
	return v.get(ioctlSetRegs, "KVM_SET_REGS", unsafe.Pointer(&r))
}

// Sregs returns the special registers (KVM_GET_SREGS).
func (v *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	return s, v.get(ioctlGetSregs, "KVM_GET_SREGS", unsafe.Pointer(&s))
}

// SetSregs sets the special registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s Sregs) error {
	return v.get(ioctlSetSregs, "KVM_SET_SREGS", unsafe.Pointer(&s))
}

// Sregs2 returns the special registers with the PDPTRs (KVM_GET_SREGS2, needs CapSREGS2).
func (v *VCPU) Sregs2() (Sregs2, error) {
	var s Sregs2
	return s, v.get(ioctlGetSregs2, "KVM_GET_SREGS2", unsafe.Pointer(&s))
}

// SetSregs2 sets the special registers with the PDPTRs (KVM_SET_SREGS2, needs CapSREGS2).
func (v *VCPU) SetSregs2(s Sregs2) error {
	return v.get(ioctlSetSregs2, "KVM_SET_SREGS2", unsafe.Pointer(&s))
}

// FPU returns the legacy FPU/SSE state (KVM_GET_FPU).
func (v *VCPU) FPU() (FPU, error) {
	var f FPU
	return f, v.get(ioctlGetFPU, "KVM_GET_FPU", unsafe.Pointer(&f))
}

// SetFPU sets the legacy FPU/SSE state (KVM_SET_FPU).
func (v *VCPU) SetFPU(f FPU) error {
	return v.get(ioctlSetFPU, "KVM_SET_FPU", unsafe.Pointer(&f))
}

// XSAVE returns the vCPU's XSAVE area, (*VM).XSAVESize bytes (KVM_GET_XSAVE2
// when the host has CapXSAVE2, else KVM_GET_XSAVE).
func (v *VCPU) XSAVE() ([]byte, error) {
	size := v.vm.xsaveSize
	if size < 4096 {
		size = 4096
	}
	buf := make([]uint64, size/8)
	req, name := uintptr(ioctlGetXSAVE2), "KVM_GET_XSAVE2"
	if !v.vm.hasXSAVE2 {
		req, name = ioctlGetXSAVE, "KVM_GET_XSAVE"
	}
	if err := v.get(req, name, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), size)...), nil
}

// SetXSAVE loads an XSAVE area as returned by XSAVE (KVM_SET_XSAVE). The
// buffer must be at least (*VM).XSAVESize bytes long.
func (v *VCPU) SetXSAVE(area []byte) error {
	if len(area) < v.vm.xsaveSize || len(area)%8 != 0 {
		return fmt.Errorf("vcpu %d: KVM_SET_XSAVE: area of %d bytes, want %d", v.id, len(area), v.vm.xsaveSize)
	}
	buf := make([]uint64, len(area)/8)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(area)), area)
	return v.get(ioctlSetXSAVE, "KVM_SET_XSAVE", unsafe.Pointer(&buf[0]))
}

// XCRs returns the extended control registers (KVM_GET_XCRS).
func (v *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	return x, v.get(ioctlGetXCRs, "KVM_GET_XCRS", unsafe.Pointer(&x))
}

// SetXCRs sets the extended control registers (KVM_SET_XCRS).
func (v *VCPU) SetXCRs(x XCRs) error {
	return v.get(ioctlSetXCRs, "KVM_SET_XCRS", unsafe.Pointer(&x))
}

// LAPIC returns the local APIC registers (KVM_GET_LAPIC; needs the irqchip).
func (v *VCPU) LAPIC() (LAPICState, error) {
	var l LAPICState
	return l, v.get(ioctlGetLAPIC, "KVM_GET_LAPIC", unsafe.Pointer(&l))
}

// SetLAPIC sets the local APIC registers (KVM_SET_LAPIC). Set the APIC base
// (sregs) first: in x2APIC mode KVM checks the ID register against it.
func (v *VCPU) SetLAPIC(l LAPICState) error {
	return v.get(ioctlSetLAPIC, "KVM_SET_LAPIC", unsafe.Pointer(&l))
}

// VCPUEvents returns pending and injected events (KVM_GET_VCPU_EVENTS).
func (v *VCPU) VCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	return e, v.get(ioctlGetVCPUEvents, "KVM_GET_VCPU_EVENTS", unsafe.Pointer(&e))
}

// SetVCPUEvents sets pending and injected events (KVM_SET_VCPU_EVENTS);
// e.Flags selects the optional fields KVM loads.
func (v *VCPU) SetVCPUEvents(e VCPUEvents) error {
	return v.get(ioctlSetVCPUEvents, "KVM_SET_VCPU_EVENTS", unsafe.Pointer(&e))
}

// DebugRegs returns DR0-3, DR6 and DR7 (KVM_GET_DEBUGREGS).
func (v *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	return d, v.get(ioctlGetDebugRegs, "KVM_GET_DEBUGREGS", unsafe.Pointer(&d))
}

// SetDebugRegs sets DR0-3, DR6 and DR7 (KVM_SET_DEBUGREGS; Flags must be 0).
func (v *VCPU) SetDebugRegs(d DebugRegs) error {
	return v.get(ioctlSetDebugRegs, "KVM_SET_DEBUGREGS", unsafe.Pointer(&d))
}

// MPState returns the vCPU's multiprocessing state (KVM_GET_MP_STATE).
func (v *VCPU) MPState() (MPState, error) {
	var s mpStateArg
	return s.State, v.get(ioctlGetMPState, "KVM_GET_MP_STATE", unsafe.Pointer(&s))
}

// SetMPState sets the vCPU's multiprocessing state (KVM_SET_MP_STATE). With
// an in-kernel irqchip, application processors start in
// MPStateUninitialized; set MPStateRunnable to start one directly, without
// INIT/SIPI.
func (v *VCPU) SetMPState(s MPState) error {
	arg := mpStateArg{State: s}
	if err := v.get(ioctlSetMPState, "KVM_SET_MP_STATE", unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("%w (state %s)", err, s)
	}
	return nil
}

// MSRs reads the given MSRs (KVM_GET_MSRS). KVM stops at the first MSR it
// refuses; MSRs returns the entries read before it and n, their count, so
// entries[:n] are valid and indices[n] (if n < len(indices)) was refused.
func (v *VCPU) MSRs(indices []uint32) (entries []MSREntry, n int, err error) {
	entries = make([]MSREntry, len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	n, err = v.msrIoctl(ioctlGetMSRs, "KVM_GET_MSRS", entries)
	return entries, n, err
}

// SetMSRs writes the given MSRs (KVM_SET_MSRS) and fails naming the first
// MSR KVM refuses.
func (v *VCPU) SetMSRs(entries []MSREntry) error {
	n, err := v.msrIoctl(ioctlSetMSRs, "KVM_SET_MSRS", entries)
	if err != nil {
		return err
	}
	if n < len(entries) {
		return fmt.Errorf("vcpu %d: KVM_SET_MSRS refused MSR %#x (value %#x), %d of %d set",
			v.id, entries[n].Index, entries[n].Data, n, len(entries))
	}
	return nil
}

// msrIoctl runs KVM_GET_MSRS or KVM_SET_MSRS over entries (in place) and
// returns the number of entries processed.
func (v *VCPU) msrIoctl(req uintptr, name string, entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	entrySize := int(unsafe.Sizeof(MSREntry{}))
	buf := make([]uint64, 1+len(entries)*entrySize/8)
	(*listHeader)(unsafe.Pointer(&buf[0])).N = uint32(len(entries))
	body := unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[1])), len(entries))
	copy(body, entries)
	r, err := ioctlPtr(v.fd, req, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("vcpu %d: %s (%d MSRs): %w", v.id, name, len(entries), err)
	}
	copy(entries, body)
	if int(r) > len(entries) {
		return 0, fmt.Errorf("vcpu %d: %s: kernel reported %d of %d MSRs", v.id, name, r, len(entries))
	}
	return int(r), nil
}
