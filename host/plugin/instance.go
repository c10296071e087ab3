package plugin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin/meter"
)

// Clock is the VM clock seen by plugins (clock_ns, timer_arm). It stops
// while the VM is paused; VMClock implements it.
type Clock interface {
	// Now returns the VM time in nanoseconds.
	Now() int64
	// AfterFunc calls f in its own goroutine once Now() >= deadlineNS. It
	// must never call f synchronously. stop prevents the call if it has not
	// started and reports whether it did so.
	AfterFunc(deadlineNS int64, f func()) (stop func() bool)
}

// Host is what the machine provides to one device instance.
type Host interface {
	// Memory returns guest RAM. It is called once, by Instantiate; nil
	// means the device has no guest RAM and its guest accesses fail with
	// ErrOutOfBounds.
	Memory() *guestmem.Memory
	// SetIRQ drives the device's line-th interrupt line (an index into the
	// IRQ list the machine type gives the device).
	SetIRQ(line int, level bool) error
	// Clock returns the VM clock.
	Clock() Clock
	// Backend returns the backend the VM configuration attached to this
	// device under name. The instance does not close it.
	Backend(kind abi.BackendKind, name string) (Backend, error)
}

// InstanceConfig configures one device instance.
type InstanceConfig struct {
	// Name is the instance id, unique in the VM (e.g. "serial0"); it
	// appears in log lines and messages.
	Name string
	// Host provides guest memory, interrupts, the clock and backends.
	Host Host
	// Logger receives the device's log messages and stdout/stderr. Nil
	// means the runtime's logger.
	Logger hclog.Logger
	// Migration receives migration blockers and subscriptions. Nil means a
	// registry private to the instance.
	Migration *MigrationRegistry
	// Preserved receives fd_preserve records. Nil means a private registry.
	Preserved *FDRegistry
}

// Region is one region a device registered in dev_realize; its index in
// Instance.Regions is the region id passed to MMIO/PIO calls.
type Region struct {
	Kind abi.RegionKind
	Size uint64
}

// BackendRef describes a backend a device opened.
type BackendRef struct {
	ID   int
	Kind abi.BackendKind
	Name string
}

type phase int

const (
	phaseInit     phase = iota // _initialize
	phaseDescribe              // inside dev_describe
	phaseDescribed
	phaseRealize // inside dev_realize
	phaseRunning
	phaseClosed
)

// export indices into Instance.fns.
type export int

const (
	exInitialize export = iota
	exDescribe
	exRealize
	exReset
	exMMIORead
	exMMIOWrite
	exPIORead
	exPIOWrite
	exPreSave
	exPostLoad
	exSubsectionNeeded
	exTimer
	exBackendReady
	exIdle
	exMigrationEvent
	numExports
)

var exportNames = [numExports]string{
	exInitialize: initExport, exDescribe: abi.ExDescribe, exRealize: abi.ExRealize, exReset: abi.ExReset,
	exMMIORead: abi.ExMMIORead, exMMIOWrite: abi.ExMMIOWrite, exPIORead: abi.ExPIORead, exPIOWrite: abi.ExPIOWrite,
	exPreSave: abi.ExPreSave, exPostLoad: abi.ExPostLoad, exSubsectionNeeded: abi.ExSubsectionNeeded,
	exTimer: abi.ExTimer, exBackendReady: abi.ExBackendReady, exIdle: abi.ExIdle, exMigrationEvent: abi.ExMigrationEvent,
}

// callCtx is the context passed to every export call; host functions find
// their instance in it without a map lookup.
type callCtx struct {
	context.Context
	inst *Instance
}

func instanceOf(ctx context.Context) *Instance {
	if c, ok := ctx.(*callCtx); ok {
		return c.inst
	}
	return nil
}

