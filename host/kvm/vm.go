package kvm

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Guest-physical addresses CreateVM reserves for KVM's own use. Intel VT-x
// needs them to run real-mode and non-paged protected-mode guest code without
// "unrestricted guest" support; other hosts accept and ignore them. The
// machine's memory map must keep the range IdentityMapAddr..TSSAddr+3 pages
// (0xfffbc000-0xfffbffff) free of RAM and devices and report it as reserved.
const (
	// TSSAddr is the base of the three pages passed to KVM_SET_TSS_ADDR.
	TSSAddr = 0xfffbd000
	// IdentityMapAddr is the page passed to KVM_SET_IDENTITY_MAP_ADDR (just below the TSS).
	IdentityMapAddr = 0xfffbc000
)

// VM is a KVM virtual machine. Its methods are safe for concurrent use.
type VM struct {
	sys                *System
	fd                 int
	manualDirtyProtect bool
	xsaveSize          int
	hasSregs2          bool
	hasXSAVE2          bool

	mu         sync.Mutex
	slots      map[uint32]memorySlot
	hasIRQChip bool
	hasPIT     bool
	msrIndices []uint32
}

// memorySlot remembers a slot's geometry and keeps its backing memory referenced.
type memorySlot struct {
	gpa   uint64
	mem   []byte
	flags MemoryFlags
}

// CreateVM creates a VM, sets its TSS (TSSAddr) and identity-map
// (IdentityMapAddr, when the host has CapSetIdentityMapAddr) addresses, and
// enables manual dirty-log protection when the host has
// CapManualDirtyLogProtect2 (see ManualDirtyLogProtect). The VM has no
// interrupt controller until CreateIRQChip and no PIT until CreatePIT2.
func (s *System) CreateVM() (*VM, error) {
	fdr, err := ioctl(s.fd, ioctlCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm := &VM{sys: s, fd: int(fdr), slots: make(map[uint32]memorySlot), xsaveSize: 4096}
	unix.CloseOnExec(vm.fd)
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, TSSAddr); err != nil {
		vm.Close()
		return nil, fmt.Errorf("KVM_SET_TSS_ADDR(%#x): %w", TSSAddr, err)
	}
	if vm.HasCapability(CapSetIdentityMapAddr) {
		addr := uint64(IdentityMapAddr)
		if _, err := ioctlPtr(vm.fd, ioctlSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
			vm.Close()
			return nil, fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR(%#x): %w", addr, err)
		}
	}
	if vm.HasCapability(CapManualDirtyLogProtect2) {
		// Manual protection without KVM_DIRTY_LOG_INITIALLY_SET: a new
		// dirty-logged slot starts all clean, as with automatic protection.
		if err := vm.EnableCapability(CapManualDirtyLogProtect2, dirtyLogManualProtectEnable); err != nil {
			vm.Close()
			return nil, err
		}
		vm.manualDirtyProtect = true
	}
	if v, err := vm.CapabilityValue(CapXSAVE2); err == nil && v > vm.xsaveSize {
		vm.xsaveSize = v
	}
	vm.hasSregs2 = vm.HasCapability(CapSREGS2)
	vm.hasXSAVE2 = vm.HasCapability(CapXSAVE2)
	return vm, nil
}

// Close closes the VM file descriptor. Close the VM's vCPUs first; memory
// passed to SetUserMemoryRegion stays owned by the caller.
func (vm *VM) Close() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	vm.slots = nil
	if err != nil {
		return fmt.Errorf("close vm: %w", err)
	}
	return nil
}

// CapabilityValue returns KVM_CHECK_EXTENSION's answer for c on this VM
// (some capabilities, e.g. CapXSAVE2's buffer size, are per VM).
func (vm *VM) CapabilityValue(c Capability) (int, error) {
	r, err := ioctl(vm.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("vm KVM_CHECK_EXTENSION(%s): %w", c, err)
	}
	return int(r), nil
}

// HasCapability reports whether this VM supports c.
func (vm *VM) HasCapability(c Capability) bool {
	v, err := vm.CapabilityValue(c)
	return err == nil && v > 0
}

// EnableCapability enables c on the VM with the given arguments (KVM_ENABLE_CAP).
func (vm *VM) EnableCapability(c Capability, args ...uint64) error {
	if len(args) > 4 {
		return fmt.Errorf("KVM_ENABLE_CAP(%s): %d arguments, at most 4", c, len(args))
	}
	arg := enableCap{Cap: uint32(c)}
	copy(arg.Args[:], args)
	if _, err := ioctlPtr(vm.fd, ioctlEnableCap, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP(%s): %w", c, err)
	}
	return nil
}

// XSAVESize is the size in bytes of a vCPU's XSAVE area in this VM (4096
// unless KVM_CAP_XSAVE2 reports more).
func (vm *VM) XSAVESize() int { return vm.xsaveSize }

