// Package compattest holds the migration compatibility tests of wasmvmm:
// golden migration streams per (machine type, release) that every build
// must load, the virtio-net USO and virtio-gpu scanout compat flags, the
// ppc icp/server shim, and the compatibility matrix (host/compat).
//
// Golden streams live in golden/<machine type>/<release>.mig: a snapshot
// (QEMU stream format, our migration to a file) of a machine of that type
// with that release's plugins (host/compat.Releases), after host/compat.Drive
// put every device into a known state. They are produced once, by the build
// of their release, and committed; later builds must load them. Regenerate
// (only when a release is cut, never to make a failing load pass) with
//
//	go generate ./testsuite/compat
//
// which runs `go test -run TestGoldenStreams -update` here: it writes the
// streams of machine types and releases that have none yet (-update-all
// rewrites every stream).
package compattest

//go:generate go test -run TestGoldenStreams -update .
