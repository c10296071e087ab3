// Command noreset lacks the required dev_reset export.
package main

import _ "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

func main() {}
