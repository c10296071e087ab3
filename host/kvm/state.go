package kvm

import (
	"errors"
	"fmt"
	"slices"
	"unsafe"
)

// VCPUState is the complete architectural state of a vCPU as KVM exposes it,
// for migration and snapshots. It holds plain values (fixed-size arrays and
// slices of plain values), so it can be copied and serialized freely
// (encoding/gob, encoding/json, or field by field).
type VCPUState struct {
	// ID is the id the vCPU was created with; RestoreState checks it.
	ID int

	Regs Regs
	// Sregs holds the special registers in the KVM_GET_SREGS2 layout. When
	// the source host lacked CapSREGS2 they come from KVM_GET_SREGS, the
	// PDPTRs are absent (Flags has no Sregs2FlagPDPTRsValid) and
	// InterruptBitmap carries KVM_GET_SREGS's pending-interrupt bitmap.
	Sregs           Sregs2
	InterruptBitmap [4]uint64

	// FPU is the legacy FPU/SSE state. SaveState leaves it zero: XSAVE
	// holds the same registers and RestoreState uses FPU only for a state
	// without XSAVE (one KVM_GET_FPU less inside a migration's pause).
	FPU FPU
	// XSAVE is the XSAVE area (KVM_GET_XSAVE2 or KVM_GET_XSAVE), usually 4096
	// bytes; it includes the FPU state, so RestoreState prefers it to FPU.
	XSAVE []byte
	XCRs  XCRs
	LAPIC LAPICState

	// MSRs holds every MSR of the host's MSR index list that KVM_GET_MSRS
	// would read (TSC, kvmclock, SYSCALL MSRs, TSC deadline, ...), in list order.
	MSRs []MSREntry
	// RefusedMSRs lists the MSRs of the index list KVM_GET_MSRS refused for
	// this vCPU (typically ones its CPUID does not enable); they are not saved.
	RefusedMSRs []uint32

	Events    VCPUEvents
	MPState   MPState
	DebugRegs DebugRegs
}

// ErrPendingExit is returned (wrapped) by SaveState when finishing the last
// exit's instruction needs userspace again; handle the exit and retry.
var ErrPendingExit = errors.New("vcpu has a pending exit to handle before its state can be saved")

// PendingExitError carries the exit that CompletePendingIO returned inside SaveState.
type PendingExitError struct {
	Exit Exit
}

// Error names the pending exit.
func (e *PendingExitError) Error() string {
	return fmt.Sprintf("%v: %s", ErrPendingExit, e.Exit.Reason)
}

// Unwrap lets errors.Is(err, ErrPendingExit) match.
func (e *PendingExitError) Unwrap() error { return ErrPendingExit }

// SaveState reads the complete vCPU state. It first calls CompletePendingIO,
// so the instruction that caused the last exit is finished and its result
// (e.g. the value of an IN) is part of the saved state; if that produces a
// new exit, SaveState returns a *PendingExitError holding it (the state is
// not saved). The vCPU must be stopped: call SaveState from the goroutine
// that runs it, between two Runs.
//
// The reads are ReadState's.
func (v *VCPU) SaveState() (*VCPUState, error) {
	exit, err := v.CompletePendingIO()
	if err != nil {
		return nil, fmt.Errorf("vcpu %d: save state: %w", v.id, err)
	}
	if !exit.Interrupted() {
		return nil, fmt.Errorf("vcpu %d: save state: %w", v.id, &PendingExitError{Exit: exit})
	}
	return v.ReadState()
}

