package kvm

import (
	"strconv"
	"unsafe"
)

// ExitReason is the reason KVM_RUN returned to userspace (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons that can occur on x86.
const (
	ExitUnknown       ExitReason = 0  // KVM_EXIT_UNKNOWN: see Exit.HardwareExitReason
	ExitException     ExitReason = 1  // KVM_EXIT_EXCEPTION
	ExitIO            ExitReason = 2  // KVM_EXIT_IO: see Exit.IO
	ExitHypercall     ExitReason = 3  // KVM_EXIT_HYPERCALL
	ExitDebug         ExitReason = 4  // KVM_EXIT_DEBUG
	ExitHLT           ExitReason = 5  // KVM_EXIT_HLT (only without an in-kernel irqchip)
	ExitMMIO          ExitReason = 6  // KVM_EXIT_MMIO: see Exit.MMIO
	ExitIRQWindowOpen ExitReason = 7  // KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown      ExitReason = 8  // KVM_EXIT_SHUTDOWN: triple fault; reset the vCPU before running it again
	ExitFailEntry     ExitReason = 9  // KVM_EXIT_FAIL_ENTRY: see Exit.FailEntry
	ExitIntr          ExitReason = 10 // KVM_EXIT_INTR: KVM_RUN was interrupted; run again (see Exit.Kicked)
	ExitSetTPR        ExitReason = 11 // KVM_EXIT_SET_TPR
	ExitTPRAccess     ExitReason = 12 // KVM_EXIT_TPR_ACCESS
	ExitNMI           ExitReason = 16 // KVM_EXIT_NMI
	ExitInternalError ExitReason = 17 // KVM_EXIT_INTERNAL_ERROR: see Exit.Internal
	ExitSystemEvent   ExitReason = 24 // KVM_EXIT_SYSTEM_EVENT: see Exit.SystemEvent
	ExitIOAPICEOI     ExitReason = 26 // KVM_EXIT_IOAPIC_EOI (split irqchip)
	ExitHyperV        ExitReason = 27 // KVM_EXIT_HYPERV
	ExitX86RDMSR      ExitReason = 29 // KVM_EXIT_X86_RDMSR
	ExitX86WRMSR      ExitReason = 30 // KVM_EXIT_X86_WRMSR
	ExitDirtyRingFull ExitReason = 31 // KVM_EXIT_DIRTY_RING_FULL
	ExitAPResetHold   ExitReason = 32 // KVM_EXIT_AP_RESET_HOLD
	ExitX86BusLock    ExitReason = 33 // KVM_EXIT_X86_BUS_LOCK
	ExitNotify        ExitReason = 37 // KVM_EXIT_NOTIFY
)

var exitReasonNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO", ExitHypercall: "HYPERCALL",
	ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR", ExitSetTPR: "SET_TPR",
	ExitTPRAccess: "TPR_ACCESS", ExitNMI: "NMI", ExitInternalError: "INTERNAL_ERROR",
	ExitSystemEvent: "SYSTEM_EVENT", ExitIOAPICEOI: "IOAPIC_EOI", ExitHyperV: "HYPERV",
	ExitX86RDMSR: "X86_RDMSR", ExitX86WRMSR: "X86_WRMSR", ExitDirtyRingFull: "DIRTY_RING_FULL",
	ExitAPResetHold: "AP_RESET_HOLD", ExitX86BusLock: "X86_BUS_LOCK", ExitNotify: "NOTIFY",
}

// String returns the reason's name without the KVM_EXIT_ prefix.
func (r ExitReason) String() string {
	if name, ok := exitReasonNames[r]; ok {
		return name
	}
	return "EXIT(" + strconv.FormatUint(uint64(r), 10) + ")"
}

// IODirection is the direction of a port I/O exit.
type IODirection uint8

// Port I/O directions.
const (
	IOIn  IODirection = 0 // KVM_EXIT_IO_IN: the guest reads; fill Data
	IOOut IODirection = 1 // KVM_EXIT_IO_OUT: the guest writes; Data holds the bytes
)

// IOExit describes a port I/O exit.
type IOExit struct {
	Port      uint16
	Direction IODirection
	Size      uint8  // bytes per access: 1, 2 or 4
	Count     uint32 // accesses (more than 1 for rep ins/outs)
	// Data aliases the vCPU's kvm_run area: Size*Count bytes, access i at
	// Data[i*Size:]. For IOIn the handler writes the values the guest reads
	// into it. It is valid until the next Run.
	Data []byte
}

// MMIOExit describes a memory-mapped I/O exit.
type MMIOExit struct {
	Addr    uint64 // guest-physical address
	IsWrite bool
	// Data aliases the kvm_run area (length 1 to 8). For a write it holds the
	// value the guest wrote; for a read the handler writes the value into it.
	// It is valid until the next Run.
	Data []byte
}

// InternalErrorExit describes a KVM_EXIT_INTERNAL_ERROR.
type InternalErrorExit struct {
	Suberror uint32   // InternalErrorEmulation etc.
	Data     []uint64 // copy of the extra data KVM provided (ndata words)
}

