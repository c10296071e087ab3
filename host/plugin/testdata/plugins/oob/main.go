// Command oob passes out-of-bounds plugin pointers and guest addresses to the
// host and records the statuses it gets back in base.S.Regs.
package main

import "wasmvmm/host/plugin/testdata/plugins/internal/base"

//go:wasmexport wasmvmm_abi_1_0
func marker() {}

//go:wasmexport dev_reset
func devReset() { base.Reset() }

var buf [64]byte

func init() {
	base.MMIOWrite = func(region int32, off int64, size int32, v int64) {
		gpa := uint64(v) // the last byte of guest RAM + 1
		p := base.BytesPtr(buf[:])
		for i := range buf {
			buf[i] = 0x55
		}
		base.S.Regs[0] = uint64(int64(base.GuestRead(0, 0xfffffff0, 64)))    // plugin pointer past memory
		base.S.Regs[1] = uint64(int64(base.GuestWrite(gpa-8, p, 64)))        // straddles the end of RAM
		base.S.Regs[2] = uint64(int64(base.GuestWrite(gpa+4096, p, 16)))     // wholly past RAM
		base.S.Regs[3] = uint64(int64(base.GuestWrite(^uint64(0)-4, p, 16))) // wraps around
		base.S.Regs[4] = uint64(base.GuestReadSG(0xfffffff8, 1, p, 64))      // SG list past memory
		base.S.Regs[5] = uint64(base.GuestReadSG(p, 5000, p, 64))            // too many entries
		base.S.Regs[6] = uint64(int64(base.RawPropGetInt(0xfffffff0, 100, p)))
		base.RawLog(2, 0xffffff00, 0x1000)                             // must not crash the host
		base.S.Regs[7] = uint64(int64(base.GuestWrite(gpa-16, p, 16))) // last 16 bytes: fine
	}
}

func main() {}
