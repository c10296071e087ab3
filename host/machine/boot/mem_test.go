package boot

import (
	"fmt"
	"os"
	"syscall"
	"testing"
)

// guestRAM is guest memory for tests: an anonymous private mmap (like a real
// VM's RAM), written and read with bounds checks.
type guestRAM struct {
	b []byte
}

// newGuestRAM maps size bytes of anonymous memory, unmapped at test end.
func newGuestRAM(t testing.TB, size uint64) *guestRAM {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		t.Fatalf("mmap %#x bytes: %v", size, err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return &guestRAM{b: b}
}

// WriteAt implements io.WriterAt with guest physical addresses as offsets.
func (g *guestRAM) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(g.b)) || int64(len(p)) > int64(len(g.b))-off {
		return 0, fmt.Errorf("guest write %#x+%#x outside RAM of %#x bytes", off, len(p), len(g.b))
	}
	return copy(g.b[off:], p), nil
}

// ReadAt implements io.ReaderAt with guest physical addresses as offsets.
func (g *guestRAM) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(g.b)) || int64(len(p)) > int64(len(g.b))-off {
		return 0, fmt.Errorf("guest read %#x+%#x outside RAM of %#x bytes", off, len(p), len(g.b))
	}
	return copy(p, g.b[off:]), nil
}

// fill sets every byte in [addr, addr+n) to v.
func (g *guestRAM) fill(addr, n uint64, v byte) {
	for i := addr; i < addr+n; i++ {
		g.b[i] = v
	}
}

// inCI reports whether the tests run under CI, where a missing
// prerequisite is a failure rather than a skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// requirePrereq fails under CI and skips elsewhere when a prerequisite is
// missing.
func requirePrereq(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("CI=true and prerequisite missing: %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}
