package plugin

import (
	"golang.org/x/sys/unix"

	"github.com/tetratelabs/wazero/experimental"
)

// mmapMemory backs a plugin's linear memory with one anonymous mapping that
// reserves the instance's memory ceiling up front (MAP_NORESERVE): growing
// the memory never copies it, and pages the plugin never touches (a large
// zero-initialized arena, the unused tail of the ceiling) cost no resident
// memory. wazero's default allocator grows a Go slice instead, which copies
// the whole memory on each grow and leaves every byte resident.
type mmapMemory struct {
	buf []byte // the whole reservation; the linear memory is buf[:size]
}

// mmapAllocator implements experimental.MemoryAllocator with a ceiling.
type mmapAllocator struct {
	limit uint64 // bytes
}

// Allocate reserves max bytes (bounded by the ceiling). It returns nil, which
// wazero reports as an instantiation failure, if the mapping fails.
func (a mmapAllocator) Allocate(capacity, max uint64) experimental.LinearMemory {
	if max > a.limit {
		max = a.limit
	}
	if max == 0 {
		max = 1 << 16
	}
	buf, err := unix.Mmap(-1, 0, int(max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	return &mmapMemory{buf: buf}
}

// Reallocate returns the first size bytes of the reservation, or nil when
// size exceeds it (memory.grow then fails inside the plugin).
func (m *mmapMemory) Reallocate(size uint64) []byte {
	if m.buf == nil || size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size:size]
}

// Free unmaps the reservation.
func (m *mmapMemory) Free() {
	if m.buf != nil {
		unix.Munmap(m.buf)
		m.buf = nil
	}
}
