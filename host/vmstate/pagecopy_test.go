package vmstate

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"wasmvmm/host/guestmem"

	"golang.org/x/sys/unix"
)

// TestCopyWorkersLoadLikeOneCopier loads a three-pass RAM stream whose
// blocks span several 2 MiB regions (so that every worker gets pages), in
// which pages are sent again with new data, turn to zero, or get data after
// being zero: with 2 and 3 copy workers, from a reader and from memory,
// guest RAM ends exactly as the source's and the counts match a load with
// one copier. A truncated stream fails with the same error either way.
func TestCopyWorkersLoadLikeOneCopier(t *testing.T) {
	const pages0, pages1 = 1800, 700 // 7 MiB and 2.7 MiB
	src := allocBlocks(t, pages0, pages1)
	fillEvery(src, func(i int) uint64 { return uint64(2 + i) })
	var out bytes.Buffer
	w := newRAMWriter(t, &out, src)
	if _, err := w.RAMPart(nil); err != nil {
		t.Fatal(err)
	}
	// Between passes: new data, data turned to zero, zero turned to data,
	// in regions of different workers.
	dirty := [][]uint64{make([]uint64, (pages0+63)/64), make([]uint64, (pages1+63)/64)}
	for _, p := range []uint64{0, 1, 511, 512, 513, 1024, 1500, 1799} {
		if p%2 == 0 && p%4 == 0 {
			clear(src[0].Mem[p*PageSize : (p+1)*PageSize])
		} else {
			fill(src[0].Mem[p*PageSize:(p+1)*PageSize], 0xc0+byte(p))
		}
		setBit(dirty[0], p)
	}
	for _, p := range []uint64{3, 600} {
		fill(src[1].Mem[p*PageSize:(p+1)*PageSize], 0xd0)
		setBit(dirty[1], p)
	}
	if _, err := w.RAMPart(dirty); err != nil {
		t.Fatal(err)
	}
	final := [][]uint64{make([]uint64, (pages0+63)/64), make([]uint64, (pages1+63)/64)}
	fill(src[0].Mem[1024*PageSize:1025*PageSize], 0xe0)
	setBit(final[0], 1024)
	if _, err := w.RAMEnd(final); err != nil {
		t.Fatal(err)
	}
	m := newMachine(t, 9, map[string]uint64{"packed": 1, "legacy": 0}, nil)
	if err := w.Complete(m.reg); err != nil {
		t.Fatal(err)
	}
	stream := out.Bytes()

	load := func(workers int, fromMemory bool, stream []byte) ([]*guestmem.Block, *LoadResult, error) {
		dst := allocBlocks(t, pages0, pages1)
		// Garbage where the source is zero must be cleared.
		fill(dst[0].Mem[2*PageSize:3*PageSize], 0x55)
		fill(dst[1].Mem[601*PageSize:602*PageSize], 0x66)
		d := newMachine(t, 0, map[string]uint64{"packed": 1, "legacy": 0}, nil)
		opt := LoadOptions{Machine: "wasmvmm-test-1.0", Blocks: dst, Registry: d.reg, CopyWorkers: workers}
		var res *LoadResult
		var err error
		if fromMemory {
			res, err = LoadBytes(stream, opt)
		} else {
			res, err = Load(bytes.NewReader(stream), opt)
		}
		return dst, res, err
	}
	_, want, err := load(0, false, stream)
	if err != nil {
		t.Fatal(err)
	}
	cut := stream[:len(stream)*2/3]
	_, _, cutErr := load(0, false, cut)
	if cutErr == nil {
		t.Fatal("a truncated stream loaded")
	}
	for _, workers := range []int{2, 3} {
		for _, fromMemory := range []bool{false, true} {
			t.Run(fmt.Sprintf("workers=%d/memory=%v", workers, fromMemory), func(t *testing.T) {
				dst, res, err := load(workers, fromMemory, stream)
				if err != nil {
					t.Fatal(err)
				}
				for i := range src {
					if !bytes.Equal(src[i].Mem, dst[i].Mem) {
						for p := uint64(0); p < src[i].Pages(); p++ {
							if !bytes.Equal(src[i].Mem[p*PageSize:(p+1)*PageSize], dst[i].Mem[p*PageSize:(p+1)*PageSize]) {
								t.Fatalf("block %s differs first at page %d", src[i].Name, p)
							}
						}
					}
				}
				if res.Pages != want.Pages || res.ZeroPages != want.ZeroPages || res.Bytes != want.Bytes {
					t.Errorf("result %+v, one copier %+v", res, want)
				}
				if _, _, err := load(workers, fromMemory, cut); err == nil || err.Error() != cutErr.Error() {
					t.Errorf("truncated: %v, one copier: %v", err, cutErr)
				}
			})
		}
	}
}

// TestCopyWorkerFaultFailsTheLoad hands a worker page data it cannot read
// (a PROT_NONE mapping, as a snapshot file truncated under its mapping
// reads): flush reports ErrPageDataFault, the process lives on, and the
// worker skips the rest.
func TestCopyWorkerFaultFailsTheLoad(t *testing.T) {
	bad, err := unix.Mmap(-1, 0, PageSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(bad)
	good := bytes.Repeat([]byte{7}, PageSize)
	c := newPageCopier(2)
	dst := make([]byte, 2*PageSize)
	c.add(0, dst[:PageSize], bad)
	c.add(0, dst[PageSize:], good)
	if err := c.flush(); !errors.Is(err, ErrPageDataFault) {
		t.Fatalf("flush: %v", err)
	}
	if err := c.close(); !errors.Is(err, ErrPageDataFault) {
		t.Fatalf("close: %v", err)
	}
}
