package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// Defaults of Config.
const (
	// DefaultMemoryLimitPages caps each instance's linear memory at 64 MiB
	// (1024 pages of 64 KiB). A Go plugin starts at about 2 MiB of linear
	// memory (measured: the test device uses 46 pages after realize), so
	// this leaves a wide margin for devices with buffers.
	DefaultMemoryLimitPages = 1024
	// DefaultCallDeadline bounds one export call (including _initialize,
	// dev_describe and dev_realize). Device handlers take microseconds; a
	// call that runs this long is stuck.
	DefaultCallDeadline = time.Second
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
	// another user is refused.
	CacheDir string
	// NoCache disables the compilation cache (every Load compiles).
	NoCache bool
	// MemoryLimitPages caps each instance's linear memory, in 64 KiB pages.
	// Zero means DefaultMemoryLimitPages.
	MemoryLimitPages uint32
	// CallDeadline bounds one export call. Zero means DefaultCallDeadline.
	CallDeadline time.Duration
	// NoDeadline compiles plugins without termination checks and runs no
	// watchdog: an export call costs about 50 ns instead of about 1.2 µs,
	// but a plugin that loops forever hangs the calling goroutine (a vCPU)
	// for good. Only for plugins trusted not to loop.
	NoDeadline bool

	// deadlineMode selects the deadline mechanism; only benchmarks change it.
	deadlineMode deadlineMode
}

// deadlineMode is the mechanism that stops a call that runs too long.
type deadlineMode int

const (
	// deadlineWatchdog: termination checks compiled in
	// (WithCloseOnContextDone), one long-lived cancelable context per
	// instance, and one watchdog goroutine per runtime that cancels the
	// context of an instance whose call sequence number has not moved for a
	// deadline. Per call: two atomic adds.
	deadlineWatchdog deadlineMode = iota
	// deadlinePerCallContext: termination checks compiled in and a
	// context.WithTimeout per call (benchmark comparison only).
	deadlinePerCallContext
	// deadlineNone: no termination checks; an endless loop cannot be
	// stopped (benchmark baseline only).
	deadlineNone
)

// Runtime is the process-wide plugin runtime: one wazero runtime in
// compiler mode with a compilation cache, WASI without filesystem or
// network, the host module wasmvmm:host@1, and the deadline watchdog.
type Runtime struct {
	cfg   Config
	log   hclog.Logger
	rt    wazero.Runtime
	cache wazero.CompilationCache

	mu        sync.Mutex
	modules   map[string]*Module // by path + content hash
	instances map[*Instance]struct{}
	nextID    uint64
	closed    bool

	watch *watchdog
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
	if cfg.NoDeadline {
		cfg.deadlineMode = deadlineNone
	}
	rc := wazero.NewRuntimeConfigCompiler().
		WithMemoryLimitPages(cfg.MemoryLimitPages).
		WithCloseOnContextDone(cfg.deadlineMode != deadlineNone)
	r := &Runtime{cfg: cfg, log: cfg.Logger.Named("plugin"), modules: map[string]*Module{}, instances: map[*Instance]struct{}{}}
	if !cfg.NoCache {
		dir, err := cacheDir(cfg.CacheDir)
		if err != nil {
			return nil, err
		}
		// wazero keys cached code by the module's bytes and whether it was
		// compiled with termination checks, so both kinds share the
		// directory safely.
		cache, err := wazero.NewCompilationCacheWithDir(dir)
		if err != nil {
			return nil, fmt.Errorf("plugin runtime: compilation cache in %s: %w", dir, err)
		}
		r.cache = cache
		rc = rc.WithCompilationCache(cache)
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
	if cfg.deadlineMode == deadlineWatchdog {
		r.watch = newWatchdog(cfg.CallDeadline)
	}
	return r, nil
}

// Logger returns the runtime's logger.
func (r *Runtime) Logger() hclog.Logger { return r.log }

// CallDeadline returns the per-call deadline in force.
func (r *Runtime) CallDeadline() time.Duration { return r.cfg.CallDeadline }

// Close closes every module and instance of the runtime and stops the
// watchdog.
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
	if r.watch != nil {
		r.watch.stop()
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

// watchdog stops calls that run past the deadline. It samples every
// registered instance's call sequence number (odd while a call runs) a few
// times per deadline; an instance seen in the same call for at least the
// deadline is killed by canceling its context, which wazero's compiled
// termination checks observe at the next loop back-edge or function entry.
type watchdog struct {
	deadline time.Duration
	period   time.Duration

	mu        sync.Mutex
	instances map[*Instance]*watchState
	done      chan struct{}
	wg        sync.WaitGroup
}

type watchState struct {
	seq   uint64
	since time.Time
}

func newWatchdog(deadline time.Duration) *watchdog {
	period := deadline / 4
	period = max(period, 5*time.Millisecond)
	period = min(period, 250*time.Millisecond)
	w := &watchdog{deadline: deadline, period: period, instances: map[*Instance]*watchState{}, done: make(chan struct{})}
	w.wg.Add(1)
	go w.run()
	return w
}

func (w *watchdog) add(i *Instance) {
	w.mu.Lock()
	w.instances[i] = &watchState{}
	w.mu.Unlock()
}

func (w *watchdog) remove(i *Instance) {
	w.mu.Lock()
	delete(w.instances, i)
	w.mu.Unlock()
}

func (w *watchdog) stop() {
	close(w.done)
	w.wg.Wait()
}

func (w *watchdog) run() {
	defer w.wg.Done()
	t := time.NewTicker(w.period)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
			// Not the tick's own time: a late tick would backdate the
			// start of a call and stop it early.
			w.check(time.Now())
		}
	}
}

func (w *watchdog) check(now time.Time) {
	var stuck []*Instance
	w.mu.Lock()
	for inst, st := range w.instances {
		seq := inst.seq.Load()
		if seq != st.seq || seq%2 == 0 {
			st.seq, st.since = seq, now
			continue
		}
		if now.Sub(st.since) >= w.deadline {
			stuck = append(stuck, inst)
			st.since = now
		}
	}
	w.mu.Unlock()
	for _, inst := range stuck {
		inst.deadlineExceeded(w.deadline)
	}
}