// Instance is one device: an instantiated plugin module with its
// properties, regions, vmstate sections, timers and backends. Export calls
// are serialized by the instance lock; all methods are safe for concurrent
// use.
type Instance struct {
	mod       *Module
	rt        *Runtime
	name      string
	host      Host
	mem       *guestmem.Memory
	clock     Clock
	log       hclog.Logger
	migration *MigrationRegistry
	preserved *FDRegistry
	stdout    *logWriter
	stderr    *logWriter

	failed      atomic.Bool
	failReason  atomic.Pointer[error]
	guestErrors atomic.Uint64

	mu      sync.Mutex // held for every export call and by host functions
	ctx     *callCtx
	wmod    api.Module
	memory  api.Memory
	fns     [numExports]api.Function
	fuel    api.MutableGlobal // nil when the module is not metered
	stack   []uint64
	current export // export being called, for messages
	callErr string // the last error the plugin logged during this call
	failErr error
	phase   phase
	// changes counts what may have changed the plugin's memory or the
	// answers of its save hooks: export calls other than the save hooks,
	// host function calls other than log (inside any export, the save
	// hooks' included), and writes to its memory. StateChanges reads it.
	changes uint64

	info        *abi.DeviceInfo
	props       map[string]PropertyValue
	regions     []Region
	sections    []*abi.Section
	backends    []*backendSlot
	timers      [abi.MaxTimers]timerSlot
	realizeErrs []error
	sg          sgScratch

	// held defers asynchronous calls (backend readiness, timers) while a
	// migration saves or hands over the device (hold.go).
	held       bool
	heldTimers []heldTimer
}

type timerSlot struct {
	gen  uint64
	stop func() bool
}

// Instantiate creates a device instance: it instantiates the module, runs
// _initialize and dev_describe, and validates the declared DeviceInfo. On
// any failure the instance is closed and an error says why.
func (m *Module) Instantiate(ctx context.Context, cfg InstanceConfig) (*Instance, error) {
	if cfg.Host == nil {
		return nil, fmt.Errorf("plugin %s: instance %q: no Host", m.name, cfg.Name)
	}
	if cfg.Name == "" {
		return nil, fmt.Errorf("plugin %s: instance needs a name", m.name)
	}
	r := m.rt
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("plugin %s: instance %s: runtime closed", m.name, cfg.Name)
	}
	r.nextID++
	id := r.nextID
	r.mu.Unlock()

	log := cfg.Logger
	if log == nil {
		log = r.log
	}
	log = log.With("device", cfg.Name, "plugin", m.name)
	i := &Instance{
		mod: m, rt: r, name: cfg.Name, host: cfg.Host, mem: cfg.Host.Memory(), clock: cfg.Host.Clock(),
		log: log, migration: cfg.Migration, preserved: cfg.Preserved,
		stack: make([]uint64, 8), props: map[string]PropertyValue{},
	}
	if i.migration == nil {
		i.migration = NewMigrationRegistry()
	}
	if i.preserved == nil {
		i.preserved = NewFDRegistry()
	}
	if i.clock == nil {
		return nil, fmt.Errorf("plugin %s: instance %s: Host.Clock returned nil", m.name, cfg.Name)
	}
	i.stdout = newLogWriter(log, "stdout")
	i.stderr = newLogWriter(log, "stderr")
	i.ctx = &callCtx{Context: context.Background(), inst: i}

	modCfg := wazero.NewModuleConfig().
		WithName(fmt.Sprintf("%s/%s#%d", m.name, cfg.Name, id)).
		WithStartFunctions(). // _initialize runs under the fuel budget below
		WithStdout(i.stdout).WithStderr(i.stderr).
		WithSysNanotime().WithSysWalltime().WithRandSource(rand.Reader)
	instCtx := experimental.WithMemoryAllocator(i.ctx, mmapAllocator{limit: uint64(r.cfg.MemoryLimitPages) << 16})
	wmod, err := r.rt.InstantiateModule(instCtx, m.compiled, modCfg)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: instantiate %s: %w", m.name, cfg.Name, err)
	}
	i.wmod = wmod
	i.memory = wmod.Memory()
	for ex := export(0); ex < numExports; ex++ {
		i.fns[ex] = wmod.ExportedFunction(exportNames[ex])
	}
	if m.metered {
		fuel, ok := wmod.ExportedGlobal(meter.GlobalName).(api.MutableGlobal)
		if !ok || fuel.Type() != api.ValueTypeI64 {
			_ = wmod.Close(ctx)
			return nil, fmt.Errorf("plugin %s: instance %s: the instrumented module lacks its fuel global %s (stale cache?)", m.name, cfg.Name, meter.GlobalName)
		}
		i.fuel = fuel
	}
	r.mu.Lock()
	r.instances[i] = struct{}{}
	r.mu.Unlock()

	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.callLocked(exInitialize); err != nil {
		i.closeLocked()
		return nil, fmt.Errorf("plugin %s: %w", m.name, i.failErr)
	}
	i.phase = phaseDescribe
	st, err := i.callStatusLocked(exDescribe)
	if err != nil {
		i.closeLocked()
		return nil, fmt.Errorf("plugin %s: %w", m.name, i.failErr)
	}
	switch {
	case st != abi.OK:
		err = fmt.Errorf("%s returned %v%s", abi.ExDescribe, st, i.joinedRealizeErrs())
	case i.info == nil:
		err = fmt.Errorf("%s did not call %s%s", abi.ExDescribe, abi.FnDeviceDeclare, i.joinedRealizeErrs())
	}
	if err != nil {
		i.closeLocked()
		return nil, fmt.Errorf("device %s (plugin %s): %w", cfg.Name, m.name, err)
	}
	i.phase = phaseDescribed
	i.log = i.log.With("type", i.info.Name)
	return i, nil
}

