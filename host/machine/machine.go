// Package machine assembles a KVM virtual machine from a VM configuration and
// a machine type: guest RAM, vCPUs, the in-kernel irqchip and PIT, the PIO and
// MMIO buses with plugin devices and the few legacy ports every PC guest
// expects, the boot of the kernel, and the run states of the VM.
package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/kvm"
	"wasmvmm/host/machine/boot"
	"wasmvmm/host/machine/bus"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
)

// Config is everything needed to build a machine.
type Config struct {
	VM          *config.VM          // the user's VM configuration (flags already applied)
	MachineType *config.MachineType // resolved machine type
	KVMPath     string              // default /dev/kvm
	Logger      hclog.Logger
	// Devices creates the plugin devices; nil builds a machine with only the
	// host's legacy devices (used by low-level tests).
	Devices DeviceFactory
	// NoBoot skips loading a kernel (an incoming migration overwrites RAM
	// and CPU state anyway).
	NoBoot bool
	// Memory, when set, is used instead of allocating RAM (cpr-transfer
	// adopts the source's memfds).
	Memory *guestmem.Memory
}

// DeviceFactory creates the devices of a machine once RAM and the buses exist.
type DeviceFactory func(m *Machine) ([]Device, error)

// Device is a device the machine owns (a plugin instance behind an adapter).
type Device interface {
	ID() string
	Reset()
	Close() error
}

// Machine is an assembled VM.
type Machine struct {
	cfg    Config
	log    hclog.Logger
	sys    *kvm.System
	vm     *kvm.VM
	mem    *guestmem.Memory
	layout boot.MemoryLayout
	vcpus  []*vcpu
	PIO    *bus.Bus
	MMIO   *bus.Bus
	Clock  *plugin.VMClock

	devices []Device
	pm      pmState
	state   *runState
	bootCPU boot.CPUState
	entry   uint64 // kernel entry, for reset

	// initial holds each vCPU's and the VM's state right after setup, for
	// system_reset.
	initial   []*kvm.VCPUState
	initialVM *kvm.VMState

	autostart bool // an incoming VM resumes after loading (QMP cont/stop in inmigrate)

	pause    pauseControl
	dirty    dirtyLog // dirty tracking for live migration (dirty.go)
	throttle throttle // auto-converge vCPU throttling (dirty.go)
	started  bool     // vCPU threads exist
	wg       sync.WaitGroup
	done     chan struct{} // closed when the machine stops for good
	doneOnce sync.Once
	exitCode int

	closeMu     sync.Mutex
	beforeClose []func() error // run first by Close; see BeforeClose
}

// vcpu is one vCPU and its goroutine's control.
type vcpu struct {
	id   int
	cpu  *kvm.VCPU
	work []func() // run on the vCPU's thread while parked; guarded by pause.mu
	// settled says the vCPU's thread finished any half-done exit
	// (CompletePendingIO) after its last KVM_RUN and before it parked, so
	// its state can be read from another thread (kvm.VCPU.ReadState).
	// Written by the vCPU's thread, read by others under pause.mu's
	// ordering (it is set before the thread counts itself parked).
	settled atomic.Bool

	throttleGen uint64 // throttle epoch this vCPU last saw (dirty.go)
}

