package kvm

import "strconv"

// This file holds the numbers of the KVM userspace API (x86-64) that this
// package uses. The values come from the Linux UAPI headers <linux/kvm.h> and
// <asm/kvm.h>; ioctl numbers are written out literally so that tests can check
// the structure size encoded in each number against the Go type passed with it
// (see layout_test.go).

// APIVersion is the only KVM API version this package speaks
// (KVM_GET_API_VERSION has returned 12 since Linux 2.6.22).
const APIVersion = 12

// ioctl numbers on the /dev/kvm file descriptor.
const (
	ioctlGetAPIVersion     = 0x0000ae00 // KVM_GET_API_VERSION
	ioctlCreateVM          = 0x0000ae01 // KVM_CREATE_VM
	ioctlGetMSRIndexList   = 0xc004ae02 // KVM_GET_MSR_INDEX_LIST (struct kvm_msr_list header)
	ioctlCheckExtension    = 0x0000ae03 // KVM_CHECK_EXTENSION (also valid on a VM fd)
	ioctlGetVCPUMmapSize   = 0x0000ae04 // KVM_GET_VCPU_MMAP_SIZE
	ioctlGetSupportedCPUID = 0xc008ae05 // KVM_GET_SUPPORTED_CPUID (struct kvm_cpuid2 header)
)

// ioctl numbers on a VM file descriptor.
const (
	ioctlCreateVCPU          = 0x0000ae41 // KVM_CREATE_VCPU
	ioctlGetDirtyLog         = 0x4010ae42 // KVM_GET_DIRTY_LOG
	ioctlSetUserMemoryRegion = 0x4020ae46 // KVM_SET_USER_MEMORY_REGION
	ioctlSetTSSAddr          = 0x0000ae47 // KVM_SET_TSS_ADDR
	ioctlSetIdentityMapAddr  = 0x4008ae48 // KVM_SET_IDENTITY_MAP_ADDR
	ioctlCreateIRQChip       = 0x0000ae60 // KVM_CREATE_IRQCHIP
	ioctlIRQLine             = 0x4008ae61 // KVM_IRQ_LINE
	ioctlGetIRQChip          = 0xc208ae62 // KVM_GET_IRQCHIP
	ioctlSetIRQChip          = 0x8208ae63 // KVM_SET_IRQCHIP (historically encoded as _IOR)
	ioctlCreatePIT2          = 0x4040ae77 // KVM_CREATE_PIT2
	ioctlGetPIT2             = 0x8070ae9f // KVM_GET_PIT2
	ioctlSetPIT2             = 0x4070aea0 // KVM_SET_PIT2
	ioctlSetClock            = 0x4030ae7b // KVM_SET_CLOCK
	ioctlGetClock            = 0x8030ae7c // KVM_GET_CLOCK
	ioctlEnableCap           = 0x4068aea3 // KVM_ENABLE_CAP
	ioctlClearDirtyLog       = 0xc018aec0 // KVM_CLEAR_DIRTY_LOG
	ioctlIRQFD               = 0x4020ae76 // KVM_IRQFD
	ioctlIOEventFD           = 0x4040ae79 // KVM_IOEVENTFD
	ioctlSignalMSI           = 0x4020aea5 // KVM_SIGNAL_MSI
)

// ioctl numbers on a vCPU file descriptor.
const (
	ioctlRun           = 0x0000ae80 // KVM_RUN
	ioctlGetRegs       = 0x8090ae81 // KVM_GET_REGS
	ioctlSetRegs       = 0x4090ae82 // KVM_SET_REGS
	ioctlGetSregs      = 0x8138ae83 // KVM_GET_SREGS
	ioctlSetSregs      = 0x4138ae84 // KVM_SET_SREGS
	ioctlGetSregs2     = 0x8140aecc // KVM_GET_SREGS2
	ioctlSetSregs2     = 0x4140aecd // KVM_SET_SREGS2
	ioctlGetMSRs       = 0xc008ae88 // KVM_GET_MSRS (struct kvm_msrs header)
	ioctlSetMSRs       = 0x4008ae89 // KVM_SET_MSRS (struct kvm_msrs header)
	ioctlGetFPU        = 0x81a0ae8c // KVM_GET_FPU
	ioctlSetFPU        = 0x41a0ae8d // KVM_SET_FPU
	ioctlGetLAPIC      = 0x8400ae8e // KVM_GET_LAPIC
	ioctlSetLAPIC      = 0x4400ae8f // KVM_SET_LAPIC
	ioctlSetCPUID2     = 0x4008ae90 // KVM_SET_CPUID2 (struct kvm_cpuid2 header)
	ioctlGetCPUID2     = 0xc008ae91 // KVM_GET_CPUID2 (struct kvm_cpuid2 header)
	ioctlGetMPState    = 0x8004ae98 // KVM_GET_MP_STATE
	ioctlSetMPState    = 0x4004ae99 // KVM_SET_MP_STATE
	ioctlGetVCPUEvents = 0x8040ae9f // KVM_GET_VCPU_EVENTS
	ioctlSetVCPUEvents = 0x4040aea0 // KVM_SET_VCPU_EVENTS
	ioctlGetDebugRegs  = 0x8080aea1 // KVM_GET_DEBUGREGS
	ioctlSetDebugRegs  = 0x4080aea2 // KVM_SET_DEBUGREGS
	ioctlGetXSAVE      = 0x9000aea4 // KVM_GET_XSAVE (4096-byte struct kvm_xsave)
	ioctlSetXSAVE      = 0x5000aea5 // KVM_SET_XSAVE (reads KVM_CAP_XSAVE2 bytes when that is larger)
	ioctlGetXSAVE2     = 0x9000aecf // KVM_GET_XSAVE2 (writes KVM_CAP_XSAVE2 bytes)
	ioctlGetXCRs       = 0x8188aea6 // KVM_GET_XCRS
	ioctlSetXCRs       = 0x4188aea7 // KVM_SET_XCRS
	ioctlKVMClockCtrl  = 0x0000aead // KVM_KVMCLOCK_CTRL
)

