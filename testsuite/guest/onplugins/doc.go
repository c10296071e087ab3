// Package onplugins holds tests (no code) that run the test guest's virtio
// device checks (blk_test, net_test, gpu_test, dev_every; see
// testsuite/guest/README.md) on wasmvmm's own device plugins — virtio-blk,
// virtio-net and virtio-gpu — in a machine assembled in the test process,
// and check their effects from the host: the disk image, the frames an echo
// peer saw, and the scanout read through host/display.
//
// The devices are added through the VM configuration (plugin, MMIO window,
// IRQ), so the tests do not depend on which devices the machine types place.
package onplugins
