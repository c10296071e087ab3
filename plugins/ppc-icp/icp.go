// Command ppc-icp is the wasmvmm plugin for one XICS interrupt presenter
// (ICP) of a POWER machine (PAPR "pseries"): the per-server register set
// through which a CPU accepts, masks and acknowledges interrupts, and
// receives inter-processor interrupts (IPIs).
//
// One instance is one server (property server, also the vmstate instance
// id). Its state is QEMU's ICPState as migrated in section "icp/server",
// version 1: xirr (u32: CPPR, the current processor priority, in the top
// byte; XISR, the source of the pending interrupt, in the low 24 bits),
// pending_priority (u8: the priority of the interrupt in XISR) and mfrr
// (u8: the most favoured request register; a value more favoured, that is
// numerically lower, than CPPR makes an IPI pending). Lower numbers are
// more favoured; 0xff is least favoured (everything masked at CPPR 0).
//
// Registers: one MMIO region of 0x1000 bytes, laid out as the POWER8
// native ICP's (QEMU hw/intc/xics_pnv.c), since a device-state machine has
// no hypervisor calls:
//
//	0x0 XIRR      4-byte read: accept (returns XIRR; CPPR <- pending
//	              priority, XISR cleared, pending priority 0xff, output
//	              lowered); 1-byte read: CPPR.
//	              4-byte write: EOI (CPPR <- the written top byte; if no
//	              interrupt is pending any more, an IPI is re-presented);
//	              1-byte write: set CPPR.
//	0x4 XIRR_POLL 4-byte read: XIRR without accepting.
//	0xc MFRR      1-byte read/write: MFRR; a write more favoured than CPPR
//	              presents an IPI (XISR 2) unless a more favoured interrupt
//	              is pending.
//
// Interrupt line 0 is the presenter's output to its CPU: raised while an
// interrupt is presented (XISR != 0), lowered on accept or when a CPPR
// change rejects it.
//
// Compat shim (QEMU's pre_2_10_vmstate_dummy_icp): pseries machine types
// up to 2.9 sent an "icp/server" section for every possible server, also
// for servers without a CPU, whose ICP did not exist. Such a section
// carries three unused fields of 4, 1 and 1 bytes. A server without a CPU
// (property cpu=false) registers nothing, unless the machine type sets
// pre_2_10_dummy: then it registers QEMU's dummy section under its server
// number, whose fields land in a scratch buffer this plugin never reads —
// the legacy section is accepted and discarded. A server with a CPU
// always registers the real section, so a real ICP takes the place of its
// dummy: never both, never a duplicate registration.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (see
// host/pluginbuild).
package main

import (
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
)

func main() {}

// Register offsets and values.
const (
	regionSize = 0x1000
	regXIRR    = 0x0
	regPoll    = 0x4
	regMFRR    = 0xc

	xisrMask = 0x00ffffff
	cpprMask = 0xff000000
	// xicsIPI is the interrupt source number of an IPI.
	xicsIPI = 0x2
	// leastFavoured is priority 0xff: nothing is pending / everything is
	// masked.
	leastFavoured = 0xff
)

// icpState is QEMU's "icp/server" layout.
type icpState struct {
	XIRR            uint32 `vmstate:"xirr"`
	PendingPriority uint8  `vmstate:"pending_priority"`
	MFRR            uint8  `vmstate:"mfrr"`
}

// dummyState is QEMU's pre_2_10_vmstate_dummy_icp: VMSTATE_UNUSED(4),
// VMSTATE_UNUSED(1), VMSTATE_UNUSED(1). Loaded bytes land here and are
// never read.
type dummyState struct {
	XIRR            [4]byte `vmstate:"unused"`
	PendingPriority [1]byte `vmstate:"unused.1"`
	MFRR            [1]byte `vmstate:"unused.2"`
}

var (
	st    icpState
	dummy dummyState

	serverProp = sdk.U32("server", 0, "interrupt server number; the instance id of the icp/server section")
	cpuProp    = sdk.Bool("cpu", true, "a CPU is attached to this server (false: an unused server, whose ICP does not exist)")
	dummyProp  = sdk.Bool("pre_2_10_dummy", false,
		"pseries <= 2.9 compat: an unused server sends and accepts QEMU's dummy icp/server section, whose content is discarded")
)

const output sdk.IRQ = 0

type device struct {
	present bool // a CPU is attached: the registers exist
}

func init() {
	sdk.Register("ppc-icp", "1.0.0", &device{})
}