// CreateIRQChip creates the in-kernel interrupt controllers: two 8259 PICs,
// an IOAPIC (GSIs 0-23) and a local APIC per vCPU. Call it before CreateVCPU.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, ioctlCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	vm.mu.Lock()
	vm.hasIRQChip = true
	vm.mu.Unlock()
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT on ports 0x40-0x43 (its IRQ 0
// goes to the in-kernel irqchip, so call CreateIRQChip first). The flags are
// 0: the PC speaker port 0x61 is left to userspace.
func (vm *VM) CreatePIT2() error {
	var cfg pitConfig
	if _, err := ioctlPtr(vm.fd, ioctlCreatePIT2, unsafe.Pointer(&cfg)); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	vm.mu.Lock()
	vm.hasPIT = true
	vm.mu.Unlock()
	return nil
}

// IRQLine sets the level of the interrupt line irq (a GSI: 0-15 reach the
// PICs and the IOAPIC, 16-23 only the IOAPIC). For an edge-triggered
// interrupt, raise then lower the line.
func (vm *VM) IRQLine(irq uint32, level bool) error {
	arg := irqLevel{IRQ: irq}
	if level {
		arg.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, ioctlIRQLine, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE(irq %d, level %v): %w", irq, level, err)
	}
	return nil
}

// SetUserMemoryRegion maps mem at guest-physical address gpa as memory slot
// slot, or changes the slot's flags when it exists already with the same
// geometry. mem must start on a page boundary and be a whole number of pages
// (memory from mmap, e.g. of a memfd, qualifies); it must stay mapped until
// the slot is deleted or the VM closed. Flags: MemLogDirtyPages, MemReadonly.
func (vm *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem []byte, flags MemoryFlags) error {
	if len(mem) == 0 || len(mem)%pageSize != 0 {
		return fmt.Errorf("memory slot %d: size %#x is not a positive multiple of %d", slot, len(mem), pageSize)
	}
	addr := uintptr(unsafe.Pointer(&mem[0]))
	if addr%pageSize != 0 || gpa%pageSize != 0 {
		return fmt.Errorf("memory slot %d: host address %#x or guest address %#x not page aligned", slot, addr, gpa)
	}
	region := userspaceMemoryRegion{
		Slot: slot, Flags: uint32(flags), GuestPhysAddr: gpa,
		MemorySize: uint64(len(mem)), UserspaceAddr: uint64(addr),
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if _, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(&region)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION(slot %d, gpa %#x, size %#x, flags %#x): %w",
			slot, gpa, len(mem), flags, err)
	}
	vm.slots[slot] = memorySlot{gpa: gpa, mem: mem, flags: flags}
	return nil
}

// DeleteMemoryRegion removes memory slot slot from the guest's address space.
func (vm *VM) DeleteMemoryRegion(slot uint32) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	old, ok := vm.slots[slot]
	if !ok {
		return fmt.Errorf("delete memory slot %d: no such slot", slot)
	}
	region := userspaceMemoryRegion{Slot: slot, GuestPhysAddr: old.gpa}
	if _, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(&region)); err != nil {
		return fmt.Errorf("delete memory slot %d: %w", slot, err)
	}
	delete(vm.slots, slot)
	return nil
}

// IRQFD makes every write to eventfd raise GSI gsi (KVM_IRQFD). The irqchip
// must exist.
func (vm *VM) IRQFD(eventfd int, gsi uint32) error {
	arg := irqfdArg{FD: uint32(eventfd), GSI: gsi}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_IRQFD(fd %d, gsi %d): %w", eventfd, gsi, err)
	}
	return nil
}

// RemoveIRQFD undoes IRQFD.
func (vm *VM) RemoveIRQFD(eventfd int, gsi uint32) error {
	arg := irqfdArg{FD: uint32(eventfd), GSI: gsi, Flags: irqfdFlagDeassign}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign(fd %d, gsi %d): %w", eventfd, gsi, err)
	}
	return nil
}

// IOEventFD makes guest writes of length bytes (1, 2, 4 or 8; 0 matches any
// length for MMIO) to addr signal eventfd in the kernel instead of exiting to
// userspace. pio selects port I/O instead of MMIO. With datamatch non-nil,
// only writes of that value match.
func (vm *VM) IOEventFD(eventfd int, addr uint64, length uint32, pio bool, datamatch *uint64) error {
	return vm.ioeventfd(eventfd, addr, length, pio, datamatch, false)
}

// RemoveIOEventFD undoes IOEventFD; the arguments must be the same.
func (vm *VM) RemoveIOEventFD(eventfd int, addr uint64, length uint32, pio bool, datamatch *uint64) error {
	return vm.ioeventfd(eventfd, addr, length, pio, datamatch, true)
}

func (vm *VM) ioeventfd(eventfd int, addr uint64, length uint32, pio bool, datamatch *uint64, deassign bool) error {
	arg := ioeventfdArg{Addr: addr, Len: length, FD: int32(eventfd)}
	if datamatch != nil {
		arg.Datamatch = *datamatch
		arg.Flags |= ioeventfdFlagDatamatch
	}
	if pio {
		arg.Flags |= ioeventfdFlagPIO
	}
	if deassign {
		arg.Flags |= ioeventfdFlagDeassign
	}
	if _, err := ioctlPtr(vm.fd, ioctlIOEventFD, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD(fd %d, addr %#x, len %d, pio %v, deassign %v): %w",
			eventfd, addr, length, pio, deassign, err)
	}
	return nil
}

// msrList returns the device's MSR index list, read once per VM.
func (vm *VM) msrList() ([]uint32, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.msrIndices == nil {
		list, err := vm.sys.MSRIndexList()
		if err != nil {
			return nil, err
		}
		vm.msrIndices = list
	}
	return vm.msrIndices, nil
}
