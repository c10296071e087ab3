package virtio_test

import (
	"testing"

	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

// BenchmarkWalkIndirect256 walks a chain of one indirect table of 256
// entries (a 1 MiB request in 4 KiB pages plus header and status).
func BenchmarkWalkIndirect256(b *testing.B) {
	mem := &virtio.ByteMemory{Mem: make([]byte, 1<<16)}
	putDesc(mem.Mem, 0, virtio.Desc{Addr: 0x1000, Len: 258 * 16, Flags: virtio.DescFIndirect})
	for i := 0; i < 258; i++ {
		d := virtio.Desc{Addr: uint64(0x100000 + 0x2000*i), Len: 4096, Flags: virtio.DescFNext | virtio.DescFWrite, Next: uint16(i + 1)}
		if i == 0 {
			d.Flags = virtio.DescFNext
		}
		if i == 257 {
			d.Flags = virtio.DescFWrite
		}
		putDesc(mem.Mem, 0x1000+16*i, d)
	}
	w := &virtio.Walker{Mem: mem}
	c := virtio.Chain{Readable: make([]sdk.SGEntry, 0, 1024), Writable: make([]sdk.SGEntry, 0, 1024)}
	lim := virtio.Limits{Indirect: true}
	for i := 0; i < b.N; i++ {
		if err := w.WalkChain(&c, 0, 4, 0, lim); err != nil {
			b.Fatal(err)
		}
	}
}
