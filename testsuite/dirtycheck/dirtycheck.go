// Package dirtycheck verifies the memory pattern of the test guest's dirtier
// exactly: the dirtier increments the first byte of every 4 KiB page of its
// range in ascending order, one pass after another, so at any instant the
// pages before some boundary hold v+1 and the rest hold v (mod 256).
package dirtycheck

import (
	"fmt"
	"io"
)

// PageSize is the dirtier's stride.
const PageSize = 4096

// Pattern is the state of the dirtier's range at one instant.
type Pattern struct {
	Value    uint8  // the value of the pages at and after the boundary
	Boundary uint64 // pages [0, Boundary) hold Value+1; 0 means all equal
	Pages    uint64
}

// Check reads the first byte of every page in [start, end) and returns the
// pattern, or an error naming the first page that breaks it.
func Check(mem io.ReaderAt, start, end uint64) (Pattern, error) {
	if end <= start || (end-start)%PageSize != 0 || start%PageSize != 0 {
		return Pattern{}, fmt.Errorf("range [%#x, %#x) is not a whole number of pages", start, end)
	}
	n := (end - start) / PageSize
	vals := make([]byte, n)
	b := []byte{0}
	for i := uint64(0); i < n; i++ {
		if _, err := mem.ReadAt(b, int64(start+i*PageSize)); err != nil {
			return Pattern{}, fmt.Errorf("read page %#x: %w", start+i*PageSize, err)
		}
		vals[i] = b[0]
	}
	return FromValues(vals, start)
}

// FromValues checks a slice of per-page first bytes.
func FromValues(vals []byte, start uint64) (Pattern, error) {
	n := uint64(len(vals))
	if n == 0 {
		return Pattern{}, fmt.Errorf("empty range")
	}
	p := Pattern{Value: vals[n-1], Pages: n}
	i := uint64(0)
	if vals[0] == p.Value+1 {
		for i < n && vals[i] == p.Value+1 {
			i++
		}
		p.Boundary = i
	}
	for ; i < n; i++ {
		if vals[i] != p.Value {
			return p, fmt.Errorf("page %d (%#x) holds %d; want %d (boundary at page %d, value %d)", i, start+i*PageSize, vals[i], p.Value, p.Boundary, p.Value)
		}
	}
	return p, nil
}

// Equal reports whether two patterns are the same instant.
func (p Pattern) Equal(q Pattern) bool { return p == q }

// CountAt returns the counter of page i under this pattern.
func (p Pattern) CountAt(i uint64) uint8 {
	if i < p.Boundary {
		return p.Value + 1
	}
	return p.Value
}