// ReadState reads the complete vCPU state without entering KVM_RUN: the
// caller ensures that no exit is half done, i.e. that CompletePendingIO
// returned an interrupted exit after the vCPU's last Run (SaveState does
// both). It issues only state ioctls, so it may be called from any thread
// while the vCPU's own thread is outside KVM_RUN (KVM takes the vCPU's
// mutex for each); this spares a hop to that thread, which costs more than
// the reads on a nested host.
//
// The reads follow QEMU's order (facts from kvm_arch_get_registers): events,
// then MP state (reading it may process a pending INIT/SIPI, which changes
// CS and RIP), then registers, special registers, XSAVE, XCRs, MSRs,
// LAPIC and debug registers.
func (v *VCPU) ReadState() (*VCPUState, error) {
	var err error
	st := &VCPUState{ID: v.id}
	if st.Events, err = v.VCPUEvents(); err != nil {
		return nil, err
	}
	if st.MPState, err = v.MPState(); err != nil {
		return nil, err
	}
	if st.Regs, err = v.Regs(); err != nil {
		return nil, err
	}
	if v.vm.hasSregs2 {
		if st.Sregs, err = v.Sregs2(); err != nil {
			return nil, err
		}
	} else {
		s, err := v.Sregs()
		if err != nil {
			return nil, err
		}
		st.Sregs = sregs2From(s)
		st.InterruptBitmap = s.InterruptBitmap
	}
	if st.XSAVE, err = v.XSAVE(); err != nil {
		return nil, err
	}
	if st.XCRs, err = v.XCRs(); err != nil {
		return nil, err
	}
	if st.MSRs, st.RefusedMSRs, err = v.saveMSRs(); err != nil {
		return nil, err
	}
	v.vm.mu.Lock()
	hasIRQChip := v.vm.hasIRQChip
	v.vm.mu.Unlock()
	if hasIRQChip {
		if st.LAPIC, err = v.LAPIC(); err != nil {
			return nil, err
		}
	}
	if st.DebugRegs, err = v.DebugRegs(); err != nil {
		return nil, err
	}
	return st, nil
}

// saveMSRs reads every MSR of the index list, skipping those KVM refuses.
func (v *VCPU) saveMSRs() (saved []MSREntry, refused []uint32, err error) {
	list, err := v.vm.msrList()
	if err != nil {
		return nil, nil, fmt.Errorf("vcpu %d: save MSRs: %w", v.id, err)
	}
	for rest := list; len(rest) > 0; {
		entries, n, err := v.MSRs(rest)
		if err != nil {
			return nil, nil, err
		}
		saved = append(saved, entries[:n]...)
		if n == len(rest) {
			break
		}
		refused = append(refused, rest[n])
		rest = rest[n+1:]
	}
	return saved, refused, nil
}