// Name returns the instance id.
func (i *Instance) Name() string { return i.name }

// Module returns the module the instance runs.
func (i *Instance) Module() *Module { return i.mod }

// Info returns the DeviceInfo the plugin declared.
func (i *Instance) Info() *abi.DeviceInfo { return i.info }

// Err returns why the instance failed, or nil while it works.
func (i *Instance) Err() error {
	if p := i.failReason.Load(); p != nil {
		return *p
	}
	return nil
}

// GuestErrors returns how many guest_load calls hit a bad address.
func (i *Instance) GuestErrors() uint64 { return i.guestErrors.Load() }

// Realize resolves the properties (declared defaults, then each layer of
// overrides in order: typically machine-type compat overrides, then user
// overrides) and calls dev_realize. An unknown property, a value of the
// wrong type or out of range, a failing dev_realize or a refused
// registration closes the instance and returns an error naming the cause.
func (i *Instance) Realize(layers ...PropertyValues) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.phase != phaseDescribed {
		return fmt.Errorf("device %s: realize: wrong phase (already realized, failed or closed)", i.name)
	}
	props, err := resolveProperties(i.info, layers)
	if err != nil {
		i.closeLocked()
		return fmt.Errorf("device %s: %w", i.name, err)
	}
	i.props = props
	i.phase = phaseRealize
	st, err := i.callStatusLocked(exRealize)
	if err != nil {
		i.closeLocked()
		return i.failErr
	}
	if st != abi.OK || len(i.realizeErrs) > 0 {
		err := fmt.Errorf("device %s (%s): %s returned %v%s", i.name, i.info.Name, abi.ExRealize, st, i.joinedRealizeErrs())
		i.closeLocked()
		return err
	}
	i.phase = phaseRunning
	return nil
}

func (i *Instance) joinedRealizeErrs() string {
	if len(i.realizeErrs) == 0 {
		return ""
	}
	msgs := make([]string, len(i.realizeErrs))
	for k, e := range i.realizeErrs {
		msgs[k] = e.Error()
	}
	return ": " + strings.Join(msgs, "; ")
}

// refuse records why a host function refused a registration during
// describe or realize, so Realize can report it, and returns st.
func (i *Instance) refuse(st abi.Status, format string, args ...any) abi.Status {
	err := fmt.Errorf(format, args...)
	if i.phase == phaseDescribe || i.phase == phaseRealize {
		i.realizeErrs = append(i.realizeErrs, err)
	}
	i.log.Warn("plugin request refused", "error", err)
	return st
}

// Regions returns the regions registered in dev_realize.
func (i *Instance) Regions() []Region {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]Region(nil), i.regions...)
}

// Sections returns the vmstate sections registered in dev_realize, each
// validated against the plugin's memory. Fields gated on a property are
// included; FieldExists tells whether one is on the wire.
func (i *Instance) Sections() []*abi.Section {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]*abi.Section(nil), i.sections...)
}

