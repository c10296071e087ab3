package kvm

// Go mirrors of the x86-64 KVM UAPI structures. Field order, sizes and
// padding follow <asm/kvm.h> exactly, so a pointer to one of these can be
// passed to the corresponding ioctl. They hold plain values only (no pointers),
// so they can be copied, compared and serialized freely.

// Regs holds the general-purpose registers, RIP and RFLAGS (struct kvm_regs).
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is a segment register with its hidden descriptor cache (struct kvm_segment).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is a descriptor table register, GDTR or IDTR (struct kvm_dtable).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs holds the special registers as KVM_GET_SREGS reports them (struct kvm_sregs).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	// InterruptBitmap has one bit set for an external interrupt that was
	// pending injection (only without an in-kernel irqchip).
	InterruptBitmap [4]uint64
}

// Sregs2 holds the special registers as KVM_GET_SREGS2 reports them
// (struct kvm_sregs2): no interrupt bitmap, but the PAE PDPTRs.
type Sregs2 struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	Flags                  uint64 // Sregs2FlagPDPTRsValid
	PDPTRs                 [4]uint64
}

// FPU is the legacy x87/SSE state in FXSAVE layout (struct kvm_fpu).
type FPU struct {
	FPR        [8][16]byte
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]byte
	MXCSR      uint32
	_          uint32
}

// MSREntry is one model-specific register (struct kvm_msr_entry).
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// CPUIDEntry is one CPUID leaf/subleaf (struct kvm_cpuid_entry2).
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // CPUIDFlagSignificantIndex etc.
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks a CPUID entry whose Index (ECX input) matters.
const CPUIDFlagSignificantIndex = 1

// LAPICState is the local APIC register page as KVM exposes it (struct
// kvm_lapic_state, 1 KiB). Register r lives at byte offset r (e.g. the ID
// register at 0x20), stored little endian.
type LAPICState [1024]byte

// VCPUEvents holds pending and injected exceptions, interrupts, NMIs, SMIs and
// the interrupt shadow (struct kvm_vcpu_events).
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32 // VCPUEventValid*
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault struct {
		Pending uint8
	}
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// DebugRegs holds DR0-DR3, DR6 and DR7 (struct kvm_debugregs).
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// XCR is one extended control register (struct kvm_xcr).
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRs holds the extended control registers, i.e. XCR0 (struct kvm_xcrs).
type XCRs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [16]XCR
	_      [16]uint64
}

// mpStateArg is struct kvm_mp_state.
type mpStateArg struct {
	State MPState
}

// PICState is the state of one 8259 PIC (struct kvm_pic_state).
type PICState struct {
	LastIRR                uint8
	IRR                    uint8
	IMR                    uint8
	ISR                    uint8
	PriorityAdd            uint8
	IRQBase                uint8
	ReadRegSelect          uint8
	Poll                   uint8
	SpecialMask            uint8
	InitState              uint8
	AutoEOI                uint8
	RotateOnAutoEOI        uint8
	SpecialFullyNestedMode uint8
	Init4                  uint8
	ELCR                   uint8
	ELCRMask               uint8
}

// IOAPICState is the state of the in-kernel IOAPIC (struct kvm_ioapic_state).
// Each redirection table entry is kept as its raw 64-bit value.
type IOAPICState struct {
	BaseAddress uint64
	IORegSel    uint32
	ID          uint32
	IRR         uint32
	_           uint32
	Redirtbl    [24]uint64
}

// irqchipArg is struct kvm_irqchip: a chip id and a 512-byte union.
type irqchipArg struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// PITChannelState is the state of one i8254 channel (struct kvm_pit_channel_state).
type PITChannelState struct {
	Count         uint32
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PITState2 is the state of the in-kernel i8254 (struct kvm_pit_state2).
type PITState2 struct {
	Channels [3]PITChannelState
	Flags    uint32
	_        [9]uint32
}

// ClockData is the kvmclock base of a VM (struct kvm_clock_data).
type ClockData struct {
	Clock    uint64 // guest kvmclock in nanoseconds
	Flags    uint32 // ClockTSCStable, ClockRealtime, ClockHostTSC
	_        uint32
	Realtime uint64 // host CLOCK_REALTIME at the time of Clock, if ClockRealtime
	HostTSC  uint64 // host TSC at the time of Clock, if ClockHostTSC
	_        [4]uint32
}

// Flags of ClockData.
const (
	ClockTSCStable = 1 << 1 // KVM_CLOCK_TSC_STABLE
	ClockRealtime  = 1 << 2 // KVM_CLOCK_REALTIME
	ClockHostTSC   = 1 << 3 // KVM_CLOCK_HOST_TSC
)

// userspaceMemoryRegion is struct kvm_userspace_memory_region.
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// irqLevel is struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// pitConfig is struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// enableCap is struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// dirtyLog is struct kvm_dirty_log.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uintptr
}

// clearDirtyLog is struct kvm_clear_dirty_log.
type clearDirtyLog struct {
	Slot      uint32
	NumPages  uint32
	FirstPage uint64
	Bitmap    uintptr
}

// listHeader is the 8-byte header shared by struct kvm_msrs and struct
// kvm_cpuid2 (count, padding); the entries follow it in the same buffer.
type listHeader struct {
	N uint32
	_ uint32
}

// irqfdArg is struct kvm_irqfd.
type irqfdArg struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

const irqfdFlagDeassign = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN

// ioeventfdArg is struct kvm_ioeventfd.
type ioeventfdArg struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

const (
	ioeventfdFlagDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagPIO       = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	ioeventfdFlagDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
)