// Realize adds the register window and registers the section: the real
// one for a server with a CPU, the dummy for an unused server of an old
// machine type, none otherwise.
func (d *device) Realize(r *sdk.Realizer) error {
	server := serverProp.Get()
	if server > 1<<24 {
		return tinyfmt.Errorf("property server is %d; interrupt server numbers are below 2^24", server)
	}
	if _, err := r.AddMMIO(regionSize); err != nil {
		return err
	}
	d.present = cpuProp.Get()
	d.Reset()
	switch {
	case d.present:
		if s := sdk.VMState("icp/server", &st, sdk.Version(1), sdk.MinimumVersion(1), sdk.Instance(int32(server))); s.Err() != nil {
			return s.Err()
		}
	case dummyProp.Get():
		if s := sdk.VMState("icp/server", &dummy, sdk.Version(1), sdk.MinimumVersion(1), sdk.Instance(int32(server))); s.Err() != nil {
			return s.Err()
		}
	}
	return nil
}

// Reset is QEMU's icp_reset: nothing pending, CPPR 0 (all masked), MFRR
// least favoured, output low.
func (d *device) Reset() {
	st = icpState{XIRR: 0, PendingPriority: leastFavoured, MFRR: leastFavoured}
	d.setOutput(false)
}

func (d *device) setOutput(level bool) {
	if err := output.Set(level); err != nil {
		sdk.Warnf("ppc-icp: interrupt output: %v", err)
	}
}

func cppr() uint8      { return uint8(st.XIRR >> 24) }
func xisr() uint32     { return st.XIRR & xisrMask }
func setXISR(v uint32) { st.XIRR = st.XIRR&cpprMask | v&xisrMask }

// checkIPI presents an IPI at MFRR's priority unless an interrupt at least
// as favoured is pending.
func (d *device) checkIPI() {
	if xisr() != 0 && st.PendingPriority <= st.MFRR {
		return
	}
	setXISR(xicsIPI)
	st.PendingPriority = st.MFRR
	d.setOutput(true)
}

// resend re-presents the IPI if MFRR is more favoured than CPPR (the ICS
// would resend its rejected sources; there is no ICS in this model).
func (d *device) resend() {
	if st.MFRR < cppr() {
		d.checkIPI()
	}
}

// setCPPR is QEMU's icp_set_cppr: a more favoured CPPR rejects a pending
// interrupt it now masks; a less favoured one may let the IPI through.
func (d *device) setCPPR(v uint8) {
	old := cppr()
	st.XIRR = st.XIRR&xisrMask | uint32(v)<<24
	if v < old {
		if xisr() != 0 && v <= st.PendingPriority {
			setXISR(0)
			st.PendingPriority = leastFavoured
			d.setOutput(false)
		}
		return
	}
	if xisr() == 0 {
		d.resend()
	}
}

// setMFRR is QEMU's icp_set_mfrr.
func (d *device) setMFRR(v uint8) {
	st.MFRR = v
	if v < cppr() {
		d.checkIPI()
	}
}

// accept is QEMU's icp_accept: returns XIRR and makes the pending
// priority the current one.
func (d *device) accept() uint32 {
	x := st.XIRR
	d.setOutput(false)
	st.XIRR = uint32(st.PendingPriority) << 24
	st.PendingPriority = leastFavoured
	return x
}

// eoi is QEMU's icp_eoi: the written CPPR becomes current; with nothing
// pending the IPI may be presented again.
func (d *device) eoi(v uint32) {
	st.XIRR = st.XIRR&xisrMask | v&cpprMask
	if xisr() == 0 {
		d.resend()
	}
}

// MMIORead serves XIRR (accept or CPPR), XIRR_POLL and MFRR.
func (d *device) MMIORead(_ sdk.Region, offset uint64, size int) uint64 {
	if !d.present {
		return allOnes(size)
	}
	switch {
	case offset == regXIRR && size == 4:
		return uint64(d.accept())
	case offset == regXIRR && size == 1:
		return uint64(cppr())
	case offset == regPoll && size == 4:
		return uint64(st.XIRR)
	case offset == regMFRR && size == 1:
		return uint64(st.MFRR)
	}
	return allOnes(size)
}

// MMIOWrite serves EOI, CPPR and MFRR writes; others are ignored.
func (d *device) MMIOWrite(_ sdk.Region, offset uint64, size int, value uint64) {
	if !d.present {
		return
	}
	switch {
	case offset == regXIRR && size == 4:
		d.eoi(uint32(value))
	case offset == regXIRR && size == 1:
		d.setCPPR(uint8(value))
	case offset == regMFRR && size == 1:
		d.setMFRR(uint8(value))
	}
}

// PostLoad drives the output from the loaded state: an interrupt is
// presented while XISR names one.
func (d *device) PostLoad(uint32) error {
	if !d.present {
		dummy = dummyState{} // discarded
		return nil
	}
	d.setOutput(xisr() != 0)
	return nil
}

func allOnes(size int) uint64 {
	if size >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*uint(size)) - 1
}
