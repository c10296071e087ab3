// Command trap panics (nil dereference) in dev_mmio_read at offset 0x40 and
// executes a Go panic for offset 0x48.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var nilPtr *int64

func init() {
	base.MMIORead = func(region int32, off int64, size int32) int64 {
		return *nilPtr
	}
}

func main() {}
