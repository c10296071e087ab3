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
		Analyze(bytes.NewReader(data))
	})
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzReadStream when
// VMSTATE_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMSTATE_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VMSTATE_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzReadStream")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds(t) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
