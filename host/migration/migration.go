// Package migration moves a VM's state: snapshots to and from files, and (as
// it grows) live migration and cpr-transfer. It owns the migration state
// machine with QEMU's states and semantics, the parameters and capabilities,
// blockers per mode, and notifiers; the stream format is host/vmstate's.
package migration

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/machine"
	"wasmvmm/host/plugin"
)

// Status is a migration state, named as QEMU's MigrationStatus.
type Status string

// Migration states.
const (
	StatusNone          Status = "none"
	StatusSetup         Status = "setup"
	StatusActive        Status = "active"
	StatusPreSwitchover Status = "pre-switchover"
	StatusDevice        Status = "device"
	StatusCancelling    Status = "cancelling"
	StatusCancelled     Status = "cancelled"
	StatusCompleted     Status = "completed"
	StatusFailed        Status = "failed"
)

// Running is the one "a migration is in progress" predicate: setup, active,
// pre-switchover, device and cancelling all count.
func (s Status) Running() bool {
	switch s {
	case StatusSetup, StatusActive, StatusPreSwitchover, StatusDevice, StatusCancelling:
		return true
	}
	return false
}

// Mode is a migration mode.
type Mode string

// Migration modes.
const (
	ModeNormal      Mode = "normal"
	ModeCPRTransfer Mode = "cpr-transfer"
)

func (m Mode) abi() abi.MigrationMode {
	if m == ModeCPRTransfer {
		return abi.ModeCPRTransfer
	}
	return abi.ModeNormal
}

// Blocker refuses migration in some modes, with a reason users see.
type Blocker struct {
	ID     int
	Modes  []Mode
	Reason string
}

// Config wires a Migrator to its machine.
type Config struct {
	Machine     *machine.Machine
	MachineType string
	// Plugins holds the blockers and notifier subscriptions plugins
	// registered through the ABI.
	Plugins *plugin.MigrationRegistry
	// Preserved holds the descriptors plugins asked to keep across
	// cpr-transfer (fd_preserve); nil means none.
	Preserved *plugin.FDRegistry
	Logger    hclog.Logger
	// Emit sends a QMP event (MIGRATION, MIGRATION_PASS) when the events
	// capability is on; nil drops them.
	Emit func(name string, data map[string]any)
}

// Migrator runs one migration at a time for a machine.
type Migrator struct {
	cfg Config
	log hclog.Logger

	mu        sync.Mutex
	status    Status
	errDesc   string
	started   time.Time
	finished  time.Time
	setupTime time.Duration
	downtime  time.Duration
	ram       RAMInfo
	params    Parameters
	caps      Capabilities
	blockers  []Blocker
	nextBlock int
	notifiers []Notifier
	cancel    context.CancelFunc
	done      chan struct{}

	expectedDowntime time.Duration // live: estimate at the last dirty sync
	throttlePct      int64         // auto-converge's current vCPU throttle
	continueCh       chan struct{} // pre-switchover: migrate-continue
	ramWritten       bool          // incoming: a load has written this machine's RAM
	handedOver       bool          // a cpr-transfer completed: another process runs the guest
}

// errHandedOver refuses what would touch a guest this process handed over.
var errHandedOver = errors.New("the guest was handed over by cpr-transfer and runs in the new process, which shares its RAM and devices; this process must not run, reset or migrate it again: quit it")

// HandedOver reports whether a cpr-transfer from this process completed:
// the guest now runs in the destination process over the same RAM, so
// this one must not resume, reset or migrate it (QEMU leaves that to the
// user; a resumed source would corrupt the running guest).
func (g *Migrator) HandedOver() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.handedOver
}

// New returns an idle Migrator with QEMU's default parameters.
func New(cfg Config) *Migrator {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Plugins == nil {
		cfg.Plugins = plugin.NewMigrationRegistry()
	}
	g := &Migrator{cfg: cfg, log: cfg.Logger, status: StatusNone, params: DefaultParameters(), caps: Capabilities{Preflight: true}}
	g.addRAMBlockers() // cpr.go
	if cfg.Machine != nil {
		cfg.Machine.BeforeClose(g.stopBeforeClose)
	}
	return g
}

