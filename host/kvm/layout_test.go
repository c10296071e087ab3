package kvm

import (
	"errors"
	"strings"
	"testing"
	"unsafe"
)

// ioctlSize extracts the argument size encoded in an ioctl number (_IOC_SIZE).
func ioctlSize(req uintptr) uintptr { return (req >> 16) & 0x3fff }

func TestStructSizesMatchIoctlNumbers(t *testing.T) {
	cases := []struct {
		name string
		req  uintptr
		size uintptr
	}{
		{"KVM_GET_MSR_INDEX_LIST", ioctlGetMSRIndexList, 4},
		{"KVM_GET_SUPPORTED_CPUID", ioctlGetSupportedCPUID, unsafe.Sizeof(listHeader{})},
		{"KVM_GET_DIRTY_LOG", ioctlGetDirtyLog, unsafe.Sizeof(dirtyLog{})},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, unsafe.Sizeof(userspaceMemoryRegion{})},
		{"KVM_SET_IDENTITY_MAP_ADDR", ioctlSetIdentityMapAddr, 8},
		{"KVM_IRQ_LINE", ioctlIRQLine, unsafe.Sizeof(irqLevel{})},
		{"KVM_GET_IRQCHIP", ioctlGetIRQChip, unsafe.Sizeof(irqchipArg{})},
		{"KVM_SET_IRQCHIP", ioctlSetIRQChip, unsafe.Sizeof(irqchipArg{})},
		{"KVM_CREATE_PIT2", ioctlCreatePIT2, unsafe.Sizeof(pitConfig{})},
		{"KVM_GET_PIT2", ioctlGetPIT2, unsafe.Sizeof(PITState2{})},
		{"KVM_SET_PIT2", ioctlSetPIT2, unsafe.Sizeof(PITState2{})},
		{"KVM_GET_CLOCK", ioctlGetClock, unsafe.Sizeof(ClockData{})},
		{"KVM_SET_CLOCK", ioctlSetClock, unsafe.Sizeof(ClockData{})},
		{"KVM_ENABLE_CAP", ioctlEnableCap, unsafe.Sizeof(enableCap{})},
		{"KVM_CLEAR_DIRTY_LOG", ioctlClearDirtyLog, unsafe.Sizeof(clearDirtyLog{})},
		{"KVM_IRQFD", ioctlIRQFD, unsafe.Sizeof(irqfdArg{})},
		{"KVM_IOEVENTFD", ioctlIOEventFD, unsafe.Sizeof(ioeventfdArg{})},
		{"KVM_GET_REGS", ioctlGetRegs, unsafe.Sizeof(Regs{})},
		{"KVM_SET_REGS", ioctlSetRegs, unsafe.Sizeof(Regs{})},
		{"KVM_GET_SREGS", ioctlGetSregs, unsafe.Sizeof(Sregs{})},
		{"KVM_SET_SREGS", ioctlSetSregs, unsafe.Sizeof(Sregs{})},
		{"KVM_GET_SREGS2", ioctlGetSregs2, unsafe.Sizeof(Sregs2{})},
		{"KVM_SET_SREGS2", ioctlSetSregs2, unsafe.Sizeof(Sregs2{})},
		{"KVM_GET_MSRS", ioctlGetMSRs, unsafe.Sizeof(listHeader{})},
		{"KVM_SET_MSRS", ioctlSetMSRs, unsafe.Sizeof(listHeader{})},
		{"KVM_GET_FPU", ioctlGetFPU, unsafe.Sizeof(FPU{})},
		{"KVM_SET_FPU", ioctlSetFPU, unsafe.Sizeof(FPU{})},
		{"KVM_GET_LAPIC", ioctlGetLAPIC, unsafe.Sizeof(LAPICState{})},
		{"KVM_SET_LAPIC", ioctlSetLAPIC, unsafe.Sizeof(LAPICState{})},
		{"KVM_SET_CPUID2", ioctlSetCPUID2, unsafe.Sizeof(listHeader{})},
		{"KVM_GET_CPUID2", ioctlGetCPUID2, unsafe.Sizeof(listHeader{})},
		{"KVM_GET_MP_STATE", ioctlGetMPState, unsafe.Sizeof(mpStateArg{})},
		{"KVM_SET_MP_STATE", ioctlSetMPState, unsafe.Sizeof(mpStateArg{})},
		{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvents, unsafe.Sizeof(VCPUEvents{})},
		{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvents, unsafe.Sizeof(VCPUEvents{})},
		{"KVM_GET_DEBUGREGS", ioctlGetDebugRegs, unsafe.Sizeof(DebugRegs{})},
		{"KVM_SET_DEBUGREGS", ioctlSetDebugRegs, unsafe.Sizeof(DebugRegs{})},
		{"KVM_GET_XSAVE", ioctlGetXSAVE, 4096},
		{"KVM_SET_XSAVE", ioctlSetXSAVE, 4096},
		{"KVM_GET_XSAVE2", ioctlGetXSAVE2, 4096},
		{"KVM_GET_XCRS", ioctlGetXCRs, unsafe.Sizeof(XCRs{})},
		{"KVM_SET_XCRS", ioctlSetXCRs, unsafe.Sizeof(XCRs{})},
	}
	for _, c := range cases {
		if got := ioctlSize(c.req); got != c.size {
			t.Errorf("%s (%#x) encodes size %d, Go type has %d", c.name, c.req, got, c.size)
		}
	}
}

