package virtio_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

func putDesc(mem []byte, at int, d virtio.Desc) { d.Encode(mem[at:]) }

func TestWalkChainMergesAndSlices(t *testing.T) {
	mem := &virtio.ByteMemory{Mem: make([]byte, 1<<16)}
	// Table at 0: 0 -> 1 -> 2 (indirect, 3 entries at 0x1000).
	putDesc(mem.Mem, 0, virtio.Desc{Addr: 0x8000, Len: 16, Flags: virtio.DescFNext, Next: 1})
	putDesc(mem.Mem, 16, virtio.Desc{Addr: 0x8010, Len: 100, Flags: virtio.DescFNext, Next: 2}) // continues 0x8000
	putDesc(mem.Mem, 32, virtio.Desc{Addr: 0x1000, Len: 48, Flags: virtio.DescFIndirect})
	putDesc(mem.Mem, 0x1000, virtio.Desc{Addr: 0x9000, Len: 0, Flags: virtio.DescFNext, Next: 2})
	putDesc(mem.Mem, 0x1020, virtio.Desc{Addr: 0xa000, Len: 512, Flags: virtio.DescFWrite | virtio.DescFNext, Next: 1})
	putDesc(mem.Mem, 0x1010, virtio.Desc{Addr: 0xb000, Len: 1, Flags: virtio.DescFWrite})
	w := &virtio.Walker{Mem: mem}
	var c virtio.Chain
	if err := w.WalkChain(&c, 0, 8, 0, virtio.Limits{Indirect: true}); err != nil {
		t.Fatal(err)
	}
	if len(c.Readable) != 1 || c.Readable[0] != (sdk.SGEntry{GPA: 0x8000, Len: 116}) || c.ReadableLen != 116 {
		t.Errorf("readable %+v (%d)", c.Readable, c.ReadableLen)
	}
	if len(c.Writable) != 2 || c.WritableLen != 513 || c.Descriptors != 5 {
		t.Errorf("writable %+v (%d), %d descriptors", c.Writable, c.WritableLen, c.Descriptors)
	}
	got, n := virtio.SGSlice(nil, c.Writable, 500, 13)
	if n != 13 || len(got) != 2 || got[0] != (sdk.SGEntry{GPA: 0xa000 + 500, Len: 12}) || got[1] != (sdk.SGEntry{GPA: 0xb000, Len: 1}) {
		t.Errorf("SGSlice %+v %d", got, n)
	}
	if _, n := virtio.SGSlice(nil, c.Writable, 510, 100); n != 3 {
		t.Errorf("short SGSlice covered %d", n)
	}
	if a, ok := virtio.SGAt(c.Writable, 512); !ok || a != 0xb000 {
		t.Errorf("SGAt %#x %v", a, ok)
	}
	if _, ok := virtio.SGAt(c.Writable, 513); ok {
		t.Error("SGAt past the end")
	}
	// The walker reuses the chain's lists.
	if err := w.WalkChain(&c, 0, 8, 1, virtio.Limits{Indirect: true}); err != nil || c.Head != 1 || c.ReadableLen != 100 {
		t.Errorf("second walk: %v %+v", err, c)
	}
}