// closeWait bounds how long a closing machine waits for a cancelled
// migration to end.
const closeWait = 10 * time.Second

// stopBeforeClose cancels a running migration and waits for it to end, so
// the machine can release the guest RAM it reads. It runs when the machine
// closes (Machine.BeforeClose).
func (g *Migrator) stopBeforeClose() error {
	g.Cancel()
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	if err := g.Wait(ctx); err != nil {
		return fmt.Errorf("migration still running %v after cancel: %w", closeWait, err)
	}
	return nil
}

// Status returns the current migration status.
func (g *Migrator) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.status
}

// setStatus changes the status and emits MIGRATION when events are on.
func (g *Migrator) setStatus(s Status) {
	g.mu.Lock()
	g.status = s
	events := g.caps.Events
	g.mu.Unlock()
	if events && g.cfg.Emit != nil {
		g.cfg.Emit("MIGRATION", map[string]any{"status": string(s)})
	}
}

// AddBlocker registers a host blocker for modes (nil: every mode) and
// returns its id.
func (g *Migrator) AddBlocker(reason string, modes ...Mode) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nextBlock++
	g.blockers = append(g.blockers, Blocker{ID: g.nextBlock, Modes: modes, Reason: reason})
	return g.nextBlock
}

// RemoveBlocker removes a host blocker.
func (g *Migrator) RemoveBlocker(id int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, b := range g.blockers {
		if b.ID == id {
			g.blockers = append(g.blockers[:i], g.blockers[i+1:]...)
			return
		}
	}
}

// BlockedReasons lists every reason migration in mode is refused, host
// blockers and plugin blockers alike, sorted.
func (g *Migrator) BlockedReasons(mode Mode) []string {
	g.mu.Lock()
	var out []string
	for _, b := range g.blockers {
		if len(b.Modes) == 0 || containsMode(b.Modes, mode) {
			out = append(out, b.Reason)
		}
	}
	g.mu.Unlock()
	for _, b := range g.cfg.Plugins.Blockers(mode.abi()) {
		out = append(out, fmt.Sprintf("%s: %s", b.Device, b.Reason))
	}
	sort.Strings(out)
	return out
}

func containsMode(ms []Mode, m Mode) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// Notifier is told about migrations in its modes. Setup may veto by
// returning an error; Done and Failed cannot.
type Notifier struct {
	Name  string
	Modes []Mode // nil: every mode
	Func  func(ev abi.MigrationEvent, mode Mode) error
}

// AddNotifier registers a host notifier.
func (g *Migrator) AddNotifier(n Notifier) {
	g.mu.Lock()
	g.notifiers = append(g.notifiers, n)
	g.mu.Unlock()
}

// notify tells host notifiers and subscribed plugins; for setup the first
// veto is returned.
func (g *Migrator) notify(ev abi.MigrationEvent, mode Mode) error {
	g.mu.Lock()
	ns := append([]Notifier(nil), g.notifiers...)
	g.mu.Unlock()
	var errs []error
	for _, n := range ns {
		if len(n.Modes) > 0 && !containsMode(n.Modes, mode) {
			continue
		}
		if err := n.Func(ev, mode); err != nil {
			if ev == abi.MigrationSetup {
				return fmt.Errorf("%s vetoed the migration: %w", n.Name, err)
			}
			errs = append(errs, err)
		}
	}
	if err := g.cfg.Plugins.Notify(ev, mode.abi()); err != nil {
		if ev == abi.MigrationSetup {
			return fmt.Errorf("vetoed: %w", err)
		}
		errs = append(errs, err)
	}
	for _, err := range errs {
		g.log.Warn("migration notifier failed", "event", ev, "error", err)
	}
	return nil
}