// New builds a machine: checks the host can give what the config asks,
// creates the VM, RAM, vCPUs, devices, and loads the kernel. Nothing is
// left half-built on error.
func New(cfg Config) (_ *Machine, err error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.KVMPath == "" {
		cfg.KVMPath = kvm.DefaultDevice
	}
	vmc := cfg.VM
	mt := cfg.MachineType
	cpus := vmc.Machine.CPUs
	if mt.NoCPUs {
		cpus = 0
	} else if cpus == 0 {
		cpus = 1
	}
	memSize := uint64(vmc.Machine.Memory)
	if memSize == 0 {
		memSize = 256 << 20
	}
	if err := checkHostResources(memSize, cpus); err != nil {
		return nil, err
	}
	m := &Machine{
		cfg: cfg, log: cfg.Logger, state: newRunState(), done: make(chan struct{}),
		PIO: bus.New("pio"), MMIO: bus.New("mmio"), Clock: plugin.NewVMClock(false),
		layout: boot.MemoryLayout{RAMSize: memSize},
	}
	m.pause.init()
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	if m.sys, err = kvm.Open(cfg.KVMPath); err != nil {
		return nil, err
	}
	if err = m.sys.CheckCapabilities(); err != nil {
		return nil, err
	}
	if max, e := m.sys.CapabilityValue(kvm.CapMaxVCPUs); e == nil && max > 0 && cpus > max {
		return nil, fmt.Errorf("%d vCPUs requested; this host's KVM allows %d", cpus, max)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return nil, err
	}
	if err = m.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err = m.vm.CreatePIT2(); err != nil {
		return nil, err
	}
	if cfg.Memory != nil {
		m.mem = cfg.Memory
	} else if m.mem, err = allocRAM(m.layout, vmc.Machine.ShareMemory); err != nil {
		return nil, err
	}
	for i, b := range m.mem.Blocks() {
		if err = m.vm.SetUserMemoryRegion(uint32(i), b.GPA, b.Mem, 0); err != nil {
			return nil, fmt.Errorf("map RAM block %s: %w", b.Name, err)
		}
	}
	if err = m.addLegacyDevices(); err != nil {
		return nil, err
	}
	if cfg.Devices != nil {
		if m.devices, err = cfg.Devices(m); err != nil {
			return nil, err
		}
	}
	if err = m.createVCPUs(cpus); err != nil {
		return nil, err
	}
	if !cfg.NoBoot && cpus > 0 {
		if err = m.loadKernel(); err != nil {
			return nil, err
		}
	}
	if err = m.captureInitialState(); err != nil {
		return nil, err
	}
	return m, nil
}

// checkHostResources refuses a VM this host cannot give before anything starts.
func checkHostResources(memSize uint64, cpus int) error {
	if memSize < 2<<20 {
		return fmt.Errorf("memory %d bytes is too small: at least 2 MiB", memSize)
	}
	if memSize%guestmem.PageSize != 0 {
		return fmt.Errorf("memory %d bytes is not a multiple of %d", memSize, guestmem.PageSize)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		total := uint64(si.Totalram) * uint64(si.Unit)
		if memSize > total {
			return fmt.Errorf("memory %d MiB exceeds this host's %d MiB of RAM", memSize>>20, total>>20)
		}
	}
	if cpus > 0 && cpus > 4*runtime.NumCPU() && cpus > 8 {
		return fmt.Errorf("%d vCPUs requested on a host with %d CPUs", cpus, runtime.NumCPU())
	}
	if cpus > 255 {
		return fmt.Errorf("%d vCPUs requested: at most 255 (xAPIC ids)", cpus)
	}
	return nil
}

// allocRAM creates the RAM blocks: below the 32-bit MMIO hole, and the rest
// from 4 GiB.
func allocRAM(l boot.MemoryLayout, shared bool) (*guestmem.Memory, error) {
	opt := guestmem.AllocOptions{Shared: shared}
	low, err := guestmem.Alloc("ram-low", 0, l.LowRAMEnd(), opt)
	if err != nil {
		return nil, err
	}
	blocks := []*guestmem.Block{low}
	if hi := l.HighRAMSize(); hi > 0 {
		high, err := guestmem.Alloc("ram-high", boot.MMIOHoleEnd, hi, opt)
		if err != nil {
			low.Close()
			return nil, err
		}
		blocks = append(blocks, high)
	}
	return guestmem.New(blocks...)
}

// Memory returns guest RAM.
func (m *Machine) Memory() *guestmem.Memory { return m.mem }

// KVM returns the KVM VM (for migration and tests).
func (m *Machine) KVM() *kvm.VM { return m.vm }

// VCPUs returns the KVM vCPUs.
func (m *Machine) VCPUs() []*kvm.VCPU {
	out := make([]*kvm.VCPU, len(m.vcpus))
	for i, v := range m.vcpus {
		out[i] = v.cpu
	}
	return out
}

