// Package plugin is the host side of the wasmvmm device plugin ABI (package
// wasmvmm/abi): it loads WebAssembly device plugins with wazero, checks
// them against the ABI before they run, instantiates one sandboxed module
// per device, serves the host functions of wasmvmm:host@1, and turns vCPU
// exits, timers and backend readiness into calls of the plugin's exports.
//
// # Runtime
//
// One Runtime per process (NewRuntime): wazero in compiler mode with a
// compilation cache on disk (a private 0700 directory, by default
// $XDG_CACHE_HOME/wasmvmm/wazero), WASI without filesystem or network
// (plugin stdout/stderr become log lines), the host module built with
// api.GoModuleFunc (no reflection), a linear memory ceiling per instance
// (Config.MemoryLimitPages) and a fuel budget per export call
// (Config.CallFuel, or Config.CallDeadline converted to fuel).
//
// # Loading and checking
//
// Runtime.Load instruments a plugin with fuel metering (package meter),
// compiles it (both cached across processes; the same path and content
// give the same *Module within a runtime) and checks, before anything runs: exactly one ABI marker export with the host's
// major version; every import from wasmvmm:host@1 (with the signature of
// abi.HostFunctions) or wasi_snapshot_preview1; every required export of
// abi.PluginExports present, and every export present with its signature.
// Errors name the offending import or export, e.g.
//
//	plugin x was built for ABI 2.0; this host serves ABI 1.0
//	plugin x imports wasmvmm:host@1.frobnicate, which this host does not provide
//	plugin x lacks required export(s) dev_reset
//
// # Lifecycle
//
// Module.Instantiate runs _initialize and dev_describe and validates the
// DeviceInfo (Instance.Info). Instance.Realize resolves properties
// (declared defaults, then layers of overrides: machine-type compat, then
// user), refusing unknown names (listing the valid ones), wrong types and
// out-of-range values, then calls dev_realize, in which the plugin adds
// regions (Instance.Regions), opens backends (Instance.Backends) and
// registers vmstate sections (Instance.Sections, validated against the
// plugin memory; Instance.FieldExists evaluates property-gated fields).
// A refusal closes the instance: nothing is left half-started.
//
// Running devices get MMIORead/MMIOWrite/PIORead/PIOWrite (hot paths: one
// preallocated parameter stack per instance, no allocation), Reset, Idle,
// PreSave, PostLoad, SubsectionNeeded and MigrationEvent; the vmstate code
// reads and writes fields with ReadMemory and WriteMemory. Calls into one
// instance are serialized by its lock. Timers (timer_arm) run on a Clock
// that stops while the VM is paused (VMClock) and call dev_timer from the
// timer's goroutine; watched backends call dev_backend_ready from a
// goroutine of their own, never while the caller holds the instance lock.
//
// # Failure
//
// A trap, a Go panic or fatal error in the plugin (which exits through
// proc_exit), growing memory past the ceiling, or a call burning its fuel
// budget fails that instance only: Instance.Err says why (with the
// plugin's "panic:" or "fatal error:" line when there is one), the reason
// is logged once at error level, the module is closed, timers and backend
// watches stop, reads return all ones for the access size and writes are
// ignored. Host functions bounds-check every plugin pointer (ErrOutOfBounds)
// and every guest address against guest RAM; writes to guest memory mark
// the pages dirty.
//
// # Stopping runaway plugins: fuel
//
// A plugin that loops forever must not hang its vCPU. wazero (v1.12) can
// stop running code only when compiled with WithCloseOnContextDone(true),
// and then every api.Function call spawns a goroutine that watches the
// call's context (CloseModuleOnCanceledOrTimeout), whatever the context:
// 0.7-1.1 µs per call on the development host, 60 times a native Go device
// or more. This package does not use it. Instead Load rewrites the
// module's bytecode (package meter, like wasmtime's fuel): a mutable i64
// global exported as meter.GlobalName is decremented at every loop header
// and on entry to every function that calls another before it reaches a
// loop, and the module traps when it goes below zero. Before each export
// call the instance sets the global to the call's budget (one
// api.MutableGlobal.Set, about 3.3 ns); after a trap a negative fuel means
// the budget ran out, and the instance fails with
//
//	device serial0: dev_pio_write ran past its per-call budget of 1500000000 loop iterations (about 1s of plugin CPU)
//
// The budget counts work, not time: Config.CallFuel units, by default
// Config.CallDeadline (1 s) × LoopIterationsPerSecond (1.5e9, the rate of
// the tightest loop Go compiles on the development host), so an endless
// `for { n++ }` is stopped after about 1 s; loops doing more per
// iteration run longer before they are stopped (a loop calling a Go
// function: about 8 ns per unit, so about 12 s). _initialize, dev_describe
// and dev_realize get Config.SetupFuel (by default 4 × CallFuel). A
// register access of the test device burns 3-4 units, its _initialize
// about 19,000. Host functions run unmetered (they bound their own work);
// bulk memory instructions are bounded by the memory size. Config.NoDeadline
// loads plugins uninstrumented, for trusted plugins and for measuring.
//
// Instrumenting a 3 MB plugin takes about 15 ms, so Load caches the result
// in the compilation cache directory (meter-v<meter.Version>/<SHA-256 of
// the plugin>.wasm, written to a temporary file and renamed, mode 0600).
// DWARF custom sections would be dropped (their code offsets go stale);
// Go's wasip1 plugins have none, and their name section is kept.
//
// # Costs
//
// Measured on the development host (2 vCPUs shared with other jobs, load
// 1.3 to 4; Go 1.26, wazero 1.12; go test -bench . ./host/plugin), one MMIO
// access of the test device through the same Go interface as a native Go
// device (native: 13-18 ns with its mutex):
//
//	                              read                write
//	fuel meter (default)        40-48 ns  2.5-3.3x    47-51 ns  3.2-3.6x native
//	unmetered (NoDeadline)      36-54 ns  2.7-3.6x    38-45 ns  2.7-3.1x native
//	wazero termination checks  0.7-2.6 µs  60-160x  0.9-1.1 µs   60-75x native
//
// Measured interleaved with an unmetered instance (BenchmarkStopOverhead),
// the meter adds 5-10 ns to a call (the budget's Set alone: 3.1-3.4 ns,
// BenchmarkFuelSet), wazero's checks 0.7-1.1 µs. Inside the plugin a fuel
// check costs 0.05-0.26 ns per iteration of a loop over a Go array (2.0-2.1
// ns per iteration) and 0.65-0.77 ns per iteration of a loop calling a
// small Go function (7.8-8.3 ns; BenchmarkFuelLoop). The tightest loop
// burns fuel at 0.65-0.69 ns per unit, so the default budget stops it
// after 0.98-1.03 s (BenchmarkFuelBurn; 1.2-1.4 ns per unit at load 5 to
// 8). A plugin->host call (clock_ns in a loop in the plugin) costs 86-175
// ns in every mode, too noisy to tell them apart (native call of the same
// Clock: 32-70 ns). Host->plugin calls allocate nothing in this package.
//
// Loading (BenchmarkLoad: fresh Runtime, Load, Instantiate, Realize): cold
// (instrumenting and compiling) 0.8 s for the 2.4 MB test plugin, 1.2-1.4 s
// for the 3 MB real plugins; warm (both caches hit) 39-45 ms for the test
// plugin at load 1.3 (60-90 ms at load 3 to 4) and 60-65 ms for
// serial-16550 and virtio-blk, of which Instantiate+Realize (mostly the Go
// runtime's _initialize) 6 and 12-15 ms. The meter does not make the warm
// path slower (the "warm-nometer" figures are the same within noise): what
// remains is wazero's CompileModule, which on a cache hit still decodes the
// whole module, validates every function (about 17 ms of CPU for the test
// plugin, the largest share in a CPU profile), hashes it and reads and
// relocates the cached machine code; stripping the custom sections changes
// nothing measurable. This package's own share is hashing the plugin file
// as it streams by and reading the instrumented copy, about 3 ms. The goal
// of 20 ms is out of reach without changing wazero. Each extra realized
// instance of a compiled module adds 3.6-3.75 MiB of resident memory (46
// pages of linear memory).
package plugin
