package migration

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unsafe"

	"wasmvmm/abi"
	"wasmvmm/host/kvm"
	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// Host-side state is described with the same schema model as plugin state:
// each section is a Go struct whose memory is the store, and whose schema is
// derived from the struct's layout by reflection (exported fields only;
// padding is not sent). Integers are little endian in memory and big endian
// on the wire, as for plugins.

// Limits of the fixed-size host sections.
const (
	maxXSAVE = 8192 // bytes of XSAVE area (KVM_GET_XSAVE2 gives 4096 on these hosts)
	maxMSRs  = 160  // MSRs from the host's index list (40 on these hosts)
)

// cpuSection is the "cpu" section of one vCPU.
type cpuSection struct {
	Regs            kvm.Regs
	Sregs           kvm.Sregs2
	InterruptBitmap [4]uint64
	FPU             kvm.FPU
	XSAVELen        uint32
	XSAVE           [maxXSAVE]byte
	XCRs            kvm.XCRs
	LAPIC           [len(kvm.LAPICState{})]byte
	NMSRs           uint32
	MSRs            [maxMSRs]kvm.MSREntry
	Events          kvm.VCPUEvents
	MPState         uint32
	DebugRegs       kvm.DebugRegs
}

// vmSection is the "kvm-vm" section: in-kernel irqchip, PIT and kvmclock.
type vmSection struct {
	HasIRQChip bool
	PICMaster  kvm.PICState
	PICSlave   kvm.PICState
	IOAPIC     kvm.IOAPICState
	HasPIT     bool
	PIT        kvm.PITState2
	Clock      kvm.ClockData
}

// machineSection is "wasmvmm-machine": the VM clock and the ACPI PM block.
type machineSection struct {
	ClockNS  int64
	PMStatus uint16
	PMEnable uint16
	PMCnt    uint16
}

// globalSection is QEMU's "globalstate": the run state the source had, so
// the destination resumes only a live guest.
type globalSection struct {
	Size     uint32
	RunState [100]byte
}

// hostState holds the host sections of one machine and converts between
// them and machine.CPUState.
type hostState struct {
	cpus    []*cpuSection
	vm      vmSection
	mach    machineSection
	global  globalSection
	devices []vmstate.Device
}

// newHostState builds the host sections for a machine with n vCPUs.
func newHostState(n int) (*hostState, error) {
	h := &hostState{}
	add := func(name string, id int32, version uint32, ptr any) error {
		sec, store, err := structSection(name, ptr)
		if err != nil {
			return err
		}
		sec.InstanceID, sec.VersionID, sec.MinimumVersionID = id, version, version
		h.devices = append(h.devices, vmstate.Device{Name: name, InstanceID: id, Schema: sec, Store: store})
		return nil
	}
	if err := add("globalstate", 0, 1, &h.global); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		c := &cpuSection{}
		h.cpus = append(h.cpus, c)
		if err := add("cpu", int32(i), 1, c); err != nil {
			return nil, err
		}
	}
	if err := add("kvm-vm", 0, 1, &h.vm); err != nil {
		return nil, err
	}
	if err := add("wasmvmm-machine", 0, 1, &h.mach); err != nil {
		return nil, err
	}
	return h, nil
}

// fill copies a machine state into the sections.
func (h *hostState) fill(st *machine.CPUState) error {
	if len(st.VCPUs) != len(h.cpus) {
		return fmt.Errorf("%d vCPU states for %d sections", len(st.VCPUs), len(h.cpus))
	}
	for i, v := range st.VCPUs {
		c := h.cpus[i]
		*c = cpuSection{Regs: v.Regs, Sregs: v.Sregs, InterruptBitmap: v.InterruptBitmap, FPU: v.FPU,
			XCRs: v.XCRs, LAPIC: v.LAPIC, Events: v.Events, MPState: uint32(v.MPState), DebugRegs: v.DebugRegs}
		if len(v.XSAVE) > maxXSAVE {
			return fmt.Errorf("vcpu %d: XSAVE area of %d bytes exceeds %d", i, len(v.XSAVE), maxXSAVE)
		}
		c.XSAVELen = uint32(copy(c.XSAVE[:], v.XSAVE))
		if len(v.MSRs) > maxMSRs {
			return fmt.Errorf("vcpu %d: %d MSRs exceed %d", i, len(v.MSRs), maxMSRs)
		}
		c.NMSRs = uint32(copy(c.MSRs[:], v.MSRs))
	}
	vm := st.VM
	h.vm = vmSection{HasIRQChip: vm.HasIRQChip, PICMaster: vm.PICMaster, PICSlave: vm.PICSlave, IOAPIC: vm.IOAPIC, HasPIT: vm.HasPIT, PIT: vm.PIT, Clock: vm.Clock}
	h.mach = machineSection{ClockNS: st.ClockNS, PMStatus: st.PMStatus, PMEnable: st.PMEnable, PMCnt: st.PMCnt}
	h.global = globalSection{}
	h.global.Size = uint32(copy(h.global.RunState[:], st.RunState))
	return nil
}

