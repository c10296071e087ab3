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
// wazero stops running code only if it was compiled with termination
// checks (RuntimeConfig.WithCloseOnContextDone(true)): a call into Go at
// every loop back-edge, and, per export call, a goroutine that waits for
// the call's context. The per-call deadline then costs either a
// context.WithTimeout per call, or, as here, nothing more than two atomic
// increments: each instance has one long-lived cancelable context, and one
// watchdog goroutine per runtime samples each instance's call sequence
// number a few times per deadline and cancels the context of an instance
// that stayed inside the same call for the deadline. Measured on this host
// (2 vCPUs shared, Go 1.26, wazero 1.12; BenchmarkDeadline* and
// BenchmarkMMIORead, ns per MMIO read call of the test device):
//
//	no termination checks (cannot stop a loop)    ~ see report
//	checks + watchdog (this package)              ~ see report
//	checks + context.WithTimeout per call         ~ see report
//
// The figures are written in BENCHMARKS.md next to this file.
package plugin