// RestoreState loads a state saved by SaveState into this vCPU, which must
// have the same id, the same CPUID (SetCPUID first) and, if the state has a
// LAPIC, a VM with an in-kernel irqchip. Guest memory should already be in
// place. Restore the VM-wide state with (*VM).RestoreState as well.
//
// The order matters, and follows KVM's dependencies (facts checked against
// QEMU's kvm_arch_put_registers):
//  1. special registers first: CR0/CR4/EFER decide the mode in which the
//     rest is interpreted, and they carry the APIC base that KVM_SET_LAPIC
//     checks the LAPIC ID against;
//  2. general registers;
//  3. FPU, then XSAVE (XSAVE includes and overrides the FPU state), then XCRs
//     (KVM validates both against the guest's CPUID, not against each other);
//  4. MSRs except IA32_TSC_DEADLINE (TSC, kvmclock, SYSCALL, ...);
//  5. LAPIC, then IA32_TSC_DEADLINE: the deadline is ignored unless the LAPIC
//     timer is already in TSC-deadline mode;
//  6. debug registers;
//  7. vCPU events (pending/injected exceptions, interrupts, NMI, SMI);
//  8. MP state last, so that a halted or INIT-waiting vCPU stays so.
func (v *VCPU) RestoreState(st *VCPUState) error {
	if st == nil {
		return fmt.Errorf("vcpu %d: restore state: nil state", v.id)
	}
	if st.ID != v.id {
		return fmt.Errorf("vcpu %d: restore state saved from vcpu %d", v.id, st.ID)
	}
	if v.vm.hasSregs2 {
		if err := v.SetSregs2(st.Sregs); err != nil {
			return err
		}
	} else {
		if err := v.SetSregs(sregsFrom(st.Sregs, st.InterruptBitmap)); err != nil {
			return err
		}
	}
	if err := v.SetRegs(st.Regs); err != nil {
		return err
	}
	if len(st.XSAVE) == 0 {
		if err := v.SetFPU(st.FPU); err != nil {
			return err
		}
	} else {
		area := st.XSAVE
		if len(area) < v.vm.xsaveSize {
			area = append(slices.Clip(area), make([]byte, v.vm.xsaveSize-len(area))...)
		}
		if err := v.SetXSAVE(area); err != nil {
			return err
		}
	}
	if st.XCRs.NrXCRs > 0 {
		if err := v.SetXCRs(st.XCRs); err != nil {
			return err
		}
	}
	var deadline []MSREntry
	msrs := make([]MSREntry, 0, len(st.MSRs))
	for _, m := range st.MSRs {
		if m.Index == MSRIA32TSCDeadline {
			deadline = append(deadline, m)
		} else {
			msrs = append(msrs, m)
		}
	}
	if err := v.SetMSRs(msrs); err != nil {
		return err
	}
	v.vm.mu.Lock()
	hasIRQChip := v.vm.hasIRQChip
	v.vm.mu.Unlock()
	if hasIRQChip && st.LAPIC != (LAPICState{}) {
		if err := v.SetLAPIC(st.LAPIC); err != nil {
			return err
		}
	}
	if err := v.SetMSRs(deadline); err != nil {
		return err
	}
	if err := v.SetDebugRegs(st.DebugRegs); err != nil {
		return err
	}
	if err := v.SetVCPUEvents(st.Events); err != nil {
		return err
	}
	return v.SetMPState(st.MPState)
}

// sregs2From converts KVM_GET_SREGS output to the SREGS2 layout (no PDPTRs).
func sregs2From(s Sregs) Sregs2 {
	return Sregs2{
		CS: s.CS, DS: s.DS, ES: s.ES, FS: s.FS, GS: s.GS, SS: s.SS, TR: s.TR, LDT: s.LDT,
		GDT: s.GDT, IDT: s.IDT, CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8,
		EFER: s.EFER, APICBase: s.APICBase,
	}
}

// sregsFrom converts the SREGS2 layout back to KVM_SET_SREGS input.
func sregsFrom(s Sregs2, bitmap [4]uint64) Sregs {
	return Sregs{
		CS: s.CS, DS: s.DS, ES: s.ES, FS: s.FS, GS: s.GS, SS: s.SS, TR: s.TR, LDT: s.LDT,
		GDT: s.GDT, IDT: s.IDT, CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8,
		EFER: s.EFER, APICBase: s.APICBase, InterruptBitmap: bitmap,
	}
}

// VMState is the VM-wide state KVM keeps outside the vCPUs: the in-kernel
// interrupt controllers, the PIT and the kvmclock base. Plain values only.
type VMState struct {
	HasIRQChip bool // PICMaster, PICSlave and IOAPIC are valid
	PICMaster  PICState
	PICSlave   PICState
	IOAPIC     IOAPICState

	HasPIT bool // PIT is valid
	PIT    PITState2

	Clock ClockData
}

