// Package monitor is the QMP command set of a running VM: it registers the
// machine's commands on a qmp.Server and turns run-state changes into QMP
// events.
package monitor

import (
	"context"
	"fmt"

	"wasmvmm/host/machine"
	"wasmvmm/host/qmp"
)

// Monitor binds a machine to a QMP server.
type Monitor struct {
	srv  *qmp.Server
	m    *machine.Machine
	name string
	mig  *Migration // set by RegisterMigration
}

// StatusInfo is the result of query-status.
type StatusInfo struct {
	Running    bool   `json:"running"`
	SingleStep bool   `json:"singlestep"`
	Status     string `json:"status"`
}

// New registers the VM commands on srv and forwards machine events.
func New(srv *qmp.Server, m *machine.Machine, name string) (*Monitor, error) {
	mon := &Monitor{srv: srv, m: m, name: name}
	cmds := map[string]qmp.Handler{
		"query-status":  qmp.NoArgs(mon.queryStatus),
		"query-name":    qmp.NoArgs(mon.queryName),
		"stop":          qmp.NoArgs(mon.stop),
		"cont":          qmp.NoArgs(mon.cont),
		"system_reset":  qmp.NoArgs(mon.reset),
		"system_wakeup": qmp.NoArgs(mon.wakeup),
		"quit":          qmp.NoArgs(mon.quit),
		"screendump":    qmp.Typed(mon.screendump),
	}
	for name, h := range cmds {
		if err := srv.Register(name, h); err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
	}
	m.OnEvent(func(e machine.Event) {
		data := e.Data
		if data == nil {
			data = map[string]any{}
		}
		srv.EmitAt(e.Name, data, e.At)
	})
	return mon, nil
}

// Register adds another command (migration registers its own).
func (mon *Monitor) Register(name string, h qmp.Handler) error { return mon.srv.Register(name, h) }

func (mon *Monitor) queryStatus(ctx context.Context) (any, error) {
	st, _ := mon.m.State()
	return StatusInfo{Running: st == machine.StateRunning, Status: string(st)}, nil
}

func (mon *Monitor) queryName(ctx context.Context) (any, error) {
	if mon.name == "" {
		return struct{}{}, nil
	}
	return map[string]string{"name": mon.name}, nil
}

func (mon *Monitor) stop(ctx context.Context) (any, error) {
	st, _ := mon.m.State()
	switch st {
	case machine.StateRunning:
		if err := mon.m.Pause(); err != nil {
			return nil, err
		}
	case machine.StateInMigrate:
		// QEMU: stop during an incoming migration means "do not autostart".
		mon.m.SetAutostart(false)
	}
	return struct{}{}, nil
}

func (mon *Monitor) cont(ctx context.Context) (any, error) {
	if mon.mig != nil && mon.mig.G.HandedOver() {
		return nil, qmp.Errorf(qmp.ClassGenericError, "cannot resume: the guest was handed over by cpr-transfer to the new process; quit this one")
	}
	st, _ := mon.m.State()
	switch st {
	case machine.StateInMigrate:
		mon.m.SetAutostart(true)
		return struct{}{}, nil
	case machine.StateSuspended:
		return nil, qmp.Errorf(qmp.ClassGenericError, "The guest is suspended; use system_wakeup")
	case machine.StateShutdown, machine.StateInternalError:
		return nil, qmp.Errorf(qmp.ClassGenericError, "Resetting the Virtual Machine is required")
	case machine.StatePostMigrate:
		if mon.mig != nil {
			// Take the disks back first, as QEMU does on cont.
			if err := mon.mig.G.ResumeAfterMigration(); err != nil {
				return nil, err
			}
			return struct{}{}, nil
		}
	}
	if err := mon.m.Resume(); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (mon *Monitor) reset(ctx context.Context) (any, error) {
	if mon.mig != nil && mon.mig.G.HandedOver() {
		return nil, qmp.Errorf(qmp.ClassGenericError, "cannot reset: the guest was handed over by cpr-transfer to the new process; quit this one")
	}
	if err := mon.m.Reset(); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (mon *Monitor) wakeup(ctx context.Context) (any, error) {
	st, _ := mon.m.State()
	if st != machine.StateSuspended {
		// QEMU answers success and does nothing when not suspended.
		return struct{}{}, nil
	}
	if err := mon.m.Wakeup(); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (mon *Monitor) quit(ctx context.Context) (any, error) {
	qmp.AfterReply(ctx, func() { mon.m.Shutdown("host-qmp-quit", false) })
	return struct{}{}, nil
}
