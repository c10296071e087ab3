package guestmem

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func newTestMemory(t *testing.T, shared bool) *Memory {
	t.Helper()
	lo, err := Alloc("low", 0, 1<<20, AllocOptions{Shared: shared})
	if err != nil {
		t.Fatal(err)
	}
	hi, err := Alloc("high", 4<<20, 1<<20, AllocOptions{Shared: shared})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(hi, lo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestReadWriteBoundsAndDirty(t *testing.T) {
	for _, shared := range []bool{false, true} {
		m := newTestMemory(t, shared)
		if m.Blocks()[0].Name != "low" || m.Size() != 2<<20 {
			t.Fatalf("layout: %v, size %d", m.Blocks()[0].Name, m.Size())
		}
		if _, err := m.WriteAt([]byte("hello"), 4<<20+PageSize-2); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 5)
		if _, err := m.ReadAt(got, 4<<20+PageSize-2); err != nil || string(got) != "hello" {
			t.Fatalf("read back %q, %v", got, err)
		}
		// Straddling a block end, a hole, or past the end is refused.
		for _, gpa := range []int64{1<<20 - 2, 2 << 20, 5<<20 - 2, -1} {
			if _, err := m.WriteAt([]byte("abcd"), gpa); !errors.Is(err, ErrOutOfBounds) {
				t.Errorf("write at %#x: %v", gpa, err)
			}
		}
		bm := make([]uint64, 4)
		if n := m.Block("high").TakeDirty(bm); n != 2 || bm[0] != 3 {
			t.Fatalf("dirty pages %d bitmap %#x", n, bm[0])
		}
		bm[0] = 0
		if n := m.Block("high").TakeDirty(bm); n != 0 {
			t.Fatalf("dirty bitmap not cleared: %d", n)
		}
		m.MarkDirty(200*PageSize, 1)
		if n := m.Block("low").TakeDirty(bm); n != 1 || bm[3] != 1<<(200-192) {
			t.Fatalf("MarkDirty: %d %#x", n, bm[3])
		}
	}
}

func TestSharedBlockIsMemfdAndAdoptable(t *testing.T) {
	m := newTestMemory(t, true)
	b := m.Block("low")
	copy(b.Mem[100:], "state")
	fd, err := unix.Dup(b.FD)
	if err != nil {
		t.Fatal(err)
	}
	a, err := AdoptFD("low", 0, fd)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if string(a.Mem[100:105]) != "state" || a.Size() != b.Size() {
		t.Fatalf("adopted block does not share memory")
	}
	a.Mem[0] = 42
	if b.Mem[0] != 42 {
		t.Fatal("writes through the adopted mapping are not visible")
	}
}

func TestOverlapRefused(t *testing.T) {
	a, _ := Alloc("a", 0, 2*PageSize, AllocOptions{})
	b, _ := Alloc("b", PageSize, PageSize, AllocOptions{})
	defer a.Close()
	defer b.Close()
	if _, err := New(a, b); err == nil {
		t.Fatal("overlapping blocks accepted")
	}
}
