// Command badsig imports clock_ns with the wrong result type (i32, not i64).
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmimport wasmvmm:host@1 clock_ns
func clockNS32() uint32

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset(); base.S.Counter = clockNS32() }

func main() {}
