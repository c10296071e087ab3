// Command abi2 claims to be built for ABI 2.0.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_2_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

func main() {}
