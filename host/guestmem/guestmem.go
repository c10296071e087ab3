// Package guestmem owns guest RAM: the host mappings of each RAM block, their
// guest physical placement, bounds-checked access, and a dirty bitmap of every
// page the host (on behalf of devices) writes. Migration merges that bitmap
// with KVM's dirty log.
package guestmem

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// PageSize is the granularity of dirty tracking.
const PageSize = 4096

// ErrOutOfBounds is returned for an access that is not wholly inside guest RAM.
var ErrOutOfBounds = errors.New("guest address out of bounds")

// Block is one contiguous block of guest RAM.
type Block struct {
	Name string // stable name used by migration (e.g. "pc.ram", "pc.ram.high")
	GPA  uint64 // guest physical address of the first byte
	Mem  []byte // host mapping, len is the block size (a multiple of PageSize)
	FD   int    // the memfd behind Mem, or -1 for anonymous memory
	// dirty has one bit per page: pages written by the host since the last TakeDirty.
	dirty []atomic.Uint64
	owned bool // Mem was mapped by this package and is unmapped by Close
}

// Size returns the block's size in bytes.
func (b *Block) Size() uint64 { return uint64(len(b.Mem)) }

// Pages returns the block's size in pages.
func (b *Block) Pages() uint64 { return uint64(len(b.Mem)) / PageSize }

// Memory is the set of RAM blocks of a VM, ordered by guest address.
// Reads and writes are safe for concurrent use; the block layout is fixed
// after New.
type Memory struct {
	blocks []*Block
}

// AllocOptions says how to back a block.
type AllocOptions struct {
	Shared bool // back the block with a memfd (required for cpr-transfer)
}

// Alloc maps a new block of size bytes (rounded up to pages). With Shared it
// is a memfd mapped MAP_SHARED; otherwise anonymous private memory.
func Alloc(name string, gpa, size uint64, opt AllocOptions) (*Block, error) {
	if size == 0 || gpa%PageSize != 0 {
		return nil, fmt.Errorf("alloc %s: size %d at %#x: need a non-zero size at a page-aligned address", name, size, gpa)
	}
	size = (size + PageSize - 1) &^ (PageSize - 1)
	if size > uint64(maxInt) {
		return nil, fmt.Errorf("alloc %s: size %d too large for this host", name, size)
	}
	b := &Block{Name: name, GPA: gpa, FD: -1, owned: true}
	if opt.Shared {
		fd, err := unix.MemfdCreate("wasmvmm:"+name, unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("alloc %s: memfd_create: %w", name, err)
		}
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("alloc %s: ftruncate %d: %w", name, size, err)
		}
		mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("alloc %s: mmap memfd of %d bytes: %w", name, size, err)
		}
		b.Mem, b.FD = mem, fd
	} else {
		mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("alloc %s: mmap %d bytes: %w", name, size, err)
		}
		b.Mem = mem
	}
	// Transparent huge pages where the host allows them (a hint: errors
	// are ignored): fewer TLB misses for the guest and for host copies
	// into guest memory (block reads, network receive).
	_ = unix.Madvise(b.Mem, unix.MADV_HUGEPAGE)
	b.dirty = make([]atomic.Uint64, (b.Pages()+63)/64)
	return b, nil
}

// AdoptFD maps an existing memfd (received from another process for
// cpr-transfer) as a block. The block takes ownership of fd.
func AdoptFD(name string, gpa uint64, fd int) (*Block, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("adopt %s: fstat fd %d: %w", name, fd, err)
	}
	size := uint64(st.Size)
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("adopt %s: memfd size %d is not a positive multiple of %d", name, size, PageSize)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: mmap fd %d: %w", name, fd, err)
	}
	b := &Block{Name: name, GPA: gpa, Mem: mem, FD: fd, owned: true}
	b.dirty = make([]atomic.Uint64, (b.Pages()+63)/64)
	return b, nil
}

const maxInt = int(^uint(0) >> 1)