// SaveState reads the VM-wide state: the PICs and the IOAPIC if CreateIRQChip
// was called, the PIT if CreatePIT2 was called, and the kvmclock
// (KVM_GET_CLOCK). Save it while every vCPU is stopped, together with their
// VCPUStates.
func (vm *VM) SaveState() (*VMState, error) {
	vm.mu.Lock()
	hasIRQChip, hasPIT := vm.hasIRQChip, vm.hasPIT
	vm.mu.Unlock()
	st := &VMState{HasIRQChip: hasIRQChip, HasPIT: hasPIT}
	if hasIRQChip {
		if err := vm.getIRQChip(irqchipPICMaster, unsafe.Pointer(&st.PICMaster), unsafe.Sizeof(st.PICMaster)); err != nil {
			return nil, err
		}
		if err := vm.getIRQChip(irqchipPICSlave, unsafe.Pointer(&st.PICSlave), unsafe.Sizeof(st.PICSlave)); err != nil {
			return nil, err
		}
		if err := vm.getIRQChip(irqchipIOAPIC, unsafe.Pointer(&st.IOAPIC), unsafe.Sizeof(st.IOAPIC)); err != nil {
			return nil, err
		}
	}
	if hasPIT {
		if _, err := ioctlPtr(vm.fd, ioctlGetPIT2, unsafe.Pointer(&st.PIT)); err != nil {
			return nil, fmt.Errorf("KVM_GET_PIT2: %w", err)
		}
	}
	if _, err := ioctlPtr(vm.fd, ioctlGetClock, unsafe.Pointer(&st.Clock)); err != nil {
		return nil, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return st, nil
}

// RestoreState loads a VMState into this VM, which must have the same
// devices (CreateIRQChip / CreatePIT2) as the source. The kvmclock is set to
// exactly the saved value (KVM_SET_CLOCK without KVM_CLOCK_REALTIME), so the
// guest's clock does not count the time the VM was stopped. Restore the
// vCPUs first (their LAPICs and TSCs), then the VM state, then run.
func (vm *VM) RestoreState(st *VMState) error {
	if st == nil {
		return errors.New("restore vm state: nil state")
	}
	vm.mu.Lock()
	hasIRQChip, hasPIT := vm.hasIRQChip, vm.hasPIT
	vm.mu.Unlock()
	if st.HasIRQChip != hasIRQChip || st.HasPIT != hasPIT {
		return fmt.Errorf("restore vm state: saved irqchip=%v pit=%v, this vm irqchip=%v pit=%v",
			st.HasIRQChip, st.HasPIT, hasIRQChip, hasPIT)
	}
	if hasIRQChip {
		if err := vm.setIRQChip(irqchipPICMaster, unsafe.Pointer(&st.PICMaster), unsafe.Sizeof(st.PICMaster)); err != nil {
			return err
		}
		if err := vm.setIRQChip(irqchipPICSlave, unsafe.Pointer(&st.PICSlave), unsafe.Sizeof(st.PICSlave)); err != nil {
			return err
		}
		if err := vm.setIRQChip(irqchipIOAPIC, unsafe.Pointer(&st.IOAPIC), unsafe.Sizeof(st.IOAPIC)); err != nil {
			return err
		}
	}
	if hasPIT {
		pit := st.PIT
		if _, err := ioctlPtr(vm.fd, ioctlSetPIT2, unsafe.Pointer(&pit)); err != nil {
			return fmt.Errorf("KVM_SET_PIT2: %w", err)
		}
	}
	clock := ClockData{Clock: st.Clock.Clock}
	if _, err := ioctlPtr(vm.fd, ioctlSetClock, unsafe.Pointer(&clock)); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK(%d): %w", clock.Clock, err)
	}
	return nil
}

// getIRQChip reads chip id into the size bytes at dst.
func (vm *VM) getIRQChip(id uint32, dst unsafe.Pointer, size uintptr) error {
	arg := irqchipArg{ChipID: id}
	if _, err := ioctlPtr(vm.fd, ioctlGetIRQChip, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_GET_IRQCHIP(chip %d): %w", id, err)
	}
	copy(unsafe.Slice((*byte)(dst), size), arg.Chip[:size])
	return nil
}

// setIRQChip writes the size bytes at src to chip id.
func (vm *VM) setIRQChip(id uint32, src unsafe.Pointer, size uintptr) error {
	arg := irqchipArg{ChipID: id}
	copy(arg.Chip[:size], unsafe.Slice((*byte)(src), size))
	if _, err := ioctlPtr(vm.fd, ioctlSetIRQChip, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP(chip %d): %w", id, err)
	}
	return nil
}