// FieldExists reports whether a field of one of the instance's sections
// exists given the resolved properties (fields without a condition always
// exist).
func (i *Instance) FieldExists(f *abi.Field) bool {
	if f.Exists == nil {
		return true
	}
	i.mu.Lock()
	v, ok := i.props[f.Exists.Prop]
	i.mu.Unlock()
	return ok && f.Exists.Holds(v.Int)
}

// Properties returns the resolved property values.
func (i *Instance) Properties() map[string]PropertyValue {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make(map[string]PropertyValue, len(i.props))
	for k, v := range i.props {
		out[k] = v
	}
	return out
}

// Backends returns the backends the device opened.
func (i *Instance) Backends() []BackendRef {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]BackendRef, len(i.backends))
	for k, b := range i.backends {
		out[k] = BackendRef{ID: k, Kind: b.kind, Name: b.name}
	}
	return out
}

// sizeMask returns all ones for an access of size bytes.
func sizeMask(size int) uint64 {
	if size >= 8 || size <= 0 {
		return ^uint64(0)
	}
	return 1<<(8*uint(size)) - 1
}

// MMIORead calls dev_mmio_read. A failed instance reads all ones.
func (i *Instance) MMIORead(region int, off uint64, size int) uint64 {
	i.mu.Lock()
	if i.phase != phaseRunning {
		i.mu.Unlock()
		return sizeMask(size)
	}
	s := i.stack
	s[0], s[1], s[2] = uint64(uint32(region)), off, uint64(uint32(size))
	if i.callLocked(exMMIORead) != nil {
		i.mu.Unlock()
		return sizeMask(size)
	}
	v := s[0] & sizeMask(size)
	i.mu.Unlock()
	return v
}

// MMIOWrite calls dev_mmio_write. Writes to a failed instance are ignored.
func (i *Instance) MMIOWrite(region int, off uint64, size int, v uint64) {
	i.mu.Lock()
	if i.phase == phaseRunning {
		s := i.stack
		s[0], s[1], s[2], s[3] = uint64(uint32(region)), off, uint64(uint32(size)), v&sizeMask(size)
		_ = i.callLocked(exMMIOWrite)
	}
	i.mu.Unlock()
}

// PIORead calls dev_pio_read. A failed instance reads all ones.
func (i *Instance) PIORead(region int, off uint32, size int) uint32 {
	i.mu.Lock()
	if i.phase != phaseRunning {
		i.mu.Unlock()
		return uint32(sizeMask(size))
	}
	s := i.stack
	s[0], s[1], s[2] = uint64(uint32(region)), uint64(off), uint64(uint32(size))
	if i.callLocked(exPIORead) != nil {
		i.mu.Unlock()
		return uint32(sizeMask(size))
	}
	v := uint32(s[0] & sizeMask(size))
	i.mu.Unlock()
	return v
}

// PIOWrite calls dev_pio_write. Writes to a failed instance are ignored.
func (i *Instance) PIOWrite(region int, off uint32, size int, v uint32) {
	i.mu.Lock()
	if i.phase == phaseRunning {
		s := i.stack
		s[0], s[1], s[2], s[3] = uint64(uint32(region)), uint64(off), uint64(uint32(size)), uint64(v)&sizeMask(size)
		_ = i.callLocked(exPIOWrite)
	}
	i.mu.Unlock()
}

// Reset calls dev_reset.
func (i *Instance) Reset() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.runningLocked(); err != nil {
		return err
	}
	if err := i.callLocked(exReset); err != nil {
		return i.failErr
	}
	return nil
}

// Idle calls dev_idle if the plugin exports it.
func (i *Instance) Idle() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.phase == phaseRunning && i.fns[exIdle] != nil {
		_ = i.callLocked(exIdle)
	}
}

// PreSave calls dev_pre_save before the host reads the vmstate fields.
func (i *Instance) PreSave() error { return i.statusCall(exPreSave) }

// PostLoad calls dev_post_load after the host wrote the vmstate fields of
// a section of version versionID.
func (i *Instance) PostLoad(versionID uint32) error {
	return i.statusCall(exPostLoad, uint64(versionID))
}