// Devices returns the machine's plugin devices.
func (m *Machine) Devices() []Device { return m.devices }

// Logger returns the machine's logger.
func (m *Machine) Logger() hclog.Logger { return m.log }

// Config returns the configuration the machine was built from.
func (m *Machine) Config() Config { return m.cfg }

// SetIRQ drives a GSI of the in-kernel irqchip.
func (m *Machine) SetIRQ(gsi uint32, level bool) error { return m.vm.IRQLine(gsi, level) }

// OnEvent registers a listener for run-state events (QMP).
func (m *Machine) OnEvent(f func(Event)) {
	m.state.mu.Lock()
	m.state.listeners = append(m.state.listeners, f)
	m.state.mu.Unlock()
}

// State returns the run state and, for shutdown and internal-error, why.
func (m *Machine) State() (RunState, string) { return m.state.get() }

// Done is closed when the machine has stopped for good (shutdown with exit,
// internal error, or quit).
func (m *Machine) Done() <-chan struct{} { return m.done }

// ExitCode is the process exit status the machine asks for once Done.
func (m *Machine) ExitCode() int { return m.exitCode }

// BeforeClose registers f to run at the start of Close, before the vCPUs
// stop and guest RAM is released. It is for users of guest RAM that run on
// their own goroutines (a migration): f stops them and waits. If f returns
// an error, such a user may still be running, so Close keeps guest RAM
// mapped (leaking it rather than pulling it from under a reader) and
// returns the error.
func (m *Machine) BeforeClose(f func() error) {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	m.beforeClose = append(m.beforeClose, f)
}

// Close stops the vCPUs and releases everything.
func (m *Machine) Close() error {
	m.closeMu.Lock()
	hooks := m.beforeClose
	m.beforeClose = nil
	m.closeMu.Unlock()
	var errs []error
	keepRAM := false
	for _, f := range hooks {
		if err := f(); err != nil {
			errs = append(errs, fmt.Errorf("guest RAM kept mapped: %w", err))
			keepRAM = true
		}
	}
	m.stop(0)
	m.pause.terminate()
	for _, v := range m.vcpus {
		if v.cpu != nil {
			v.cpu.Kick()
		}
	}
	m.wg.Wait()
	for _, d := range m.devices {
		if err := d.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, v := range m.vcpus {
		if v.cpu != nil {
			errs = append(errs, v.cpu.Close())
		}
	}
	m.vcpus = nil
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
		m.vm = nil
	}
	if m.mem != nil && m.cfg.Memory == nil && !keepRAM {
		errs = append(errs, m.mem.Close())
		m.mem = nil
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
		m.sys = nil
	}
	return errors.Join(errs...)
}

// stop marks the machine finished with an exit code.
func (m *Machine) stop(code int) {
	m.doneOnce.Do(func() {
		m.exitCode = code
		close(m.done)
	})
}

// Start launches the vCPU threads. The guest runs unless startPaused, in
// which case it waits for Resume (QEMU's -S).
func (m *Machine) Start(startPaused bool) error {
	st, _ := m.state.get()
	if st != StatePrelaunch {
		return fmt.Errorf("start: machine is %s", st)
	}
	m.pause.set(true)
	m.started = true
	for _, v := range m.vcpus {
		m.wg.Add(1)
		go m.runVCPU(v)
	}
	if startPaused {
		m.holdDevices(true)
		return m.state.set(StatePaused, "")
	}
	return m.Resume()
}

// Wait blocks until the machine stops for good or ctx ends.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pause stops every vCPU outside KVM_RUN and the VM clock; it returns once
// all of them are parked. Pausing a paused machine is a no-op.
func (m *Machine) Pause() error {
	return m.pauseTo(StatePaused)
}

// pauseTo parks the vCPUs and sets state.
func (m *Machine) pauseTo(to RunState) error {
	st, _ := m.state.get()
	if err := m.state.set(to, ""); err != nil {
		return err
	}
	m.parkVCPUs()
	m.holdDevices(true)
	if st == StateRunning {
		m.Clock.Pause()
		m.state.emit(Event{Name: "STOP"})
	}
	return nil
}

