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
// (Config.MemoryLimitPages) and a deadline per export call
// (Config.CallDeadline).
//
// # Loading and checking
//
// Runtime.Load compiles a plugin (a cache hit across processes; the same
// path and content give the same *Module within a runtime) and checks,
// before anything runs: exactly one ABI marker export with the host's
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
// proc_exit), growing memory past the ceiling, or a call running past the
// deadline fails that instance only: Instance.Err says why (with the
// plugin's "panic:" or "fatal error:" line when there is one), the reason
// is logged once at error level, the module is closed, timers and backend
// watches stop, reads return all ones for the access size and writes are
// ignored. Host functions bounds-check every plugin pointer (ErrOutOfBounds)
// and every guest address against guest RAM; writes to guest memory mark
// the pages dirty.
//
// # Deadline mechanism and costs
//
// wazero (v1.12) can stop running code only if it was compiled with
// termination checks (RuntimeConfig.WithCloseOnContextDone(true)). Reading
// its source: the compiler then inserts, at every loop header, a call that
// exits to Go and checks whether the module was closed
// (ExitCodeCheckModuleExitCode), and every api.Function call spawns a
// goroutine that waits on the call's context (CloseModuleOnCanceledOrTimeout)
// whatever that context is. Go's wasm code enters a loop in every function,
// so a plugin pays one exit to Go per Go function call. The flag is part of
// wazero's module id, so code compiled with checks cannot be run without the
// per-call goroutine. The remaining choice is how the deadline is armed:
//
//   - context.WithTimeout per call: a timer per call on top of the goroutine;
//   - (chosen) one long-lived cancelable context per instance and one
//     watchdog goroutine per runtime: a call adds two atomic increments of
//     the instance's call sequence number; the watchdog samples it every
//     deadline/4 (5 ms .. 250 ms) and cancels the context of an instance
//     seen inside the same call for at least the deadline, so a stuck call
//     ends between 1 and 1.25 deadlines after it started;
//   - Config.NoDeadline: no checks at all, the fastest, for trusted plugins
//     only (an endless loop then hangs its caller for good).
//
// Measured on the development host (2 vCPUs shared with other jobs, load 5
// to 8; Go 1.26, wazero 1.12; go test -bench . ./host/plugin), one MMIO
// read of the test device through the same Go interface as a native Go
// device (native: 14-16 ns with its mutex):
//
//	NoDeadline (no checks)            47-58 ns/op    3.4-3.9x native
//	watchdog (default)              1.2-4.9 µs/op     80-310x native
//	context.WithTimeout per call    1.9-4.2 µs/op    130-260x native
//
// The deadline's own overhead per call (BenchmarkDeadlineOverhead) is about
// 1.1 µs for the watchdog and 2.2 µs for a context per call, nearly all of
// it wazero's per-call goroutine. A plugin->host call (clock_ns, in a loop
// in the plugin) costs 96-136 ns without checks and about 183 ns with them
// (native call of the same Clock: 33 ns). Loading the 2.3 MB test plugin:
// cold (compiling) 0.87-1.25 s, warm (compilation cache hit, fresh Runtime)
// plus instantiate and realize 30-52 ms, most of it wazero decoding and
// validating the module, which it does even on a cache hit; instantiate
// (the Go runtime's _initialize) 5-8 ms. Each extra realized instance of a
// compiled module adds 3.7-3.8 MiB of resident memory (46 pages of linear
// memory). Host->plugin calls allocate nothing in this package.
package plugin