// begin claims the migrator for a new outgoing migration.
func (g *Migrator) begin(mode Mode) (context.Context, error) {
	g.mu.Lock()
	if g.handedOver {
		g.mu.Unlock()
		return nil, errHandedOver
	}
	if g.status.Running() {
		st := g.status
		g.mu.Unlock()
		return nil, fmt.Errorf("There's a migration process in progress (status %s)", st)
	}
	g.mu.Unlock()
	if reasons := g.BlockedReasons(mode); len(reasons) > 0 {
		return nil, fmt.Errorf("disallowing migration: %s", strings.Join(reasons, "; "))
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.mu.Lock()
	g.cancel = cancel
	g.errDesc = ""
	g.started = time.Now()
	g.finished = time.Time{}
	g.setupTime, g.downtime = 0, 0
	g.expectedDowntime, g.throttlePct = 0, 0
	g.continueCh = make(chan struct{}, 1)
	g.ram = RAMInfo{}
	g.done = make(chan struct{})
	g.mu.Unlock()
	g.setStatus(StatusSetup)
	if err := g.notify(abi.MigrationSetup, mode); err != nil {
		g.fail(err)
		cancel()
		return nil, err
	}
	return ctx, nil
}

// recoverSource ends an outgoing migration that failed or was cancelled
// (what names it in the log): the source takes back the disks it gave up,
// then, if it stopped the guest, resumes the run state it had (prev).
// Disks it cannot take back mean the destination most likely loaded, took
// them and resumed, and only its completion message was lost: the guest
// lives there, so this side leaves it stopped (postmigrate).
func (g *Migrator) recoverSource(ctx context.Context, err error, what string, mode Mode, stopped bool, prev machine.RunState, gaveUp []ownedDisk) {
	m := g.cfg.Machine
	if aerr := activateDisks(gaveUp); aerr != nil {
		err = fmt.Errorf("%w; and the source could not take its disks back (the destination may own the guest now): %v", err, aerr)
		g.log.Error(what+" failed and the disks stay with someone else; the guest stays stopped", "error", err)
		if stopped {
			if rerr := m.EnterRunState(machine.StatePostMigrate); rerr != nil {
				g.log.Warn("postmigrate", "error", rerr)
			}
		}
		g.fail(err)
		g.finishDone()
		g.notify(abi.MigrationFailed, mode)
		return
	}
	if stopped {
		if rerr := m.EnterRunState(prev); rerr != nil {
			g.log.Error("restoring the run state after a failed "+what, "state", prev, "error", rerr)
		}
	}
	if errors.Is(err, errCancelled) || ctx.Err() != nil {
		g.finish(StatusCancelled)
	} else {
		g.log.Error(what+" failed; the guest stays here", "error", err)
		g.fail(err)
		g.finishDone()
	}
	g.notify(abi.MigrationFailed, mode)
}

// fail records a failure.
func (g *Migrator) fail(err error) {
	g.mu.Lock()
	g.errDesc = err.Error()
	g.finished = time.Now()
	g.mu.Unlock()
	g.setStatus(StatusFailed)
}

// finish closes the migration with a final status.
func (g *Migrator) finish(s Status) {
	g.mu.Lock()
	g.finished = time.Now()
	done := g.done
	g.mu.Unlock()
	g.setStatus(s)
	if done != nil {
		close(done)
	}
}

// Cancel asks a running migration to stop; the source keeps (or gets back)
// its run state. Cancelling when nothing runs is a no-op, as in QEMU.
func (g *Migrator) Cancel() {
	g.mu.Lock()
	running := g.status.Running()
	cancel := g.cancel
	g.mu.Unlock()
	if running && cancel != nil {
		g.setStatus(StatusCancelling)
		cancel()
	}
}

// Wait blocks until the current migration (if any) has ended.
func (g *Migrator) Wait(ctx context.Context) error {
	g.mu.Lock()
	done := g.done
	g.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errCancelled marks a migration stopped by migrate_cancel.
var errCancelled = errors.New("migration cancelled")

// RAMInfo is the "ram" member of query-migrate.
type RAMInfo struct {
	Transferred     int64   `json:"transferred"`
	Remaining       int64   `json:"remaining"`
	Total           int64   `json:"total"`
	Duplicate       int64   `json:"duplicate"`
	Normal          int64   `json:"normal"`
	NormalBytes     int64   `json:"normal-bytes"`
	Mbps            float64 `json:"mbps"`
	DirtySyncCount  int64   `json:"dirty-sync-count"`
	DirtyPagesRate  int64   `json:"dirty-pages-rate"`
	PagesPerSecond  int64   `json:"pages-per-second"`
	PageSize        int64   `json:"page-size"`
	PostcopyReqs    int64   `json:"postcopy-requests"`
	MultifdBytes    int64   `json:"multifd-bytes"`
	DirtySyncMissed int64   `json:"dirty-sync-missed-zero-copy"`
}

// Info is the result of query-migrate.
type Info struct {
	Status           Status   `json:"status,omitempty"`
	RAM              *RAMInfo `json:"ram,omitempty"`
	TotalTime        *int64   `json:"total-time,omitempty"`
	ExpectedDowntime *int64   `json:"expected-downtime,omitempty"`
	Downtime         *int64   `json:"downtime,omitempty"`
	SetupTime        *int64   `json:"setup-time,omitempty"`
	ErrorDesc        string   `json:"error-desc,omitempty"`
	BlockedReasons   []string `json:"blocked-reasons,omitempty"`
	ThrottlePct      *int64   `json:"cpu-throttle-percentage,omitempty"`
}

// Query returns query-migrate's answer.
func (g *Migrator) Query() Info {
	reasons := g.BlockedReasons(g.Parameters().Mode)
	g.mu.Lock()
	defer g.mu.Unlock()
	info := Info{BlockedReasons: reasons}
	if g.status == StatusNone {
		return info
	}
	info.Status = g.status
	ram := g.ram
	ram.PageSize = 4096
	info.RAM = &ram
	end := g.finished
	if end.IsZero() {
		end = time.Now()
	}
	total := end.Sub(g.started).Milliseconds()
	info.TotalTime = &total
	setup := g.setupTime.Milliseconds()
	info.SetupTime = &setup
	if g.status == StatusCompleted {
		dt := g.downtime.Milliseconds()
		info.Downtime = &dt
	} else {
		exp := g.params.DowntimeLimit
		if g.expectedDowntime > 0 {
			exp = g.expectedDowntime.Milliseconds()
		}
		info.ExpectedDowntime = &exp
	}
	if g.throttlePct > 0 {
		pct := g.throttlePct
		info.ThrottlePct = &pct
	}
	if g.status == StatusFailed {
		info.ErrorDesc = g.errDesc
	}
	return info
}

// capabilities returns the current capabilities.
func (g *Migrator) capabilities() Capabilities {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.caps
}

// ioTimeout is how long a socket may make no progress before the migration
// fails (x-io-timeout).
func (g *Migrator) ioTimeout() time.Duration {
	return time.Duration(g.Parameters().IOTimeout) * time.Millisecond
}

// emitPass sends MIGRATION_PASS when events are on.
func (g *Migrator) emitPass(pass int64) {
	if g.capabilities().Events && g.cfg.Emit != nil {
		g.cfg.Emit("MIGRATION_PASS", map[string]any{"pass": pass})
	}
}

// Continue releases a migration paused in pre-switchover (QMP
// migrate-continue); state must name the state it is paused in.
func (g *Migrator) Continue(state Status) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.status != state {
		return fmt.Errorf("Migration not in expected state: %s", g.status)
	}
	if state != StatusPreSwitchover {
		return fmt.Errorf("migrate-continue: state %s cannot be continued", state)
	}
	select {
	case g.continueCh <- struct{}{}:
	default:
	}
	return nil
}

// waitContinue blocks in pre-switchover until Continue or cancel.
func (g *Migrator) waitContinue(ctx context.Context) error {
	g.mu.Lock()
	ch := g.continueCh
	g.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return errCancelled
	}
}