// holdDevices stops (hold) or restarts the asynchronous work of plugin
// devices — backend readiness and timers — with the VM, as QEMU's devices
// stop with vm_stop: the devices of a stopped guest do not write its RAM,
// so the RAM and the device state a migration or snapshot saves while the
// guest is stopped agree, and a paused guest's rings do not move. Calls
// the host makes (MMIO, PIO, pre-save) still run; backends keep what
// arrives meanwhile and it is delivered on restart. A suspended guest's
// devices keep running, as in QEMU.
func (m *Machine) holdDevices(hold bool) {
	for _, d := range m.devices {
		pd, ok := d.(*PluginDevice)
		if !ok || pd.Instance == nil {
			continue
		}
		if hold {
			pd.HoldEvents()
		} else {
			pd.ReleaseEvents()
		}
	}
}

// parkVCPUs asks every vCPU to park and waits until each has.
func (m *Machine) parkVCPUs() {
	m.pause.set(true)
	for _, v := range m.vcpus {
		v.cpu.Kick()
	}
	m.pause.waitParked(len(m.vcpus))
}

// SetAutostart says whether an incoming VM runs once its state is loaded.
func (m *Machine) SetAutostart(on bool) {
	m.state.mu.Lock()
	m.autostart = on
	m.state.mu.Unlock()
}

// Autostart reports the autostart flag.
func (m *Machine) Autostart() bool {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	return m.autostart
}

// Resume lets the vCPUs run again.
func (m *Machine) Resume() error {
	st, _ := m.state.get()
	if st == StateRunning {
		return nil
	}
	if st == StateSuspended {
		return errors.New("the guest is suspended: use system_wakeup")
	}
	if err := m.state.set(StateRunning, ""); err != nil {
		return err
	}
	m.letGo()
	return nil
}

// letGo runs a machine just moved to running: the clock, the devices, then
// the vCPUs, and sends RESUME with the moment the vCPUs went.
func (m *Machine) letGo() {
	m.Clock.Resume()
	m.holdDevices(false)
	at := time.Now()
	m.pause.set(false)
	m.state.emit(Event{Name: "RESUME", At: at})
}

// Suspend is the guest's own S3 request: the vCPUs park in the suspended
// state until Wakeup.
func (m *Machine) suspend() {
	if err := m.state.set(StateSuspended, ""); err != nil {
		m.log.Warn("guest suspend request ignored", "error", err)
		return
	}
	m.pause.set(true)
	m.Clock.Pause()
	m.state.emit(Event{Name: "SUSPEND"})
}

// Wakeup resumes a suspended guest (QMP system_wakeup).
func (m *Machine) Wakeup() error {
	st, _ := m.state.get()
	if st != StateSuspended {
		return fmt.Errorf("the guest is %s, not suspended", st)
	}
	m.pm.wake()
	if err := m.state.set(StateRunning, ""); err != nil {
		return err
	}
	m.Clock.Resume()
	m.pause.set(false)
	m.state.emit(Event{Name: "WAKEUP"})
	return nil
}

// Shutdown is a clean power-off (guest request or QMP quit): the machine
// enters the shutdown state and stops for good.
func (m *Machine) Shutdown(reason string, guest bool) {
	if err := m.state.set(StateShutdown, reason); err != nil {
		m.log.Debug("shutdown", "error", err)
	}
	m.pause.set(true)
	m.Clock.Pause()
	m.state.emit(Event{Name: "SHUTDOWN", Data: map[string]any{"guest": guest, "reason": reason}})
	m.stop(0)
}

// internalError records a fatal vCPU condition: internal-error state, a
// register dump in the log, exit status 1.
func (m *Machine) internalError(v *vcpu, why string) {
	dump := m.describeVCPU(v)
	m.log.Error("guest stopped with an internal error", "vcpu", v.id, "reason", why, "registers", dump)
	if err := m.state.set(StateInternalError, why); err != nil {
		m.log.Debug("internal error state", "error", err)
	}
	m.pause.set(true)
	m.Clock.Pause()
	m.state.emit(Event{Name: "STOP"})
	m.stop(1)
}

