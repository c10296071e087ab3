// Command badvmstate registers a vmstate section whose fields overlap
// (property mode=0) or lie outside its memory (mode=1).
package main

import (
	"wasmvmm/abi"
	"wasmvmm/host/plugin/testdata/plugins/internal/base"
)

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var regs [4]uint32

func init() {
	base.Realize = func() int32 {
		mode, st := base.PropInt("mode")
		if st != 0 {
			return st
		}
		off := uint32(base.BytesPtr(nil))
		s := &abi.Section{Name: "bad", InstanceID: abi.InstanceAny, VersionID: 1, MinimumVersionID: 1}
		addr := uint32(uintptrOf(&regs))
		switch mode {
		case 0:
			s.Fields = []abi.Field{
				{Name: "a", Type: abi.FieldU32, Offset: addr, Size: 4, Count: 2},
				{Name: "b", Type: abi.FieldU32, Offset: addr + 4, Size: 4, Count: 1},
			}
		default:
			s.Fields = []abi.Field{{Name: "far", Type: abi.FieldBuffer, Offset: 0xfffff000 + off, Size: 0x800, Count: 1}}
		}
		return base.RegisterSection(s)
	}
}

func main() {}
