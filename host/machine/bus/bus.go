// Package bus dispatches guest port I/O and MMIO accesses to the device
// region that covers the address, by binary search over sorted,
// non-overlapping ranges.
package bus

import (
	"fmt"
	"sort"
	"sync/atomic"
)

// Device handles accesses to its regions. Reads return the value of size
// bytes (1, 2, 4 or 8) in the low bits; offsets are relative to the region.
type Device interface {
	Read(region int, off uint64, size int) uint64
	Write(region int, off uint64, size int, v uint64)
}

// Range is one region of a device placed on a bus.
type Range struct {
	Base, Size uint64
	Name       string
	Dev        Device
	Region     int
}

func (r *Range) end() uint64 { return r.Base + r.Size }

// Bus is an address space (PIO or MMIO). Lookups are lock-free; Add is for
// machine assembly.
type Bus struct {
	name   string
	ranges atomic.Pointer[[]*Range]
}

// New returns an empty bus; name appears in messages ("pio", "mmio").
func New(name string) *Bus {
	b := &Bus{name: name}
	b.ranges.Store(&[]*Range{})
	return b
}

// Add places a device region at [base, base+size). Overlaps are refused.
func (b *Bus) Add(base, size uint64, name string, dev Device, region int) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("%s bus: %s: invalid range [%#x, +%#x)", b.name, name, base, size)
	}
	old := *b.ranges.Load()
	r := &Range{Base: base, Size: size, Name: name, Dev: dev, Region: region}
	for _, o := range old {
		if r.Base < o.end() && o.Base < r.end() {
			return fmt.Errorf("%s bus: %s [%#x, %#x) overlaps %s [%#x, %#x)", b.name, name, r.Base, r.end(), o.Name, o.Base, o.end())
		}
	}
	next := append(append(make([]*Range, 0, len(old)+1), old...), r)
	sort.Slice(next, func(i, j int) bool { return next[i].Base < next[j].Base })
	b.ranges.Store(&next)
	return nil
}

// Find returns the range covering addr, or nil.
func (b *Bus) Find(addr uint64) *Range {
	rs := *b.ranges.Load()
	i := sort.Search(len(rs), func(i int) bool { return rs[i].end() > addr })
	if i < len(rs) && rs[i].Base <= addr {
		return rs[i]
	}
	return nil
}

// Ranges returns the placed ranges in address order.
func (b *Bus) Ranges() []*Range { return *b.ranges.Load() }

// Read dispatches a read; ok is false if no device covers addr (the caller
// decides what the guest sees, normally all ones).
func (b *Bus) Read(addr uint64, size int) (v uint64, ok bool) {
	r := b.Find(addr)
	if r == nil || addr+uint64(size) > r.end() {
		return 0, false
	}
	return r.Dev.Read(r.Region, addr-r.Base, size), true
}

// Write dispatches a write; ok is false if no device covers addr.
func (b *Bus) Write(addr uint64, size int, v uint64) bool {
	r := b.Find(addr)
	if r == nil || addr+uint64(size) > r.end() {
		return false
	}
	r.Dev.Write(r.Region, addr-r.Base, size, v)
	return true
}