// Suberrors of InternalErrorExit.
const (
	InternalErrorEmulation        = 1 // KVM_INTERNAL_ERROR_EMULATION: an instruction could not be emulated
	InternalErrorSimulEx          = 2 // KVM_INTERNAL_ERROR_SIMUL_EX
	InternalErrorDeliveryEv       = 3 // KVM_INTERNAL_ERROR_DELIVERY_EV
	InternalErrorUnexpectedReason = 4 // KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
)

// FailEntryExit describes a KVM_EXIT_FAIL_ENTRY: the hardware refused to
// enter the guest, usually because of an invalid register state.
type FailEntryExit struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

// SystemEventExit describes a KVM_EXIT_SYSTEM_EVENT.
type SystemEventExit struct {
	Type uint32   // SystemEventShutdown, SystemEventReset, ...
	Data []uint64 // copy of the ndata words
}

// System event types.
const (
	SystemEventShutdown = 1 // KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    = 2 // KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    = 3 // KVM_SYSTEM_EVENT_CRASH
	SystemEventWakeup   = 4 // KVM_SYSTEM_EVENT_WAKEUP
	SystemEventSuspend  = 5 // KVM_SYSTEM_EVENT_SUSPEND
)

// Exit is a typed view of why KVM_RUN returned. Only the field matching
// Reason is filled in.
type Exit struct {
	Reason ExitReason

	IO          IOExit            // Reason == ExitIO
	MMIO        MMIOExit          // Reason == ExitMMIO
	Internal    InternalErrorExit // Reason == ExitInternalError
	FailEntry   FailEntryExit     // Reason == ExitFailEntry
	SystemEvent SystemEventExit   // Reason == ExitSystemEvent
	// HardwareExitReason is set for ExitUnknown.
	HardwareExitReason uint64

	// Kicked is set with ExitIntr when the interruption was requested by
	// (*VCPU).Kick. An ExitIntr without Kicked comes from an unrelated signal
	// (Go's runtime sends SIGURG for preemption) or from KVM_RUN's EAGAIN (an
	// AP woken by INIT/SIPI): simply run again.
	Kicked bool
}

// Interrupted reports whether KVM_RUN was interrupted before the guest did
// anything that needs handling (EINTR, EAGAIN, or KVM_EXIT_INTR); the caller
// checks Kicked for its own stop requests and otherwise runs again.
func (e *Exit) Interrupted() bool { return e.Reason == ExitIntr }

// runHeader is the fixed part of struct kvm_run, up to the exit union at
// offset 32, followed by the 256-byte union.
type runHeader struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
	Union                      [256]byte
}

// runIO is the io member of the kvm_run union.
type runIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

// runMMIO is the mmio member of the kvm_run union.
type runMMIO struct {
	PhysAddr uint64
	Data     [8]byte
	Len      uint32
	IsWrite  uint8
}

// runWords is the internal / system_event layout: two u32 then u64 data.
type runWords struct {
	First uint32 // suberror or type
	NData uint32
	Data  [16]uint64
}

// runFailEntry is the fail_entry member.
type runFailEntry struct {
	Reason uint64
	CPU    uint32
}

// decodeExit builds the typed view of the exit in the kvm_run area run.
func decodeExit(run []byte) Exit {
	h := (*runHeader)(unsafe.Pointer(&run[0]))
	e := Exit{Reason: ExitReason(h.ExitReason)}
	u := unsafe.Pointer(&h.Union[0])
	switch e.Reason {
	case ExitIO:
		io := (*runIO)(u)
		n := uint64(io.Size) * uint64(io.Count)
		e.IO = IOExit{Port: io.Port, Direction: IODirection(io.Direction), Size: io.Size, Count: io.Count}
		if io.DataOffset <= uint64(len(run)) && n <= uint64(len(run))-io.DataOffset {
			e.IO.Data = run[io.DataOffset : io.DataOffset+n : io.DataOffset+n]
		}
	case ExitMMIO:
		m := (*runMMIO)(u)
		n := m.Len
		if n > 8 {
			n = 8
		}
		e.MMIO = MMIOExit{Addr: m.PhysAddr, IsWrite: m.IsWrite != 0, Data: m.Data[:n:n]}
	case ExitInternalError:
		w := (*runWords)(u)
		e.Internal = InternalErrorExit{Suberror: w.First, Data: copyWords(w)}
	case ExitSystemEvent:
		w := (*runWords)(u)
		e.SystemEvent = SystemEventExit{Type: w.First, Data: copyWords(w)}
	case ExitFailEntry:
		f := (*runFailEntry)(u)
		e.FailEntry = FailEntryExit{HardwareEntryFailureReason: f.Reason, CPU: f.CPU}
	case ExitUnknown:
		e.HardwareExitReason = *(*uint64)(u)
	}
	return e
}

func copyWords(w *runWords) []uint64 {
	n := int(w.NData)
	if n > len(w.Data) {
		n = len(w.Data)
	}
	return append([]uint64(nil), w.Data[:n]...)
}
