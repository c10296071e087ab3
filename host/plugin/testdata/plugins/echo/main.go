// Command echo is the well-formed test device plugin of host/plugin.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

func main() {}
