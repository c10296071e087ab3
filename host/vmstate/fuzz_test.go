package vmstate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzSeeds are valid streams and a few damaged ones.
func fuzzSeeds(t testing.TB) [][]byte {
	blocks := allocBlocks(t, 4, 2)
	fill(blocks[0].Mem[PageSize:2*PageSize], 1)
	fill(blocks[1].Mem[:PageSize], 2)
	m := newMachine(t, 5, testProps, testNeeded)
	withRAM := saveStream(t, testMachine, blocks, m.reg)
	noRAM := saveStream(t, testMachine, nil, m.reg)
	m2 := newMachine(t, 9, testProps, map[int32]bool{})
	noSubs := saveStream(t, testMachine, blocks, m2.reg)
	flipped := append([]byte(nil), withRAM...)
	flipped[len(flipped)/2] ^= 0x5a
	return [][]byte{withRAM, noRAM, noSubs, flipped, withRAM[:len(withRAM)/3]}
}

// FuzzReadStream feeds arbitrary bytes to Load and Analyze: no panic, every
// Load error is a StreamError with an offset, and a failed Load writes no
// device store.
func FuzzReadStream(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	blocks := allocBlocks(f, 4, 2)
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newMachine(t, 0x40, testProps, nil)
		before := snapshotStores(m)
		_, err := Load(bytes.NewReader(data), LoadOptions{Machine: testMachine, Blocks: blocks, Registry: m.reg})
		m2 := newMachine(t, 0x40, testProps, nil)
		_, merr := LoadBytes(data, LoadOptions{Machine: testMachine, Blocks: blocks, Registry: m2.reg})
		if (err == nil) != (merr == nil) || (err != nil && err.Error() != merr.Error()) {
			t.Fatalf("Load: %v\nLoadBytes: %v", err, merr)
		}
		if err != nil {
			requireCleanRefusal(t, err, m, before)
		}
		Analyze(bytes.NewReader(data))
	})
}

// requireCleanRefusal checks a failed load's error: a StreamError that
// starts with its offset, and no device store of m written (before holds
// their bytes from before the load).
func requireCleanRefusal(t *testing.T, err error, m *machineDevs, before map[string][]byte) {
	t.Helper()
	var se *StreamError
	if !errors.As(err, &se) || !strings.HasPrefix(err.Error(), "offset 0x") {
		t.Fatalf("error without an offset: %v", err)
	}
	for k, v := range m.stores {
		if !bytes.Equal(v, before[k]) {
			t.Fatalf("failed load wrote store %s: %v", k, err)
		}
	}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzReadStream and
// FuzzReadMappedStream when VMSTATE_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMSTATE_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VMSTATE_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	for target, seeds := range map[string][][]byte{"FuzzReadStream": fuzzSeeds(t), "FuzzReadMappedStream": mappedFuzzSeeds(t)[:1]} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// mappedFuzzSeeds are mapped-ram files (the stream at offset 0): a valid
// one, one with a flipped header byte and a truncated one.
func mappedFuzzSeeds(t testing.TB) [][]byte {
	blocks := allocBlocks(t, 4, 2)
	fill(blocks[0].Mem[PageSize:2*PageSize], 1)
	fill(blocks[1].Mem[:PageSize], 2)
	good := writeMappedAligned(t, blocks, newMachine(t, 5, testProps, testNeeded).reg, 0, PageSize)
	flipped := bytes.Clone(good)
	flipped[headerAt(t, good, "pc.ram")+21] ^= 0x10
	return [][]byte{good, flipped, good[:len(good)-len(good)/4]}
}

// FuzzReadMappedStream feeds arbitrary files to the mapped-ram reader
// (Load and LoadBytes, with the capability on) and Analyze: no panic, every
// error is a StreamError with an offset, and a failed load writes neither
// guest RAM nor any device store.
func FuzzReadMappedStream(f *testing.F) {
	for _, s := range mappedFuzzSeeds(f) {
		f.Add(s)
	}
	blocks := allocBlocks(f, 4, 2)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range blocks {
			fill(b.Mem, 0x21)
		}
		ram := [][]byte{bytes.Clone(blocks[0].Mem), bytes.Clone(blocks[1].Mem)}
		opt := func(m *machineDevs) LoadOptions {
			return LoadOptions{Machine: testMachine, Blocks: blocks, Registry: m.reg,
				MappedRAM: &MappedRAM{File: bytes.NewReader(data), Size: int64(len(data)), Workers: 2}}
		}
		m := newMachine(t, 0x40, testProps, nil)
		before := snapshotStores(m)
		_, err := Load(bytes.NewReader(data), opt(m))
		if err != nil {
			requireCleanRefusal(t, err, m, before)
			for i, b := range blocks {
				if !bytes.Equal(b.Mem, ram[i]) {
					t.Fatalf("failed load wrote RAM block %s: %v", b.Name, err)
				}
			}
		}
		_, merr := LoadBytes(data, opt(newMachine(t, 0x40, testProps, nil)))
		if (err == nil) != (merr == nil) || (err != nil && err.Error() != merr.Error()) {
			t.Fatalf("Load: %v\nLoadBytes: %v", err, merr)
		}
		Analyze(bytes.NewReader(data))
	})
}
