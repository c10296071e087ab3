// Command hog allocates without bound in dev_mmio_write.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var hoard [][]byte

func init() {
	base.MMIOWrite = func(region int32, off int64, size int32, v int64) {
		for {
			b := make([]byte, 1<<20)
			b[0] = 1
			hoard = append(hoard, b)
		}
	}
}

func main() {}
