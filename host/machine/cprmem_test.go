package machine

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"wasmvmm/host/machine/config"
)

func memfdOf(t *testing.T, size int64, tag byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("adopt-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, []byte{tag}, 4096); err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestAdoptRAMMapsTheSourcesMemfdsInPlace(t *testing.T) {
	vm := &config.VM{Machine: config.MachineSection{Memory: 5 << 30}}
	layout := RAMLayout(vm)
	if len(layout) != 2 || layout[0].Name != "ram-low" || layout[1].Name != "ram-high" || layout[0].Size+layout[1].Size != 5<<30 {
		t.Fatalf("layout %+v", layout)
	}
	fds := map[string]int{}
	for i, b := range layout {
		fds[b.Name] = memfdOf(t, int64(b.Size), byte(i+1))
	}
	mem, err := AdoptRAM(vm, func(name string) (int, bool) { fd, ok := fds[name]; return fd, ok })
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for i, b := range mem.Blocks() {
		if b.FD != fds[b.Name] || b.GPA != layout[i].GPA || b.Mem[4096] != byte(i+1) {
			t.Fatalf("block %s: fd %d gpa %#x byte %d", b.Name, b.FD, b.GPA, b.Mem[4096])
		}
		b.Mem[8192] = 0x5a // the same pages: visible through the descriptor
		var one [1]byte
		unix.Pread(fds[b.Name], one[:], 8192)
		if one[0] != 0x5a {
			t.Fatalf("block %s is not mapped in place", b.Name)
		}
	}
}

func TestAdoptRAMRefusesMissingOrMissizedBlocks(t *testing.T) {
	vm := &config.VM{Machine: config.MachineSection{Memory: 256 << 20}}
	if _, err := AdoptRAM(vm, func(string) (int, bool) { return -1, false }); err == nil || !strings.Contains(err.Error(), "no memfd for block ram-low") {
		t.Fatalf("missing block: %v", err)
	}
	fd := memfdOf(t, 128<<20, 1)
	_, err := AdoptRAM(vm, func(string) (int, bool) { return fd, true })
	if err == nil || !strings.Contains(err.Error(), "block ram-low is 134217728 bytes on the source") {
		t.Fatalf("wrong size: %v", err)
	}
}
