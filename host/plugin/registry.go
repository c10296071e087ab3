package plugin

import (
	"errors"
	"sort"
	"sync"

	"wasmvmm/abi"
)

// Blocker is a migration blocker a device registered.
type Blocker struct {
	ID     int32
	Device string // instance name
	Modes  abi.MigrationMode
	Reason string
}

// Subscription is a device's interest in migration events.
type Subscription struct {
	Instance *Instance
	Events   abi.MigrationEvent
	Modes    abi.MigrationMode
}

// MigrationRegistry holds the migration blockers and event subscriptions of
// the devices of one VM. The migration code queries it; it is safe for
// concurrent use.
type MigrationRegistry struct {
	mu       sync.Mutex
	next     int32
	blockers map[int32]blockerEntry
	subs     map[*Instance]Subscription
}

type blockerEntry struct {
	Blocker
	owner *Instance
}

// NewMigrationRegistry returns an empty registry.
func NewMigrationRegistry() *MigrationRegistry {
	return &MigrationRegistry{blockers: map[int32]blockerEntry{}, subs: map[*Instance]Subscription{}}
}

func (r *MigrationRegistry) addBlocker(owner *Instance, modes abi.MigrationMode, reason string) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.next
	r.next++
	r.blockers[id] = blockerEntry{Blocker{ID: id, Device: owner.name, Modes: modes, Reason: reason}, owner}
	return id
}

func (r *MigrationRegistry) removeBlocker(owner *Instance, id int32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.blockers[id]
	if !ok || b.owner != owner {
		return false
	}
	delete(r.blockers, id)
	return true
}

func (r *MigrationRegistry) subscribe(inst *Instance, events abi.MigrationEvent, modes abi.MigrationMode) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if events == 0 || modes == 0 {
		delete(r.subs, inst)
		return
	}
	r.subs[inst] = Subscription{Instance: inst, Events: events, Modes: modes}
}

// removeInstance drops everything inst registered (it failed or closed).
func (r *MigrationRegistry) removeInstance(inst *Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, b := range r.blockers {
		if b.owner == inst {
			delete(r.blockers, id)
		}
	}
	delete(r.subs, inst)
}

// Blockers returns the blockers that apply to mode, ordered by id.
func (r *MigrationRegistry) Blockers(mode abi.MigrationMode) []Blocker {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Blocker
	for _, b := range r.blockers {
		if b.Modes&mode != 0 {
			out = append(out, b.Blocker)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// Subscribers returns the subscriptions for ev in mode, ordered by device.
func (r *MigrationRegistry) Subscribers(ev abi.MigrationEvent, mode abi.MigrationMode) []Subscription {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Subscription
	for _, s := range r.subs {
		if s.Events&ev != 0 && s.Modes&mode != 0 {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Instance.name < out[b].Instance.name })
	return out
}

// Notify calls dev_migration_event on every subscriber of ev in mode and
// returns their errors joined. For abi.MigrationSetup an error is a veto.
func (r *MigrationRegistry) Notify(ev abi.MigrationEvent, mode abi.MigrationMode) error {
	var errs []error
	for _, s := range r.Subscribers(ev, mode) {
		errs = append(errs, s.Instance.MigrationEvent(ev, mode))
	}
	return errors.Join(errs...)
}

// PreservedFD is a backend a device asked to keep across cpr-transfer.
type PreservedFD struct {
	Device      string // instance name
	Name        string // name given by the plugin
	ID          uint32 // id given by the plugin
	BackendName string
	Backend     Backend
}

// FDRegistry records fd_preserve requests; the cpr-transfer code queries
// it. It is safe for concurrent use.
type FDRegistry struct {
	mu  sync.Mutex
	fds []preservedEntry
}

type preservedEntry struct {
	PreservedFD
	owner *Instance
}

// NewFDRegistry returns an empty registry.
func NewFDRegistry() *FDRegistry { return &FDRegistry{} }

func (r *FDRegistry) add(owner *Instance, p PreservedFD) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.fds {
		if e.Device == p.Device && e.Name == p.Name && e.ID == p.ID {
			return false
		}
	}
	r.fds = append(r.fds, preservedEntry{p, owner})
	return true
}

func (r *FDRegistry) removeInstance(inst *Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.fds[:0]
	for _, e := range r.fds {
		if e.owner != inst {
			kept = append(kept, e)
		}
	}
	r.fds = kept
}

// Preserved returns the recorded backends in registration order.
func (r *FDRegistry) Preserved() []PreservedFD {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PreservedFD, len(r.fds))
	for k, e := range r.fds {
		out[k] = e.PreservedFD
	}
	return out
}