func TestStructLayoutDetails(t *testing.T) {
	// Sizes and offsets from <linux/kvm.h> that no ioctl number encodes.
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"sizeof kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"sizeof kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"sizeof kvm_pic_state", unsafe.Sizeof(PICState{}), 16},
		{"sizeof kvm_ioapic_state", unsafe.Sizeof(IOAPICState{}), 216},
		{"sizeof kvm_pit_channel_state", unsafe.Sizeof(PITChannelState{}), 24},
		{"kvm_run exit union offset", unsafe.Offsetof(runHeader{}.Union), 32},
		{"kvm_run header+union", unsafe.Sizeof(runHeader{}), 32 + 256},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(VCPUEvents{}.ExceptionPayload), 56},
		{"kvm_sregs2.flags", unsafe.Offsetof(Sregs2{}.Flags), 280},
		{"kvm_run io.data_offset", unsafe.Offsetof(runIO{}.DataOffset), 8},
		{"kvm_run mmio.len", unsafe.Offsetof(runMMIO{}.Len), 16},
		{"kvm_run internal.data", unsafe.Offsetof(runWords{}.Data), 8},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestCheckCapabilitiesNamesEachMissing(t *testing.T) {
	have := map[Capability]bool{}
	for _, c := range RequiredCapabilities() {
		have[c] = true
	}
	has := func(c Capability) bool { return have[c] }
	if err := checkCapabilities(RequiredCapabilities(), has); err != nil {
		t.Fatalf("all present: %v", err)
	}
	delete(have, CapPIT2)
	delete(have, CapXCRs)
	delete(have, CapImmediateExit)
	err := checkCapabilities(RequiredCapabilities(), has)
	var missing *MissingCapabilitiesError
	if !errors.As(err, &missing) {
		t.Fatalf("error %v is not a *MissingCapabilitiesError", err)
	}
	want := "kvm: missing required capabilities: KVM_CAP_PIT2, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_XCRS"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err.Error(), want)
	}
	if len(missing.Missing) != 3 {
		t.Errorf("Missing = %v, want 3 entries", missing.Missing)
	}
	for _, c := range RequiredCapabilities() {
		if strings.HasPrefix(c.String(), "CAP(") {
			t.Errorf("required capability %d has no name", int(c))
		}
	}
	if got := Capability(9999).String(); got != "CAP(9999)" {
		t.Errorf("unknown capability name = %q", got)
	}
}
