package vmstate

import (
	"bytes"
	"testing"
)

func setBit(bm []uint64, p uint64) { bm[p/64] |= 1 << (p % 64) }

// TestRAMIterative sends RAM the way live migration does: START, a full
// first pass, a dirty pass, the final pass in END; then the devices.
func TestRAMIterative(t *testing.T) {
	src := allocBlocks(t, 70, 33)
	dst := allocBlocks(t, 70, 33)
	// Source: every third page of block 0 and every second of block 1 hold data.
	fillEvery(src, func(i int) uint64 { return uint64(3 - i) })
	// Destination garbage where the source is zero must be cleared.
	fill(dst[0].Mem[1*PageSize:2*PageSize], 0x55)
	fill(dst[1].Mem[5*PageSize:6*PageSize], 0x66)

	var out bytes.Buffer
	w := newRAMWriter(t, &out, src)
	st, err := w.RAMPart(nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pages != 24+17 || st.ZeroPages != 46+16 {
		t.Fatalf("first pass %+v", st)
	}
	// The guest dirties two pages after the first pass.
	fill(src[0].Mem[4*PageSize:5*PageSize], 0xa0)
	clear(src[1].Mem[2*PageSize : 3*PageSize])
	dirty := [][]uint64{make([]uint64, 2), make([]uint64, 1)}
	setBit(dirty[0], 4)
	setBit(dirty[1], 2)
	st, err = w.RAMPart(dirty)
	if err != nil || st.Pages != 1 || st.ZeroPages != 1 {
		t.Fatalf("dirty pass %+v %v", st, err)
	}
	fill(src[1].Mem[32*PageSize:33*PageSize], 0xb0)
	final := [][]uint64{make([]uint64, 2), make([]uint64, 1)}
	setBit(final[1], 32)
	if _, err := w.RAMEnd(final); err != nil {
		t.Fatal(err)
	}
	m := newMachine(t, 9, map[string]uint64{"packed": 1, "legacy": 0}, nil)
	if err := w.Complete(m.reg); err != nil {
		t.Fatal(err)
	}
	d := newMachine(t, 0, map[string]uint64{"packed": 1, "legacy": 0}, nil)
	opt := LoadOptions{Machine: "wasmvmm-test-1.0", Blocks: dst, Registry: d.reg}
	ended := 0
	opt.RAMEnded = func() { ended++ }
	res, err := Load(bytes.NewReader(out.Bytes()), opt)
	if ended != 1 {
		t.Errorf("RAMEnded called %d times, want once", ended)
	}
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if res.Pages != 41+1+1 || res.ZeroPages != 62+1 {
		t.Errorf("load result %+v", res)
	}
	for i := range src {
		if !bytes.Equal(src[i].Mem, dst[i].Mem) {
			t.Errorf("block %s differs", src[i].Name)
		}
	}
}

func TestRAMWriterErrors(t *testing.T) {
	blocks := allocBlocks(t, 4, 4)
	var out bytes.Buffer
	w, _ := NewWriter(&out, "m")
	if _, err := w.RAMPart(nil); err == nil || err.Error() != "vmstate writer: RAM pages outside a started RAM section" {
		t.Errorf("part before start: %v", err)
	}
	if err := w.RAMStart(blocks); err != nil {
		t.Fatal(err)
	}
	if _, err := w.RAMPart([][]uint64{{1}}); err == nil || err.Error() != "vmstate writer: 1 dirty bitmaps for 2 RAM blocks" {
		t.Errorf("bitmap count: %v", err)
	}
	if err := w.Complete(nil); err == nil || err.Error() != "vmstate writer: RAM section started but not ended" {
		t.Errorf("complete with open RAM: %v", err)
	}
}