// state converts loaded sections back into a machine state.
func (h *hostState) state() (*machine.CPUState, error) {
	st := &machine.CPUState{VM: &kvm.VMState{
		HasIRQChip: h.vm.HasIRQChip, PICMaster: h.vm.PICMaster, PICSlave: h.vm.PICSlave, IOAPIC: h.vm.IOAPIC,
		HasPIT: h.vm.HasPIT, PIT: h.vm.PIT, Clock: h.vm.Clock,
	}, ClockNS: h.mach.ClockNS, PMStatus: h.mach.PMStatus, PMEnable: h.mach.PMEnable, PMCnt: h.mach.PMCnt}
	for i, c := range h.cpus {
		if c.XSAVELen > maxXSAVE || c.NMSRs > maxMSRs {
			return nil, fmt.Errorf("cpu %d: XSAVE length %d or MSR count %d out of range", i, c.XSAVELen, c.NMSRs)
		}
		st.VCPUs = append(st.VCPUs, &kvm.VCPUState{
			ID: i, Regs: c.Regs, Sregs: c.Sregs, InterruptBitmap: c.InterruptBitmap, FPU: c.FPU,
			XSAVE: append([]byte(nil), c.XSAVE[:c.XSAVELen]...), XCRs: c.XCRs, LAPIC: c.LAPIC,
			MSRs: append([]kvm.MSREntry(nil), c.MSRs[:c.NMSRs]...), Events: c.Events,
			MPState: kvm.MPState(c.MPState), DebugRegs: c.DebugRegs,
		})
	}
	rs, err := h.runState()
	if err != nil {
		return nil, err
	}
	st.RunState = rs
	return st, nil
}

// runState returns the source's run state from globalstate.
func (h *hostState) runState() (machine.RunState, error) {
	if h.global.Size > uint32(len(h.global.RunState)) {
		return "", fmt.Errorf("globalstate: run state length %d out of range", h.global.Size)
	}
	rs := machine.RunState(h.global.RunState[:h.global.Size])
	switch rs {
	case machine.StateRunning, machine.StatePaused, machine.StateSuspended, machine.StatePostMigrate, machine.StatePrelaunch:
		return rs, nil
	}
	return "", fmt.Errorf("globalstate: unknown run state %q", rs)
}

// byteView is a store over a Go value's memory.
type byteView []byte

func (b byteView) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return 0, errors.New("host section: read out of range")
	}
	return copy(p, b[off:]), nil
}

func (b byteView) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return 0, errors.New("host section: write out of range")
	}
	return copy(b[off:], p), nil
}

// Size reports the store size (vmstate.Sizer).
func (b byteView) Size() int64 { return int64(len(b)) }

// structSection derives a section from the struct ptr points to; the store
// is the struct's own memory.
func structSection(name string, ptr any) (*abi.Section, byteView, error) {
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, nil, fmt.Errorf("host section %s: need a pointer to a struct", name)
	}
	t := v.Elem().Type()
	fields, err := structFields(t, name)
	if err != nil {
		return nil, nil, err
	}
	mem := unsafe.Slice((*byte)(v.UnsafePointer()), t.Size())
	return &abi.Section{Name: name, Fields: fields}, byteView(mem), nil
}

// structFields lays out the exported fields of t; offsets are relative to t.
func structFields(t reflect.Type, path string) ([]abi.Field, error) {
	var out []abi.Field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue // padding
		}
		f, err := fieldOf(sf.Type, path+"."+sf.Name)
		if err != nil {
			return nil, err
		}
		f.Name = snake(sf.Name)
		f.Offset = uint32(sf.Offset)
		out = append(out, f)
	}
	return out, nil
}

func fieldOf(t reflect.Type, path string) (abi.Field, error) {
	scalar := map[reflect.Kind]abi.FieldType{
		reflect.Uint8: abi.FieldU8, reflect.Uint16: abi.FieldU16, reflect.Uint32: abi.FieldU32, reflect.Uint64: abi.FieldU64,
		reflect.Int8: abi.FieldI8, reflect.Int16: abi.FieldI16, reflect.Int32: abi.FieldI32, reflect.Int64: abi.FieldI64,
		reflect.Bool: abi.FieldBool,
	}
	if ft, ok := scalar[t.Kind()]; ok {
		return abi.Field{Type: ft, Size: uint32(t.Size()), Count: 1}, nil
	}
	switch t.Kind() {
	case reflect.Array:
		e := t.Elem()
		if e.Kind() == reflect.Uint8 {
			return abi.Field{Type: abi.FieldBuffer, Size: uint32(t.Len()), Count: 1}, nil
		}
		inner, err := fieldOf(e, path+"[]")
		if err != nil {
			return abi.Field{}, err
		}
		if inner.Count != 1 {
			// An array of arrays of bytes is an array of buffers.
			if inner.Type == abi.FieldBuffer {
				return abi.Field{Type: abi.FieldBuffer, Size: inner.Size * inner.Count, Count: uint32(t.Len())}, nil
			}
			return abi.Field{}, fmt.Errorf("host section field %s: nested arrays of %s", path, inner.Type)
		}
		inner.Count = uint32(t.Len())
		return inner, nil
	case reflect.Struct:
		fields, err := structFields(t, path)
		if err != nil {
			return abi.Field{}, err
		}
		return abi.Field{Type: abi.FieldStruct, Size: uint32(t.Size()), Count: 1,
			Struct: &abi.Section{Name: snake(t.Name()), Fields: fields}}, nil
	}
	return abi.Field{}, fmt.Errorf("host section field %s: unsupported type %s", path, t)
}

// snake turns a Go field name into the field names QEMU's vmdesc uses
// (lower case with underscores): "XSAVELen" -> "xsave_len".
func snake(s string) string {
	if s == "" {
		return "anon"
	}
	var b strings.Builder
	r := []rune(s)
	for i, c := range r {
		upper := c >= 'A' && c <= 'Z'
		if upper && i > 0 {
			prevLower := r[i-1] >= 'a' && r[i-1] <= 'z' || r[i-1] >= '0' && r[i-1] <= '9'
			nextLower := i+1 < len(r) && r[i+1] >= 'a' && r[i+1] <= 'z'
			if prevLower || (nextLower && r[i-1] >= 'A' && r[i-1] <= 'Z') {
				b.WriteByte('_')
			}
		}
		if upper {
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}