// MigrationEvent calls dev_migration_event; a non-OK status is returned as
// an error (only abi.MigrationSetup may veto). Without the export it does
// nothing.
func (i *Instance) MigrationEvent(ev abi.MigrationEvent, mode abi.MigrationMode) error {
	if i.fns[exMigrationEvent] == nil {
		return nil
	}
	return i.statusCall(exMigrationEvent, uint64(uint32(ev)), uint64(uint32(mode)))
}

// SubsectionNeeded calls dev_subsection_needed(neededID). A failed
// instance needs nothing.
func (i *Instance) SubsectionNeeded(neededID int32) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.runningLocked() != nil {
		return false
	}
	i.stack[0] = uint64(uint32(neededID))
	if i.callLocked(exSubsectionNeeded) != nil {
		return false
	}
	return uint32(i.stack[0]) != 0
}

func (i *Instance) statusCall(ex export, args ...uint64) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.runningLocked(); err != nil {
		return err
	}
	copy(i.stack, args)
	st, err := i.callStatusLocked(ex)
	if err != nil {
		return i.failErr
	}
	if st != abi.OK {
		// The SDK logs the device's error before it returns a failing
		// status: that is the reason a user needs.
		if i.callErr != "" {
			return fmt.Errorf("device %s: %s returned %v: %s", i.name, exportNames[ex], st, i.callErr)
		}
		return fmt.Errorf("device %s: %s returned %v", i.name, exportNames[ex], st)
	}
	return nil
}

func (i *Instance) runningLocked() error {
	switch {
	case i.failErr != nil:
		return i.failErr
	case i.phase != phaseRunning:
		return fmt.Errorf("device %s is not running (not realized or closed)", i.name)
	}
	return nil
}

// ReadMemory copies n bytes of plugin memory at off (vmstate fields).
func (i *Instance) ReadMemory(off, n uint32) ([]byte, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.failErr != nil || i.wmod == nil {
		return nil, fmt.Errorf("device %s: read plugin memory: instance not running: %v", i.name, i.failErr)
	}
	b, ok := i.memory.Read(off, n)
	if !ok {
		return nil, fmt.Errorf("device %s: read plugin memory [%#x, +%#x): outside %#x bytes", i.name, off, n, i.memory.Size())
	}
	return append([]byte(nil), b...), nil
}

// WriteMemory copies p into plugin memory at off (vmstate fields).
func (i *Instance) WriteMemory(off uint32, p []byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.failErr != nil || i.wmod == nil {
		return fmt.Errorf("device %s: write plugin memory: instance not running: %v", i.name, i.failErr)
	}
	i.changes++
	if !i.memory.Write(off, p) {
		return fmt.Errorf("device %s: write plugin memory [%#x, +%#x): outside %#x bytes", i.name, off, len(p), i.memory.Size())
	}
	return nil
}

// StateChanges returns a count that moves whenever the plugin's memory,
// or what its save hooks would answer, may have changed: on every export
// call other than dev_pre_save and dev_subsection_needed, on every host
// function call (log aside) made by any export, those two included, and on
// every WriteMemory. Two equal readings bracket a stretch in which the
// device's saved state cannot have changed, provided its save hooks are
// idempotent (the ABI's rule): a hook that asks the host anything moves
// the count, so its answer is never reused.
func (i *Instance) StateChanges() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.changes
}

// MemorySize returns the current size of the plugin's linear memory.
func (i *Instance) MemorySize() uint32 {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.memory == nil || i.wmod == nil {
		return 0
	}
	return i.memory.Size()
}

// callLocked calls an export with the parameters already in i.stack. On
// failure the instance is marked failed and the error returned.
func (i *Instance) callLocked(ex export) error {
	if i.failErr != nil {
		return i.failErr
	}
	fn := i.fns[ex]
	if fn == nil {
		return fmt.Errorf("device %s: plugin does not export %s", i.name, exportNames[ex])
	}
	i.current = ex
	i.callErr = ""
	if ex != exPreSave && ex != exSubsectionNeeded {
		i.changes++
	}
	if i.fuel != nil {
		i.fuel.Set(i.budget(ex))
	}
	if err := fn.CallWithStack(i.ctx, i.stack); err != nil {
		i.failLocked(ex, err)
		return i.failErr
	}
	return nil
}

