package machine

import (
	"errors"
	"fmt"

	"wasmvmm/host/kvm"
)

// CPUState is the machine's own state outside guest RAM and the devices:
// every vCPU, the in-kernel irqchip, PIT and kvmclock, the VM clock, the
// ACPI PM registers and the run state. Migration serializes it.
type CPUState struct {
	VCPUs    []*kvm.VCPUState
	VM       *kvm.VMState
	ClockNS  int64
	PMStatus uint16
	PMEnable uint16
	PMCnt    uint16
	RunState RunState
}

// SaveCPUState reads the machine's state. The machine must be stopped
// (paused, suspended, or in a migration state with its vCPUs parked).
func (m *Machine) SaveCPUState() (*CPUState, error) {
	if !m.pause.isPaused() {
		return nil, errors.New("save state: the vCPUs are running; pause first")
	}
	st := &CPUState{ClockNS: m.Clock.Now()}
	st.RunState, _ = m.state.get()
	for _, v := range m.vcpus {
		v := v
		var vs *kvm.VCPUState
		if v.settled.Load() {
			// Settled as it parked (StopFor): read here, no hop to
			// its thread (about 70 us on a nested host).
			var err error
			if vs, err = v.cpu.ReadState(); err != nil {
				return nil, err
			}
			st.VCPUs = append(st.VCPUs, vs)
			continue
		}
		err := m.onVCPU(v, func() error {
			for i := 0; i < 64; i++ {
				var err error
				vs, err = v.cpu.SaveState()
				var pe *kvm.PendingExitError
				if errors.As(err, &pe) {
					// Finishing the last instruction needed userspace
					// again (e.g. the next element of a rep outs).
					m.handleExit(v, &pe.Exit)
					continue
				}
				return err
			}
			return fmt.Errorf("vcpu %d: state not saved: I/O did not complete", v.id)
		})
		if err != nil {
			return nil, err
		}
		st.VCPUs = append(st.VCPUs, vs)
	}
	vm, err := m.vm.SaveState()
	if err != nil {
		return nil, err
	}
	st.VM = vm
	m.pm.mu.Lock()
	st.PMStatus, st.PMEnable, st.PMCnt = m.pm.status, m.pm.enable, m.pm.cnt
	m.pm.mu.Unlock()
	return st, nil
}

// StateReadable reports whether every vCPU settled as it parked (StopFor),
// so that SaveCPUState only reads state: no exit is handled, no device
// runs and no RAM is written, and it may run alongside other work (a
// migration's last RAM pass).
func (m *Machine) StateReadable() bool {
	if !m.pause.isPaused() {
		return false
	}
	for _, v := range m.vcpus {
		if !v.settled.Load() {
			return false
		}
	}
	return true
}

// RestoreCPUState loads a saved state into this machine, whose vCPUs must be
// parked (started paused, or incoming). The run state is not changed: the
// caller decides whether to resume (see RunState.Live).
func (m *Machine) RestoreCPUState(st *CPUState) error {
	if len(st.VCPUs) != len(m.vcpus) {
		return fmt.Errorf("restore state: %d vCPUs saved, this machine has %d", len(st.VCPUs), len(m.vcpus))
	}
	if !m.pause.isPaused() {
		return errors.New("restore state: the vCPUs are running")
	}
	if err := m.vm.RestoreState(st.VM); err != nil {
		return err
	}
	for i, v := range m.vcpus {
		// Only state ioctls, no KVM_RUN: issued from this thread while
		// the vCPU's own is parked (a hop to it costs more than the
		// writes on a nested host).
		if err := v.cpu.RestoreState(st.VCPUs[i]); err != nil {
			return err
		}
	}
	m.Clock.Set(st.ClockNS)
	m.pm.mu.Lock()
	m.pm.status, m.pm.enable, m.pm.cnt = st.PMStatus, st.PMEnable, st.PMCnt
	m.pm.mu.Unlock()
	return nil
}

// WarmUpRestore reads every vCPU's state of an incoming machine and writes
// it back unchanged, before the migration's pause: the first restore in a
// process costs up to twice a later one (cold code and kernel paths), and
// the real one is inside the pause. The vCPUs of an incoming machine have
// never run, so there is nothing half done to finish, and the real restore
// overwrites everything this writes.
func (m *Machine) WarmUpRestore() error {
	if st, _ := m.state.get(); st != StateInMigrate {
		return fmt.Errorf("warm-up restore: the machine is %s, not inmigrate", st)
	}
	if !m.pause.isPaused() {
		return errors.New("warm-up restore: the vCPUs are running")
	}
	for _, v := range m.vcpus {
		vs, err := v.cpu.ReadState()
		if err != nil {
			return fmt.Errorf("warm-up restore: %w", err)
		}
		if err := v.cpu.RestoreState(vs); err != nil {
			return fmt.Errorf("warm-up restore: %w", err)
		}
	}
	return nil
}