// New assembles blocks into a Memory. Blocks must not overlap.
func New(blocks ...*Block) (*Memory, error) {
	bs := append([]*Block(nil), blocks...)
	sort.Slice(bs, func(i, j int) bool { return bs[i].GPA < bs[j].GPA })
	names := map[string]bool{}
	for i, b := range bs {
		if names[b.Name] {
			return nil, fmt.Errorf("guest memory: two blocks named %q", b.Name)
		}
		names[b.Name] = true
		if b.dirty == nil {
			b.dirty = make([]atomic.Uint64, (b.Pages()+63)/64)
		}
		if i > 0 && bs[i-1].GPA+bs[i-1].Size() > b.GPA {
			return nil, fmt.Errorf("guest memory: block %q at %#x overlaps %q", b.Name, b.GPA, bs[i-1].Name)
		}
	}
	return &Memory{blocks: bs}, nil
}

// Blocks returns the blocks in guest address order.
func (m *Memory) Blocks() []*Block { return m.blocks }

// Block returns the block with that name, or nil.
func (m *Memory) Block(name string) *Block {
	for _, b := range m.blocks {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// Size returns the total RAM size.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, b := range m.blocks {
		n += b.Size()
	}
	return n
}

// find returns the block holding [gpa, gpa+n) entirely, or nil.
func (m *Memory) find(gpa, n uint64) *Block {
	bs := m.blocks
	i := sort.Search(len(bs), func(i int) bool { return bs[i].GPA+bs[i].Size() > gpa })
	if i == len(bs) {
		return nil
	}
	b := bs[i]
	if gpa < b.GPA || n > b.Size() || gpa-b.GPA > b.Size()-n {
		return nil
	}
	return b
}

// Slice returns the host bytes backing [gpa, gpa+n) when they lie in one
// block. The caller must call MarkDirty for any byte it writes through the
// slice.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	b := m.find(gpa, n)
	if b == nil {
		return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfBounds, gpa, n)
	}
	off := gpa - b.GPA
	return b.Mem[off : off+n : off+n], nil
}

// ReadAt copies guest memory at gpa into p (io.ReaderAt).
func (m *Memory) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, ErrOutOfBounds
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at gpa and marks the pages dirty
// (io.WriterAt).
func (m *Memory) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, ErrOutOfBounds
	}
	b := m.find(uint64(gpa), uint64(len(p)))
	if b == nil {
		return 0, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfBounds, gpa, len(p))
	}
	off := uint64(gpa) - b.GPA
	n := copy(b.Mem[off:], p)
	b.markDirty(off, uint64(n))
	return n, nil
}

// MarkDirty records that the host wrote [gpa, gpa+n). Addresses outside RAM
// are ignored.
func (m *Memory) MarkDirty(gpa, n uint64) {
	if n == 0 {
		return
	}
	if b := m.find(gpa, n); b != nil {
		b.markDirty(gpa-b.GPA, n)
	}
}

func (b *Block) markDirty(off, n uint64) {
	if n == 0 {
		return
	}
	first, last := off/PageSize, (off+n-1)/PageSize
	for p := first; p <= last; p++ {
		w := &b.dirty[p/64]
		bit := uint64(1) << (p % 64)
		if w.Load()&bit == 0 {
			w.Or(bit)
		}
	}
}

// TakeDirty ORs the block's host dirty bitmap into dst (one bit per page,
// len(dst) >= (Pages()+63)/64) and clears it, atomically per word. It returns
// the number of dirty pages taken.
func (b *Block) TakeDirty(dst []uint64) int {
	n := 0
	for i := range b.dirty {
		if v := b.dirty[i].Swap(0); v != 0 {
			dst[i] |= v
			n += bits.OnesCount64(v)
		}
	}
	return n
}

// Close unmaps every block this package mapped and closes their memfds.
func (m *Memory) Close() error {
	var errs []error
	for _, b := range m.blocks {
		errs = append(errs, b.Close())
	}
	return errors.Join(errs...)
}

// Close unmaps the block (if this package mapped it) and closes its memfd.
func (b *Block) Close() error {
	var errs []error
	if b.owned && b.Mem != nil {
		if err := unix.Munmap(b.Mem); err != nil {
			errs = append(errs, fmt.Errorf("unmap %s: %w", b.Name, err))
		}
		b.Mem = nil
	}
	if b.FD >= 0 {
		if err := unix.Close(b.FD); err != nil {
			errs = append(errs, fmt.Errorf("close memfd of %s: %w", b.Name, err))
		}
		b.FD = -1
	}
	return errors.Join(errs...)
}