// Capability is a KVM_CAP_* number, as passed to KVM_CHECK_EXTENSION.
type Capability int

// Capabilities this package knows by name. The numbers are those of <linux/kvm.h>.
const (
	CapIRQChip                Capability = 0   // KVM_CAP_IRQCHIP
	CapHLT                    Capability = 1   // KVM_CAP_HLT
	CapUserMemory             Capability = 3   // KVM_CAP_USER_MEMORY
	CapSetTSSAddr             Capability = 4   // KVM_CAP_SET_TSS_ADDR
	CapExtCPUID               Capability = 7   // KVM_CAP_EXT_CPUID
	CapNrVCPUs                Capability = 9   // KVM_CAP_NR_VCPUS
	CapNrMemslots             Capability = 10  // KVM_CAP_NR_MEMSLOTS
	CapMPState                Capability = 14  // KVM_CAP_MP_STATE
	CapIRQRouting             Capability = 25  // KVM_CAP_IRQ_ROUTING
	CapIRQFD                  Capability = 32  // KVM_CAP_IRQFD
	CapPIT2                   Capability = 33  // KVM_CAP_PIT2
	CapSetBootCPUID           Capability = 34  // KVM_CAP_SET_BOOT_CPU_ID
	CapPITState2              Capability = 35  // KVM_CAP_PIT_STATE2
	CapIOEventFD              Capability = 36  // KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr     Capability = 37  // KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock            Capability = 39  // KVM_CAP_ADJUST_CLOCK
	CapVCPUEvents             Capability = 41  // KVM_CAP_VCPU_EVENTS
	CapDebugRegs              Capability = 50  // KVM_CAP_DEBUGREGS
	CapXSAVE                  Capability = 55  // KVM_CAP_XSAVE
	CapXCRs                   Capability = 56  // KVM_CAP_XCRS
	CapMaxVCPUs               Capability = 66  // KVM_CAP_MAX_VCPUS
	CapTSCDeadlineTimer       Capability = 72  // KVM_CAP_TSC_DEADLINE_TIMER
	CapKVMClockCtrl           Capability = 76  // KVM_CAP_KVMCLOCK_CTRL
	CapReadonlyMem            Capability = 81  // KVM_CAP_READONLY_MEM
	CapImmediateExit          Capability = 136 // KVM_CAP_IMMEDIATE_EXIT
	CapManualDirtyLogProtect2 Capability = 168 // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
	CapSREGS2                 Capability = 200 // KVM_CAP_SREGS2
	CapXSAVE2                 Capability = 208 // KVM_CAP_XSAVE2
	CapUserMemory2            Capability = 231 // KVM_CAP_USER_MEMORY2
)

var capabilityNames = map[Capability]string{
	CapIRQChip:                "IRQCHIP",
	CapHLT:                    "HLT",
	CapUserMemory:             "USER_MEMORY",
	CapSetTSSAddr:             "SET_TSS_ADDR",
	CapExtCPUID:               "EXT_CPUID",
	CapNrVCPUs:                "NR_VCPUS",
	CapNrMemslots:             "NR_MEMSLOTS",
	CapMPState:                "MP_STATE",
	CapIRQRouting:             "IRQ_ROUTING",
	CapIRQFD:                  "IRQFD",
	CapPIT2:                   "PIT2",
	CapSetBootCPUID:           "SET_BOOT_CPU_ID",
	CapPITState2:              "PIT_STATE2",
	CapIOEventFD:              "IOEVENTFD",
	CapSetIdentityMapAddr:     "SET_IDENTITY_MAP_ADDR",
	CapAdjustClock:            "ADJUST_CLOCK",
	CapVCPUEvents:             "VCPU_EVENTS",
	CapDebugRegs:              "DEBUGREGS",
	CapXSAVE:                  "XSAVE",
	CapXCRs:                   "XCRS",
	CapMaxVCPUs:               "MAX_VCPUS",
	CapTSCDeadlineTimer:       "TSC_DEADLINE_TIMER",
	CapKVMClockCtrl:           "KVMCLOCK_CTRL",
	CapReadonlyMem:            "READONLY_MEM",
	CapImmediateExit:          "IMMEDIATE_EXIT",
	CapManualDirtyLogProtect2: "MANUAL_DIRTY_LOG_PROTECT2",
	CapSREGS2:                 "SREGS2",
	CapXSAVE2:                 "XSAVE2",
	CapUserMemory2:            "USER_MEMORY2",
}

