// Command trap fails in three ways: a nil dereference in dev_mmio_read, an
// os.Exit(3) (proc_exit) in dev_mmio_write and an explicit panic in
// dev_pio_read.
package main

import (
	"os"

	"wasmvmm/host/plugin/testdata/plugins/internal/base"
)

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var nilPtr *int64

func init() {
	base.MMIORead = func(region int32, off int64, size int32) int64 {
		return *nilPtr
	}
	base.MMIOWrite = func(region int32, off int64, size int32, v int64) {
		os.Exit(3)
	}
	base.PIORead = func(region, off, size int32) int32 {
		panic("device on fire")
	}
}

func main() {}