func (m *Machine) describeVCPU(v *vcpu) string {
	r, err := v.cpu.Regs()
	if err != nil {
		return fmt.Sprintf("(registers unavailable: %v)", err)
	}
	s, err := v.cpu.Sregs()
	if err != nil {
		return fmt.Sprintf("(sregs unavailable: %v)", err)
	}
	return fmt.Sprintf("rip=%#x rsp=%#x rflags=%#x rax=%#x rbx=%#x rcx=%#x rdx=%#x rsi=%#x rdi=%#x rbp=%#x cs=%#x(dpl %d) cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x",
		r.RIP, r.RSP, r.RFLAGS, r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP, s.CS.Selector, s.CS.DPL, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
}

// Reset performs a system reset: vCPUs and the VM's interrupt controllers
// return to their initial state, devices reset, and the kernel is entered
// again. The run state is kept (a paused VM stays paused).
func (m *Machine) Reset() error {
	st, _ := m.state.get()
	wasRunning := st == StateRunning
	m.parkVCPUs()
	if err := m.restoreInitialState(); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	for _, d := range m.devices {
		d.Reset()
	}
	m.pm.reset()
	m.state.emit(Event{Name: "RESET", Data: map[string]any{"guest": false, "reason": "host-qmp-system-reset"}})
	if wasRunning {
		m.pause.set(false)
	}
	return nil
}

// guestReset is a reset the guest asked for (0xCF9, i8042): done off the
// vCPU thread that saw it, since Reset parks every vCPU.
func (m *Machine) guestReset() {
	go func() {
		if err := m.Reset(); err != nil {
			m.log.Error("guest reset failed", "error", err)
		}
	}()
}

// pauseControl parks vCPU goroutines.
type pauseControl struct {
	mu         sync.Mutex
	cond       *sync.Cond
	paused     bool
	terminated bool
	parked     int
	// settle asks the vCPU threads to finish any half-done exit before
	// they park (StopFor: their state is read next); cleared on resume.
	settle bool
}

func (p *pauseControl) init() { p.cond = sync.NewCond(&p.mu) }

func (p *pauseControl) set(paused bool) {
	p.mu.Lock()
	p.paused = paused
	if !paused {
		p.settle = false
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pauseControl) terminate() {
	p.mu.Lock()
	p.terminated = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// park blocks a vCPU goroutine while paused, running work queued for it by
// onVCPU; it returns false when the machine is closing.
func (p *pauseControl) park(v *vcpu) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused && !p.terminated {
		p.parked++
		p.cond.Broadcast()
		for p.paused && !p.terminated {
			if len(v.work) > 0 {
				w := v.work[0]
				v.work = v.work[1:]
				p.mu.Unlock()
				w()
				p.mu.Lock()
				continue
			}
			p.cond.Wait()
		}
		p.parked--
	}
	return !p.terminated
}

// onVCPU runs f on v's own thread while the vCPUs are parked (KVM_RUN, which
// finishing a half-done exit needs, belongs on the thread that runs the
// vCPU) and returns f's error.
func (m *Machine) onVCPU(v *vcpu, f func() error) error {
	if !m.started {
		return f() // no vCPU thread exists yet: nothing has run KVM_RUN
	}
	done := make(chan error, 1)
	m.pause.mu.Lock()
	if m.pause.terminated || !m.pause.paused {
		m.pause.mu.Unlock()
		return errors.New("vcpus are not parked")
	}
	v.work = append(v.work, func() { done <- f() })
	m.pause.cond.Broadcast()
	m.pause.mu.Unlock()
	return <-done
}

// pausing reports whether the vCPUs must park, and whether they should
// settle before.
func (p *pauseControl) pausing() (paused, settle bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused || p.terminated, p.settle && !p.terminated
}

func (p *pauseControl) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused || p.terminated
}

// waitParked waits until n goroutines are parked (or the machine closes).
func (p *pauseControl) waitParked(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.parked < n && !p.terminated && p.paused {
		p.cond.Wait()
	}
}

// runVCPU is a vCPU's thread.
func (m *Machine) runVCPU(v *vcpu) {
	defer m.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for {
		if paused, settle := m.pause.pausing(); paused {
			if settle && !v.settled.Load() {
				m.settle(v)
			}
			if !m.pause.park(v) {
				return
			}
			continue
		}
		m.throttleWait(v)
		v.settled.Store(false)
		exit, err := v.cpu.Run()
		if err != nil {
			m.internalError(v, err.Error())
			continue
		}
		m.handleExit(v, &exit)
	}
}

// settle finishes, on the vCPU's thread, the instruction its last exit left
// half done (handling the exits that takes, as SaveCPUState would), so that
// its state can then be read from any thread without entering KVM_RUN
// again. A vCPU that does not settle (an error, or I/O that goes on) stays
// unsettled and SaveCPUState reads it on its thread.
func (m *Machine) settle(v *vcpu) {
	for i := 0; i < 64; i++ {
		exit, err := v.cpu.CompletePendingIO()
		if err != nil {
			return
		}
		if exit.Interrupted() {
			v.settled.Store(true)
			return
		}
		m.handleExit(v, &exit)
	}
}

// handleExit handles one exit of KVM_RUN on the vCPU's thread.
func (m *Machine) handleExit(v *vcpu, e *kvm.Exit) {
	switch e.Reason {
	case kvm.ExitIntr:
		// Kicked, or an unrelated signal: loop; the pause check decides.
	case kvm.ExitIO:
		m.handlePIO(&e.IO)
	case kvm.ExitMMIO:
		m.handleMMIO(&e.MMIO)
	case kvm.ExitHLT:
		// Only without an in-kernel irqchip; treat as an idle wait.
		time.Sleep(time.Millisecond)
	case kvm.ExitShutdown:
		m.internalError(v, "triple fault (KVM_EXIT_SHUTDOWN)")
	case kvm.ExitInternalError:
		m.internalError(v, fmt.Sprintf("KVM internal error, suberror %d, data %x", e.Internal.Suberror, e.Internal.Data))
	case kvm.ExitFailEntry:
		m.internalError(v, fmt.Sprintf("KVM entry failed, hardware reason %#x", e.FailEntry.HardwareEntryFailureReason))
	case kvm.ExitSystemEvent:
		switch e.SystemEvent.Type {
		case kvm.SystemEventShutdown:
			m.Shutdown("guest-shutdown", true)
		case kvm.SystemEventReset:
			m.guestReset()
		default:
			m.internalError(v, fmt.Sprintf("system event %d", e.SystemEvent.Type))
		}
	default:
		m.internalError(v, fmt.Sprintf("unhandled exit %s", e.Reason))
	}
}

func (m *Machine) handlePIO(io *kvm.IOExit) {
	size := int(io.Size)
	for i := 0; i < int(io.Count); i++ {
		data := io.Data[i*size : (i+1)*size]
		if io.Direction == kvm.IOOut {
			m.PIO.Write(uint64(io.Port), size, getLE(data))
		} else {
			v, ok := m.PIO.Read(uint64(io.Port), size)
			if !ok {
				v = ^uint64(0)
			}
			putLE(data, v)
		}
	}
}

func (m *Machine) handleMMIO(mm *kvm.MMIOExit) {
	size := len(mm.Data)
	if mm.IsWrite {
		m.MMIO.Write(mm.Addr, size, getLE(mm.Data))
		return
	}
	v, ok := m.MMIO.Read(mm.Addr, size)
	if !ok {
		v = ^uint64(0)
	}
	putLE(mm.Data, v)
}

func getLE(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func putLE(b []byte, v uint64) {
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
}

// HostPath returns the first existing file among candidates, or an error
// naming every path searched.
func HostPath(what string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found; searched: %v", what, candidates)
}