// String returns the capability's name without the KVM_CAP_ prefix, or
// "CAP(n)" for a number this package does not know.
func (c Capability) String() string {
	if name, ok := capabilityNames[c]; ok {
		return name
	}
	return "CAP(" + strconv.Itoa(int(c)) + ")"
}

// RequiredCapabilities lists the capabilities wasmvmm cannot run without, in
// the order CheckCapabilities reports them.
func RequiredCapabilities() []Capability {
	return []Capability{
		CapIRQChip, CapPIT2, CapUserMemory, CapSetTSSAddr, CapExtCPUID,
		CapImmediateExit, CapXSAVE, CapXCRs, CapVCPUEvents, CapDebugRegs,
		CapAdjustClock, CapMPState, CapIRQFD, CapIOEventFD,
	}
}

// Memory region flags for SetUserMemoryRegion.
const (
	// MemLogDirtyPages turns on dirty page logging for the slot (KVM_MEM_LOG_DIRTY_PAGES).
	MemLogDirtyPages MemoryFlags = 1 << 0
	// MemReadonly makes the slot read-only for the guest; guest writes become
	// MMIO exits (KVM_MEM_READONLY, needs CapReadonlyMem).
	MemReadonly MemoryFlags = 1 << 1
)

// MemoryFlags are the flags of a memory slot.
type MemoryFlags uint32

// Flags for KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
const (
	dirtyLogManualProtectEnable = 1 << 0 // KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
	dirtyLogInitiallySet        = 1 << 1 // KVM_DIRTY_LOG_INITIALLY_SET (never used here)
)

// IRQ chip ids for KVM_GET_IRQCHIP / KVM_SET_IRQCHIP.
const (
	irqchipPICMaster = 0 // KVM_IRQCHIP_PIC_MASTER
	irqchipPICSlave  = 1 // KVM_IRQCHIP_PIC_SLAVE
	irqchipIOAPIC    = 2 // KVM_IRQCHIP_IOAPIC
)

// MPState is a vCPU's multiprocessing state (KVM_MP_STATE_*).
type MPState uint32

// MP states defined for x86.
const (
	MPStateRunnable      MPState = 0 // KVM_MP_STATE_RUNNABLE
	MPStateUninitialized MPState = 1 // KVM_MP_STATE_UNINITIALIZED: an AP waiting for INIT
	MPStateInitReceived  MPState = 2 // KVM_MP_STATE_INIT_RECEIVED: waiting for SIPI
	MPStateHalted        MPState = 3 // KVM_MP_STATE_HALTED
	MPStateSIPIReceived  MPState = 4 // KVM_MP_STATE_SIPI_RECEIVED
)

// String returns the state's name.
func (s MPState) String() string {
	switch s {
	case MPStateRunnable:
		return "RUNNABLE"
	case MPStateUninitialized:
		return "UNINITIALIZED"
	case MPStateInitReceived:
		return "INIT_RECEIVED"
	case MPStateHalted:
		return "HALTED"
	case MPStateSIPIReceived:
		return "SIPI_RECEIVED"
	}
	return "MP_STATE(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Flags of the vCPU events structure (KVM_VCPUEVENT_VALID_*). SaveState
// records the flags KVM reports; RestoreState passes them back so that KVM
// loads every field it saved.
const (
	VCPUEventValidNMIPending  = 0x01
	VCPUEventValidSIPIVector  = 0x02
	VCPUEventValidShadow      = 0x04
	VCPUEventValidSMM         = 0x08
	VCPUEventValidPayload     = 0x10
	VCPUEventValidTripleFault = 0x20
)

// Sregs2FlagPDPTRsValid marks the PDPTRs of SpecialRegisters as valid (KVM_SREGS2_FLAGS_PDPTRS_VALID).
const Sregs2FlagPDPTRsValid = 1

// Well-known MSR numbers used by the state code.
const (
	MSRIA32TSC         = 0x00000010 // IA32_TIME_STAMP_COUNTER
	MSRIA32APICBase    = 0x0000001b // IA32_APIC_BASE (saved through sregs)
	MSRIA32TSCDeadline = 0x000006e0 // IA32_TSC_DEADLINE: must be written after the LAPIC
	MSRKVMSystemTime   = 0x4b564d01 // MSR_KVM_SYSTEM_TIME_NEW (kvmclock)
	MSRKVMWallClock    = 0x4b564d00 // MSR_KVM_WALL_CLOCK_NEW
)

const pageSize = 4096