func TestWalkChainDoesNotAllocate(t *testing.T) {
	mem := &virtio.ByteMemory{Mem: make([]byte, 1<<16)}
	putDesc(mem.Mem, 0, virtio.Desc{Addr: 0x1000, Len: 64, Flags: virtio.DescFIndirect})
	for i := 0; i < 4; i++ {
		putDesc(mem.Mem, 0x1000+16*i, virtio.Desc{Addr: uint64(0x8000 + 0x1000*i), Len: 512, Flags: virtio.DescFNext, Next: uint16(i + 1)})
	}
	binary.LittleEndian.PutUint16(mem.Mem[0x1000+16*3+12:], virtio.DescFWrite)
	w := &virtio.Walker{Mem: mem}
	c := virtio.Chain{Readable: make([]sdk.SGEntry, 0, 8), Writable: make([]sdk.SGEntry, 0, 8)}
	lim := virtio.Limits{Indirect: true, MaxDescriptors: 8}
	w.WalkChain(&c, 0, 4, 0, lim)
	if a := testing.AllocsPerRun(100, func() {
		if err := w.WalkChain(&c, 0, 4, 0, lim); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%v allocations per walk", a)
	}
}

// FuzzWalkChain runs the walker over arbitrary guest memory. The first
// bytes pick the queue size, head, limits and features; the rest is the
// memory from address 0 (descriptor table at 0). Whatever the memory holds,
// the walker must return, and its result must respect the limits.
func FuzzWalkChain(f *testing.F) {
	seed := func(params [4]byte, descs ...virtio.Desc) []byte {
		b := append([]byte(nil), params[:]...)
		for _, d := range descs {
			var e [16]byte
			d.Encode(e[:])
			b = append(b, e[:]...)
		}
		return b
	}
	f.Add(seed([4]byte{3, 0, 1, 0}, virtio.Desc{Addr: 0x100, Len: 16, Flags: 1, Next: 1}, virtio.Desc{Addr: 0x200, Len: 1, Flags: 2}))
	f.Add(seed([4]byte{3, 0, 1, 0}, virtio.Desc{Addr: 0x100, Len: 16, Flags: 1, Next: 1}, virtio.Desc{Addr: 0x200, Len: 1, Flags: 1, Next: 0}))
	f.Add(seed([4]byte{3, 0, 1, 0}, virtio.Desc{Addr: 0x40, Len: 32, Flags: 4}, virtio.Desc{}, virtio.Desc{}, virtio.Desc{Addr: 0x40, Len: 32, Flags: 4}))
	f.Add(seed([4]byte{2, 1, 0, 2}, virtio.Desc{Addr: 0x100, Len: 0xffffffff, Flags: 1, Next: 1}, virtio.Desc{Addr: 0xffffffffffffff00, Len: 0xffffffff, Flags: 3, Next: 7}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 {
			return
		}
		size := uint16(1) << (data[0] % 10)
		head := uint16(data[1]) % (size + 2) // sometimes out of range
		lim := virtio.Limits{Indirect: data[2]&1 != 0, MaxDescriptors: int(data[3]%64) + 1}
		if data[2]&2 != 0 {
			lim.MaxBytes = 1 << 12
		}
		mem := &virtio.ByteMemory{Mem: make([]byte, 8192)}
		copy(mem.Mem, data[4:])
		w := &virtio.Walker{Mem: mem}
		var c virtio.Chain
		err := w.WalkChain(&c, 0, size, head, lim)
		if err != nil {
			var ce *virtio.ChainError
			if !errors.As(err, &ce) || ce.Head != head {
				t.Fatalf("error %v is not a ChainError for head %d", err, head)
			}
			return
		}
		if c.Descriptors > lim.MaxDescriptors || c.Descriptors < 1 {
			t.Fatalf("%d descriptors, limit %d", c.Descriptors, lim.MaxDescriptors)
		}
		maxBytes := uint64(1<<32 - 1)
		if lim.MaxBytes != 0 {
			maxBytes = lim.MaxBytes
		}
		if c.ReadableLen+c.WritableLen > maxBytes {
			t.Fatalf("chain of %d bytes over the limit %d", c.ReadableLen+c.WritableLen, maxBytes)
		}
		for _, l := range []struct {
			sg  []sdk.SGEntry
			sum uint64
		}{{c.Readable, c.ReadableLen}, {c.Writable, c.WritableLen}} {
			var s uint64
			for _, e := range l.sg {
				if e.Len == 0 || e.GPA+uint64(e.Len)-1 < e.GPA {
					t.Fatalf("bad entry %+v", e)
				}
				s += uint64(e.Len)
			}
			if s != l.sum {
				t.Fatalf("entries sum to %d, length says %d", s, l.sum)
			}
		}
	})
}

func TestSGRangeMatchesSGSlice(t *testing.T) {
	lists := [][]sdk.SGEntry{
		{{GPA: 0x1000, Len: 16}, {GPA: 0x2000, Len: 40}, {GPA: 0x4000, Len: 40}, {GPA: 0x9000, Len: 1}},
		{{GPA: 0x1000, Len: 57}},
		{{GPA: 0x1000, Len: 10}, {GPA: 0x2000, Len: 10}, {GPA: 0x3000, Len: 1}},
		{{GPA: 0x1000, Len: 1}},
		{{GPA: 0x1000, Len: 16}, {GPA: 0x9000, Len: 1}},
	}
	for li, sg := range lists {
		var total uint64
		for _, e := range sg {
			total += uint64(e.Len)
		}
		for off := uint64(0); off <= total; off++ {
			for n := uint64(0); off+n <= total+1; n++ {
				want, wn := virtio.SGSlice(nil, sg, off, n)
				got, gn := virtio.SGRange(make([]sdk.SGEntry, 0, 8), sg, off, n, total)
				if wn != gn || len(want) != len(got) {
					t.Fatalf("list %d [%d,+%d): got %v (%d), want %v (%d)", li, off, n, got, gn, want, wn)
				}
				for k := range want {
					if want[k] != got[k] {
						t.Fatalf("list %d [%d,+%d): got %v, want %v", li, off, n, got, want)
					}
				}
			}
		}
	}
}
