// Package sdk is the Go SDK for wasmvmm device plugins.
//
// A plugin is a Go main package built with the standard toolchain as a
// WebAssembly reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o dev.wasm ./plugins/dev
//
// (host/pluginbuild does this for every plugin under plugins/). The SDK
// implements every export of the plugin ABI (package abi) and the version
// marker, and wraps every host function; a plugin only declares its device:
//
//	package main
//
//	func main() {}
//
//	func init() { sdk.Register("my-device", "1.0.0", &device{}) }
//
// # Device
//
// The registered value implements Device (Realize, Reset) and any of the
// optional interfaces MMIODevice, PIODevice, TimerHandler, BackendHandler,
// PreSaver, PostLoader, Idler and MigrationHandler. The SDK finds them by
// type assertion; for a missing one it answers itself (reads return all
// ones, events are dropped) and logs the first such call.
//
// # Properties
//
// Properties are typed, with defaults, and declared as package variables:
//
//	var loopback = sdk.Bool("loopback", false, "route output back to input")
//	var queues = sdk.U32("queues", 1, "number of queue pairs")
//
// The SDK declares them to the host in dev_describe; Get returns the value
// the host resolved (defaults, machine-type compat and user overrides) once
// the device is realized.
//
// # Migration state
//
// Device state that migrates lives in package-level structs (Go's collector
// does not move globals, so their addresses in linear memory are fixed). The
// schema comes from the struct by reflection; nobody writes offsets:
//
//	var st struct {
//		Ctrl  uint32    `vmstate:"ctrl"`
//		Queue [16]byte  `vmstate:"queue"`
//		Extra uint16    `vmstate:"extra,since=2"`       // added in version 2
//		Wide  uint64    `vmstate:"wide,if=queues>=2"`   // exists only when queues >= 2
//		Cache []byte    `vmstate:"-"`                   // not migrated
//	}
//	var _ = sdk.VMState("my-device", &st, sdk.Version(2), sdk.MinimumVersion(1),
//		sdk.Subsection("my-device/extra", &extra, func() bool { return extra.On }))
//
// The host reads and writes those fields itself around dev_pre_save and
// dev_post_load. NewSection documents the tag syntax and the types.
//
// # Rules
//
// Exports run one at a time per instance, never block, and must not start
// goroutines. Hot paths (register accesses) should not allocate: the
// host-call wrappers here do not, and their errors are preallocated
// abi.Status values (compare with errors.Is(err, abi.ErrAgain)). A panic
// kills the device instance (the guest sees a broken device), not the VMM.
//
// The package also builds for the developer's platform, where every host
// call fails with abi.ErrUnsupported, so that schemas and device logic can be
// unit-tested with go test.
package sdk
