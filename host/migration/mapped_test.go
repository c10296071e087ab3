package migration

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// ramStream writes a stream of blocks with every page non-zero.
func ramStream(t *testing.T, blocks []*guestmem.Block) []byte {
	t.Helper()
	for _, b := range blocks {
		for p := uint64(0); p < b.Pages(); p++ {
			b.Mem[p*vmstate.PageSize] = byte(p) | 1
		}
	}
	var out bytes.Buffer
	w, err := vmstate.NewWriter(&out, "wasmvmm-test-1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.RAMStart(blocks); err != nil {
		t.Fatal(err)
	}
	if _, err := w.RAMEnd(nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Complete(vmstate.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func testBlock(t *testing.T, size uint64) *guestmem.Block {
	t.Helper()
	b, err := guestmem.Alloc("ram", 0, size, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestLoadMappedFile restores a stream from a file at an unaligned offset
// through the mapping, RAM byte-exact.
func TestLoadMappedFile(t *testing.T) {
	src := testBlock(t, 8<<20)
	stream := ramStream(t, []*guestmem.Block{src})
	path := filepath.Join(t.TempDir(), "snap")
	const offset = 1000
	if err := os.WriteFile(path, append(make([]byte, offset), stream...), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dst := testBlock(t, 8<<20)
	res, ok, err := loadMapped(f, offset, vmstate.LoadOptions{Machine: "wasmvmm-test-1.0", Blocks: []*guestmem.Block{dst}})
	if !ok || err != nil {
		t.Fatalf("loadMapped: ok %v, %v", ok, err)
	}
	if res.Pages != src.Pages() || !bytes.Equal(src.Mem, dst.Mem) {
		t.Fatalf("restored %d pages of %d; RAM equal %v", res.Pages, src.Pages(), bytes.Equal(src.Mem, dst.Mem))
	}
}

// TestLoadMappingOfShrunkFile truncates a snapshot file after mapping it:
// the load fails with errFileChanged, the process lives on.
func TestLoadMappingOfShrunkFile(t *testing.T) {
	src := testBlock(t, 8<<20)
	stream := ramStream(t, []*guestmem.Block{src})
	path := filepath.Join(t.TempDir(), "snap")
	if err := os.WriteFile(path, stream, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := unix.Mmap(int(f.Fd()), 0, len(stream), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(data)
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	_, err = loadMapping(data, vmstate.LoadOptions{Machine: "wasmvmm-test-1.0", Blocks: []*guestmem.Block{testBlock(t, 8<<20)}})
	if !errors.Is(err, errFileChanged) {
		t.Fatalf("load of a shrunk file: %v", err)
	}
}
