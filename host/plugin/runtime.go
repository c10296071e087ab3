package plugin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"wasmvmm/host/plugin/meter"
)

// Defaults of Config.
const (
	// DefaultMemoryLimitPages caps each instance's linear memory at 64 MiB
	// (1024 pages of 64 KiB). A Go plugin starts at about 2 MiB of linear
	// memory (measured: the test device uses 46 pages after realize), so
	// this leaves a wide margin for devices with buffers.
	DefaultMemoryLimitPages = 1024
	// DefaultCallDeadline is the CPU time of a tight loop an export call
	// may take, turned into a fuel budget at LoopIterationsPerSecond:
	// 1.5e9 loop iterations. Device handlers take microseconds (a register
	// access of the test device burns 3-4 fuel); a call that runs this
	// long is stuck.
	DefaultCallDeadline = time.Second
	// LoopIterationsPerSecond is how many metered loop iterations the
	// tightest loop Go compiles (`for { n++ }`, the "loop" test plugin)
	// runs per second on the development host: BenchmarkFuelBurn measured
	// 0.61-0.63 ns per iteration, 1.6e9/s, rounded down. It converts
	// Config.CallDeadline into fuel and a budget back into the time in
	// failure messages. Code doing more per iteration burns the same
	// budget more slowly (a loop over a Go slice: about 2 ns per iteration;
	// a loop calling a Go function: about 8 ns): the budget bounds the work
	// of a call, and its time only for the tightest code.
	LoopIterationsPerSecond = 1_500_000_000
	// SetupFuelFactor multiplies the per-call budget for _initialize,
	// dev_describe and dev_realize when Config.SetupFuel is zero: the Go
	// runtime's initialization and a device's setup legitimately do more
	// than a register access (the test plugin's _initialize burns about
	// 19,000 fuel, its dev_realize about 600).
	SetupFuelFactor = 4
)

// Config configures a Runtime. The zero value is usable.
type Config struct {
	// Logger receives the runtime's and the plugins' messages. Nil means
	// hclog.NewNullLogger().
	Logger hclog.Logger
	// CacheDir is the compilation cache directory. Empty means
	// $XDG_CACHE_HOME/wasmvmm/wazero or ~/.cache/wasmvmm/wazero. The
	// directory is created with mode 0700; an existing directory owned by
	// this user with wider permissions is tightened to 0700, one owned by
	// another user is refused. Instrumented plugins are cached in its
	// subdirectory meter-v<meter.Version>.
	CacheDir string
	// NoCache disables the compilation cache (every Load instruments and
	// compiles).
	NoCache bool
	// MemoryLimitPages caps each instance's linear memory, in 64 KiB pages.
	// Zero means DefaultMemoryLimitPages.
	MemoryLimitPages uint32
	// CallFuel is the budget of one export call, in fuel units: one unit
	// per loop iteration, and one per entry of a function that calls
	// another before it reaches a loop (package meter). Zero means
	// CallDeadline × LoopIterationsPerSecond.
	CallFuel uint64
	// SetupFuel is the budget of each of _initialize, dev_describe and
	// dev_realize. Zero means SetupFuelFactor × CallFuel.
	SetupFuel uint64
	// CallDeadline is the per-call budget expressed as CPU time of a tight
	// loop; it is only used to compute CallFuel when that is zero. Zero
	// means DefaultCallDeadline.
	CallDeadline time.Duration
	// NoDeadline loads plugins without fuel metering: loops run without a
	// check (about 1 ns per iteration faster), but a plugin that loops
	// forever hangs the calling goroutine (a vCPU) for good. Only for
	// plugins trusted not to loop, and for measuring the meter's cost.
	NoDeadline bool

	// engineChecks compiles unmetered plugins with wazero's own
	// termination checks (WithCloseOnContextDone), the mechanism the meter
	// replaced; only benchmarks set it, to measure the difference.
	engineChecks bool
}

// Runtime is the process-wide plugin runtime: one wazero runtime in
// compiler mode with a compilation cache, WASI without filesystem or
// network, and the host module wasmvmm:host@1.
type Runtime struct {
	cfg      Config
	log      hclog.Logger
	rt       wazero.Runtime
	cache    wazero.CompilationCache
	meterDir string // cache of instrumented modules; empty: none

	mu        sync.Mutex
	modules   map[string]*Module     // by path + content hash
	loading   map[string]*moduleLoad // compilations in progress, by the same key
	instances map[*Instance]struct{}
	nextID    uint64
	closed    bool
}

