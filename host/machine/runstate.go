package machine

import (
	"fmt"
	"sync"
	"time"
)

// RunState is a VM run state, named as QEMU names them in query-status.
type RunState string

// Run states.
const (
	StatePrelaunch     RunState = "prelaunch"
	StateRunning       RunState = "running"
	StatePaused        RunState = "paused"
	StateSuspended     RunState = "suspended"
	StateShutdown      RunState = "shutdown"
	StateInternalError RunState = "internal-error"
	StateInMigrate     RunState = "inmigrate"
	StatePostMigrate   RunState = "postmigrate"
	StateFinishMigrate RunState = "finish-migrate"
	StateRestoreVM     RunState = "restore-vm"
	StateSaveVM        RunState = "save-vm"
)

// Live reports whether a guest in this state is considered alive for
// migration purposes: it resumes on the destination (suspended stays
// suspended there, until system_wakeup).
func (s RunState) Live() bool { return s == StateRunning || s == StateSuspended }

// Event is a run-state event for QMP and tests.
type Event struct {
	Name string         // "STOP", "RESUME", "SUSPEND", "WAKEUP", "RESET", "SHUTDOWN"
	Data map[string]any // event data as QEMU sends it, or nil
	// At is when it happened: for RESUME, the moment the vCPUs are let
	// go, taken before it (QEMU sends RESUME before it resumes its vCPUs);
	// the time of emitting when zero.
	At time.Time
}

// runState holds the state with its transition rules and listeners.
type runState struct {
	mu        sync.Mutex
	cond      *sync.Cond
	state     RunState
	reason    string // why the VM stopped, for shutdown/internal-error
	listeners []func(Event)
}

func newRunState() *runState {
	r := &runState{state: StatePrelaunch}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// transitions lists the allowed state changes.
var transitions = map[RunState][]RunState{
	StatePrelaunch:     {StateRunning, StatePaused, StateInMigrate, StateShutdown, StateInternalError, StateFinishMigrate, StatePostMigrate, StateSuspended},
	StateRunning:       {StatePaused, StateSuspended, StateShutdown, StateInternalError, StateFinishMigrate, StateSaveVM, StateRunning},
	StatePaused:        {StateRunning, StateShutdown, StateInternalError, StateFinishMigrate, StateSaveVM, StatePaused, StatePostMigrate, StateSuspended},
	StateSuspended:     {StateRunning, StatePaused, StateShutdown, StateInternalError, StateFinishMigrate, StateSaveVM},
	StateInMigrate:     {StateRunning, StatePaused, StateSuspended, StateShutdown, StateInternalError, StatePostMigrate},
	StateFinishMigrate: {StatePostMigrate, StateRunning, StatePaused, StateSuspended, StateShutdown, StateInternalError},
	StatePostMigrate:   {StateRunning, StatePaused, StateShutdown, StateFinishMigrate},
	StateSaveVM:        {StateRunning, StatePaused, StateSuspended, StatePostMigrate},
	StateRestoreVM:     {StateRunning, StatePaused, StateSuspended},
	StateShutdown:      {StateRunning, StatePaused, StatePrelaunch},
	StateInternalError: {StatePaused, StateRunning, StatePrelaunch},
}

func (r *runState) get() (RunState, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state, r.reason
}

func (r *runState) set(to RunState, reason string) error {
	r.mu.Lock()
	from := r.state
	ok := false
	for _, t := range transitions[from] {
		if t == to {
			ok = true
		}
	}
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("run state %s cannot change to %s", from, to)
	}
	r.state, r.reason = to, reason
	r.cond.Broadcast()
	r.mu.Unlock()
	return nil
}

func (r *runState) emit(ev Event) {
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	r.mu.Lock()
	ls := append([]func(Event){}, r.listeners...)
	r.mu.Unlock()
	for _, l := range ls {
		l(ev)
	}
}