func (i *Instance) callStatusLocked(ex export) (abi.Status, error) {
	if err := i.callLocked(ex); err != nil {
		return abi.ErrFailed, err
	}
	return abi.Status(int32(uint32(i.stack[0]))), nil
}

// budget returns the fuel an export call may burn: more for the setup
// calls than for the running device's.
func (i *Instance) budget(ex export) uint64 {
	switch ex {
	case exInitialize, exDescribe, exRealize:
		return i.rt.cfg.SetupFuel
	}
	return i.rt.cfg.CallFuel
}

// roundDuration keeps two or three significant digits of d.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= 10*time.Microsecond:
		return d.Round(time.Microsecond)
	}
	return d
}

// outOfFuel reports whether the last call trapped because it burned its
// budget: the meter leaves the fuel at -1 then, and nothing else makes it
// negative.
func (i *Instance) outOfFuel() bool {
	return i.fuel != nil && int64(i.fuel.Get()) < 0
}

// failLocked marks the instance failed with the reason behind err, logs it
// once and closes the module.
func (i *Instance) failLocked(ex export, err error) {
	if i.failErr != nil {
		return
	}
	name := exportNames[ex]
	var exit *sys.ExitError
	switch {
	case i.outOfFuel():
		b := i.budget(ex)
		i.failErr = fmt.Errorf("device %s: %s ran past its per-call budget of %d loop iterations (about %v of plugin CPU)", i.name, name, b, roundDuration(fuelTime(b)))
	case errors.As(err, &exit):
		msg := fmt.Sprintf("device %s: plugin exited with code %d in %s", i.name, exit.ExitCode(), name)
		if line := i.stderr.crashLine(); line != "" {
			msg += ": " + line
		}
		i.failErr = errors.New(msg)
	default:
		first, _, _ := strings.Cut(err.Error(), "\n")
		msg := fmt.Sprintf("device %s: trap in %s: %s", i.name, name, first)
		if line := i.stderr.crashLine(); line != "" {
			msg += " after the plugin reported " + strconv.Quote(line)
		}
		i.failErr = errors.New(msg)
	}
	i.failed.Store(true)
	reason := i.failErr
	i.failReason.Store(&reason)
	i.log.Error("device failed; it now reads as all ones and ignores writes", "reason", i.failErr, "detail", err.Error())
	i.shutdownLocked()
}

// recoverLocked, deferred in the goroutines this package starts, turns a
// panic (a bug in a backend or clock, not in the plugin, whose traps wazero
// returns as errors) into the failure of this instance instead of the
// process.
func (i *Instance) recoverLocked(where string) {
	if r := recover(); r != nil {
		if i.failErr == nil {
			i.failErr = fmt.Errorf("device %s: host panic during %s: %v", i.name, where, r)
			i.failed.Store(true)
			reason := i.failErr
			i.failReason.Store(&reason)
			i.log.Error("device failed", "reason", i.failErr)
			i.shutdownLocked()
		}
	}
}

// shutdownLocked stops timers and backend watches, leaves the registries
// and closes the module. The instance keeps its description.
func (i *Instance) shutdownLocked() {
	for id := range i.timers {
		if t := &i.timers[id]; t.stop != nil {
			t.stop()
			t.stop = nil
			t.gen++
		}
	}
	for _, b := range i.backends {
		b.watched.Store(0)
		if w, ok := b.b.(Watchable); ok && b.hooked {
			w.Watch(nil)
		}
	}
	i.migration.removeInstance(i)
	i.preserved.removeInstance(i)
	i.rt.mu.Lock()
	delete(i.rt.instances, i)
	i.rt.mu.Unlock()
	if i.wmod != nil {
		_ = i.wmod.Close(context.Background())
	}
	if i.phase != phaseClosed && i.failErr != nil {
		i.phase = phaseClosed
	}
}

// Close stops the device and releases its module instance. It does not
// close the backends (the machine owns them).
func (i *Instance) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.closeLocked()
	return nil
}

func (i *Instance) closeLocked() {
	if i.phase == phaseClosed && i.wmod == nil {
		return
	}
	i.shutdownLocked()
	i.phase = phaseClosed
	i.wmod = nil
}