// NewRuntime creates the runtime. Close releases it.
func NewRuntime(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.MemoryLimitPages == 0 {
		cfg.MemoryLimitPages = DefaultMemoryLimitPages
	}
	if cfg.MemoryLimitPages > 65536 {
		return nil, fmt.Errorf("plugin runtime: memory limit of %d pages exceeds the 4 GiB of a 32-bit memory", cfg.MemoryLimitPages)
	}
	if cfg.CallDeadline <= 0 {
		cfg.CallDeadline = DefaultCallDeadline
	}
	if cfg.CallFuel == 0 {
		cfg.CallFuel = uint64(cfg.CallDeadline.Seconds() * LoopIterationsPerSecond)
	}
	if cfg.SetupFuel == 0 {
		cfg.SetupFuel = cfg.CallFuel * SetupFuelFactor
		if cfg.SetupFuel/SetupFuelFactor != cfg.CallFuel {
			cfg.SetupFuel = math.MaxInt64
		}
	}
	// The meter traps when the fuel goes below zero: budgets are signed.
	cfg.CallFuel = min(max(cfg.CallFuel, 1), math.MaxInt64)
	cfg.SetupFuel = min(cfg.SetupFuel, math.MaxInt64)
	// Without WithCloseOnContextDone wazero neither compiles termination
	// checks nor watches a context per call: the fuel meter stops runaway
	// code instead.
	rc := wazero.NewRuntimeConfigCompiler().
		WithMemoryLimitPages(cfg.MemoryLimitPages).
		WithCloseOnContextDone(cfg.engineChecks)
	r := &Runtime{cfg: cfg, log: cfg.Logger.Named("plugin"), modules: map[string]*Module{}, instances: map[*Instance]struct{}{}}
	if !cfg.NoCache {
		dir, err := cacheDir(cfg.CacheDir)
		if err != nil {
			return nil, err
		}
		// wazero keys cached code by the module's bytes (instrumented or
		// not) and whether it was compiled with termination checks, so
		// every kind shares the directory safely.
		cache, err := wazero.NewCompilationCacheWithDir(dir)
		if err != nil {
			return nil, fmt.Errorf("plugin runtime: compilation cache in %s: %w", dir, err)
		}
		r.cache = cache
		rc = rc.WithCompilationCache(cache)
		r.meterDir = filepath.Join(dir, fmt.Sprintf("meter-v%d", meter.Version))
	}
	r.rt = wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r.rt); err != nil {
		r.closeWazero(ctx)
		return nil, fmt.Errorf("plugin runtime: instantiate WASI: %w", err)
	}
	if err := instantiateHostModule(ctx, r.rt); err != nil {
		r.closeWazero(ctx)
		return nil, fmt.Errorf("plugin runtime: instantiate %s: %w", hostModuleName, err)
	}
	return r, nil
}

// Logger returns the runtime's logger.
func (r *Runtime) Logger() hclog.Logger { return r.log }

// CallDeadline returns the per-call budget in force as CPU time of a
// tight loop (CallFuel / LoopIterationsPerSecond).
func (r *Runtime) CallDeadline() time.Duration { return fuelTime(r.cfg.CallFuel) }

// CallFuel returns the per-call budget in force, in fuel units (loop
// iterations). Zero means plugins run unmetered (Config.NoDeadline).
func (r *Runtime) CallFuel() uint64 {
	if r.cfg.NoDeadline {
		return 0
	}
	return r.cfg.CallFuel
}

// fuelTime converts fuel into the CPU time a tight loop takes to burn it.
func fuelTime(fuel uint64) time.Duration {
	return time.Duration(float64(fuel) / LoopIterationsPerSecond * float64(time.Second))
}

// Close closes every module and instance of the runtime.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	insts := make([]*Instance, 0, len(r.instances))
	for i := range r.instances {
		insts = append(insts, i)
	}
	r.mu.Unlock()
	for _, i := range insts {
		i.Close()
	}
	return r.closeWazero(ctx)
}

func (r *Runtime) closeWazero(ctx context.Context) error {
	err := r.rt.Close(ctx)
	if r.cache != nil {
		err = errors.Join(err, r.cache.Close(ctx))
	}
	return err
}

// cacheDir returns the compilation cache directory, created 0700 and
// checked: it must be a directory owned by this user, not a symlink, and
// not accessible to others (wider permissions are tightened).
func cacheDir(dir string) (string, error) {
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("plugin cache: no XDG_CACHE_HOME and no home directory: %w", err)
			}
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "wasmvmm", "wazero")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("plugin cache %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("plugin cache: create %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("plugin cache: %w", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("plugin cache: %s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return "", fmt.Errorf("plugin cache: %s is owned by uid %d, not by this user (uid %d); refusing to load compiled code from it", dir, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("plugin cache: %s has mode %v and cannot be tightened to 0700: %w", dir, st.Mode().Perm(), err)
		}
	}
	return dir, nil
}
