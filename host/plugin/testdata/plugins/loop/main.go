// Command loop spins forever in dev_pio_write.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var spins uint64

func init() {
	base.PIOWrite = func(region, off, size, v int32) {
		for {
			spins++
		}
	}
}

func main() {}
