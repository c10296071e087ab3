// Command frobnicate imports a host function that the ABI does not have.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmimport wasmvmm:host@1 frobnicate
func frobnicate() int32

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset(); frobnicate() }

func main() {}
