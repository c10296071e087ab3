package machine

import (
	"fmt"
)

// StopFor parks the vCPUs for a migration or snapshot and moves to state
// (finish-migrate, save-vm); it returns the run state to go back to if the
// migration fails. A running guest emits STOP.
func (m *Machine) StopFor(state RunState) (prev RunState, err error) {
	prev, _ = m.state.get()
	if err := m.state.set(state, ""); err != nil {
		return prev, err
	}
	// The state is read next: each vCPU finishes its last exit on its
	// own thread as it parks, so SaveCPUState needs no hop to it.
	m.pause.mu.Lock()
	m.pause.settle = true
	m.pause.mu.Unlock()
	m.parkVCPUs()
	m.holdDevices(true)
	if prev == StateRunning {
		m.Clock.Pause()
		m.state.emit(Event{Name: "STOP"})
	}
	return prev, nil
}

// EnterRunState puts a stopped machine (after a failed or cancelled
// migration, or after loading incoming state) into a run state: running
// resumes the vCPUs (RESUME), paused and postmigrate leave them parked,
// suspended leaves them parked until Wakeup.
func (m *Machine) EnterRunState(to RunState) error {
	switch to {
	case StateRunning:
		if err := m.state.set(StateRunning, ""); err != nil {
			return err
		}
		m.letGo()
		return nil
	case StatePaused, StatePostMigrate, StateInMigrate:
		m.holdDevices(true)
		return m.state.set(to, "")
	case StateSuspended:
		m.holdDevices(false) // a suspended guest's devices run, as in QEMU
		return m.state.set(to, "")
	}
	return fmt.Errorf("cannot enter run state %s", to)
}

// StartIncoming starts the vCPU threads parked in the inmigrate state: the
// machine waits for its state to be loaded.
func (m *Machine) StartIncoming() error {
	if err := m.state.set(StateInMigrate, ""); err != nil {
		return err
	}
	m.pause.set(true)
	m.holdDevices(true) // they act once their state is loaded and the guest runs
	m.started = true
	for _, v := range m.vcpus {
		m.wg.Add(1)
		go m.runVCPU(v)
	}
	return nil
}
