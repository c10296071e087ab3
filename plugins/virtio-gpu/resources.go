package main

import (
	"errors"
	"sort"
	"unsafe"

	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
)

// memEntry and sdk.SGEntry must have the same layout: the backing pool is
// handed to the host's scatter-gather calls as it is.
var (
	_ [unsafe.Sizeof(memEntry{}) - unsafe.Sizeof(sdk.SGEntry{})]struct{}
	_ [unsafe.Sizeof(sdk.SGEntry{}) - unsafe.Sizeof(memEntry{})]struct{}
	_ [unsafe.Sizeof(backingChunk{}) - backingChunkEntries*16]struct{}
	_ [unsafe.Sizeof(pixelChunk{}) - chunkBytes]struct{}
)

// arenaSlice returns the pixel arena as one slice (the chunks are adjacent
// elements of one array).
func arenaSlice() []byte { return unsafe.Slice(&arena[0].Data[0], arenaBytes) }

// poolSlice returns the backing pool as scatter-gather entries.
func poolSlice() []sdk.SGEntry {
	return unsafe.Slice((*sdk.SGEntry)(unsafe.Pointer(&backing[0].Entries[0])), maxBackingEntries)
}

// validFormat reports whether f is one of the eight 32-bit formats.
func validFormat(f uint32) bool {
	switch f {
	case formatB8G8R8A8, formatB8G8R8X8, formatA8R8G8B8, formatX8R8G8B8,
		formatR8G8B8A8, formatX8B8G8R8, formatA8B8G8R8, formatR8G8B8X8:
		return true
	}
	return false
}

// findResource returns the live resource with id, or nil (id 0 is never
// live).
func findResource(id uint32) *resource {
	if id == 0 {
		return nil
	}
	for i := range st.Resources {
		if st.Resources[i].ID == id {
			return &st.Resources[i]
		}
	}
	return nil
}

// freeSlot returns a free entry of the resource table, or nil.
func freeSlot() *resource {
	for i := range st.Resources {
		if st.Resources[i].ID == 0 {
			return &st.Resources[i]
		}
	}
	return nil
}

// liveByOffset returns the live resources ordered by their place in the
// arena.
func liveByOffset() []*resource {
	var live []*resource
	for i := range st.Resources {
		if st.Resources[i].ID != 0 {
			live = append(live, &st.Resources[i])
		}
	}
	sort.Slice(live, func(a, b int) bool { return live[a].Pixels < live[b].Pixels })
	return live
}

// allocPixels finds n bytes of the arena for a new resource: the first gap
// that fits, or, when the free bytes suffice but no gap does, the end of the
// arena after moving every image down (compaction). ok is false when the
// arena has fewer than n free bytes.
func (d *device) allocPixels(n uint32) (off uint32, ok bool) {
	live := liveByOffset()
	var next, used uint32
	for _, r := range live {
		if r.Pixels-next >= n {
			return next, true
		}
		next = r.Pixels + r.imageBytes()
		used += r.imageBytes()
	}
	if arenaBytes-next >= n {
		return next, true
	}
	if arenaBytes-used < n {
		return 0, false
	}
	next = 0
	for _, r := range live {
		size := r.imageBytes()
		if r.Pixels != next {
			copy(d.pixels[next:next+size], d.pixels[r.Pixels:r.Pixels+size])
			r.Pixels = next
		}
		next += size
	}
	return next, true
}

// addBacking appends n entries to the backing pool for r, reading them from
// the guest; the caller checked that they fit.
func (d *device) addBacking(r *resource, entries []sdk.SGEntry) {
	start := st.BackingUsed
	var total uint64
	for i := range entries {
		entries[i].Flags = 0 // the guest's padding; the host wants zero
		total += uint64(entries[i].Len)
	}
	r.BackingStart, r.BackingCount, r.BackingBytes = start, uint32(len(entries)), total
	st.BackingUsed += uint32(len(entries))
}

// dropBacking removes r's entries from the pool, keeping it compact.
func (d *device) dropBacking(r *resource) {
	if r.BackingCount == 0 {
		return
	}
	start, n := r.BackingStart, r.BackingCount
	copy(d.pool[start:], d.pool[start+n:st.BackingUsed])
	clear(d.pool[st.BackingUsed-n : st.BackingUsed])
	st.BackingUsed -= n
	for i := range st.Resources {
		o := &st.Resources[i]
		if o.ID != 0 && o.BackingCount != 0 && o.BackingStart > start {
			o.BackingStart -= n
		}
	}
	r.BackingStart, r.BackingCount, r.BackingBytes = 0, 0, 0
}

// backingOf returns r's entries.
func (d *device) backingOf(r *resource) []sdk.SGEntry {
	return d.pool[r.BackingStart : r.BackingStart+r.BackingCount]
}

// destroy disables the scanouts showing r and frees it.
func (d *device) destroy(r *resource) {
	for i := range st.Scanouts {
		if st.Scanouts[i].ResourceID == r.ID {
			disableScanout(&st.Scanouts[i])
		}
	}
	d.dropBacking(r)
	*r = resource{}
}

// disableScanout turns a scanout off; the cursor state stays (as QEMU).
func disableScanout(s *scanout) {
	s.ResourceID, s.Width, s.Height, s.X, s.Y = 0, 0, 0, 0, 0
	s.FBFormat, s.FBBytesPP, s.FBWidth, s.FBHeight, s.FBStride, s.FBOffset = 0, 0, 0, 0, 0, 0
}

// setFramebuffer fills the fb.* fields of s, which shows r at (s.X, s.Y).
func setFramebuffer(s *scanout, r *resource) {
	s.FBFormat = r.Format
	s.FBBytesPP = bytesPerPixel
	s.FBWidth, s.FBHeight = r.Width, r.Height
	s.FBStride = r.stride()
	s.FBOffset = uint32(s.Y)*r.stride() + uint32(s.X)*bytesPerPixel
}

// scanoutRectOK checks a scanout rectangle against the resource it shows.
func scanoutRectOK(x, y, w, h uint32, r *resource) bool {
	return w >= minScanoutSize && h >= minScanoutSize &&
		x <= r.Width && y <= r.Height && w <= r.Width-x && h <= r.Height-y
}

// chunkInUse reports whether a live resource's image touches arena chunk
// c: whether subsection virtio-gpu/pixels/c goes on the wire.
func chunkInUse(c uint32) bool {
	lo, hi := c*chunkBytes, (c+1)*chunkBytes
	for i := range st.Resources {
		r := &st.Resources[i]
		if r.ID != 0 && r.Pixels < hi && r.Pixels+r.imageBytes() > lo {
			return true
		}
	}
	return false
}

// checkLoaded validates state written by an incoming migration and
// rebuilds what derives from it. Nothing in the stream is trusted: a
// resource table that does not describe a consistent arena and pool is
// refused.
func (d *device) checkLoaded() error {
	if st.MaxOutputs != d.outputs {
		return tinyfmt.Errorf("the source had max_outputs %d, this device has %d", st.MaxOutputs, d.outputs)
	}
	if st.BackingUsed > maxBackingEntries {
		return tinyfmt.Errorf("backing pool holds %d entries, at most %d fit", st.BackingUsed, maxBackingEntries)
	}
	clear(d.pool[st.BackingUsed:])
	seen := map[uint32]bool{}
	var backingTotal uint32
	type span struct{ lo, hi uint32 }
	var spans []span
	for i := range st.Resources {
		r := &st.Resources[i]
		if r.ID == 0 {
			if *r != (resource{}) {
				return tinyfmt.Errorf("resource table entry %d is free but not zero", i)
			}
			continue
		}
		if seen[r.ID] {
			return tinyfmt.Errorf("resource %d appears twice", r.ID)
		}
		seen[r.ID] = true
		if !validFormat(r.Format) || r.Width == 0 || r.Height == 0 || r.Width > maxDimension || r.Height > maxDimension {
			return tinyfmt.Errorf("resource %d: format %d, %dx%d is not a valid 2D resource", r.ID, r.Format, r.Width, r.Height)
		}
		size := uint64(r.Width) * uint64(r.Height) * bytesPerPixel
		if size > arenaBytes || uint64(r.Pixels)+size > arenaBytes {
			return tinyfmt.Errorf("resource %d: image [%d, +%d) outside the %d-byte pixel arena", r.ID, r.Pixels, size, arenaBytes)
		}
		spans = append(spans, span{r.Pixels, r.Pixels + uint32(size)})
		if r.BackingCount == 0 {
			if r.BackingStart != 0 || r.BackingBytes != 0 {
				return tinyfmt.Errorf("resource %d: backing fields set without entries", r.ID)
			}
			continue
		}
		if uint64(r.BackingStart)+uint64(r.BackingCount) > uint64(st.BackingUsed) {
			return tinyfmt.Errorf("resource %d: backing entries [%d, +%d) outside the %d used", r.ID, r.BackingStart, r.BackingCount, st.BackingUsed)
		}
		backingTotal += r.BackingCount
		var bytes uint64
		for k := range d.backingOf(r) {
			e := &d.backingOf(r)[k]
			e.Flags = 0
			bytes += uint64(e.Len)
		}
		if bytes != r.BackingBytes {
			return tinyfmt.Errorf("resource %d: backing of %d bytes recorded, its entries hold %d", r.ID, r.BackingBytes, bytes)
		}
	}
	if backingTotal != st.BackingUsed {
		return tinyfmt.Errorf("backing pool: %d entries used, resources own %d", st.BackingUsed, backingTotal)
	}
	sort.Slice(spans, func(a, b int) bool { return spans[a].lo < spans[b].lo })
	for k := 1; k < len(spans); k++ {
		if spans[k].lo < spans[k-1].hi {
			return errors.New("two resource images overlap in the pixel arena")
		}
	}
	// Backing ranges are disjoint iff they tile [0, BackingUsed): their
	// counts add up (checked above) and no two start at the same place or
	// overlap.
	var ranges []span
	for i := range st.Resources {
		r := &st.Resources[i]
		if r.ID != 0 && r.BackingCount != 0 {
			ranges = append(ranges, span{r.BackingStart, r.BackingStart + r.BackingCount})
		}
	}
	sort.Slice(ranges, func(a, b int) bool { return ranges[a].lo < ranges[b].lo })
	for k := 1; k < len(ranges); k++ {
		if ranges[k].lo < ranges[k-1].hi {
			return errors.New("two resources share backing entries")
		}
	}
	for i := range st.Scanouts {
		s := &st.Scanouts[i]
		if s.ResourceID == 0 {
			disableScanout(s)
			continue
		}
		if uint32(i) >= d.outputs {
			return tinyfmt.Errorf("scanout %d shows resource %d, but the device has %d outputs", i, s.ResourceID, d.outputs)
		}
		r := findResource(s.ResourceID)
		if r == nil {
			return tinyfmt.Errorf("scanout %d shows resource %d, which does not exist", i, s.ResourceID)
		}
		if s.X < 0 || s.Y < 0 || !scanoutRectOK(uint32(s.X), uint32(s.Y), s.Width, s.Height, r) {
			return tinyfmt.Errorf("scanout %d: rectangle (%d,%d)+%dx%d does not fit resource %d (%dx%d)", i, s.X, s.Y, s.Width, s.Height, r.ID, r.Width, r.Height)
		}
		// Streams of scanout layout 1 carry no fb.* fields; both layouts
		// describe the same framebuffer, which follows from the resource.
		setFramebuffer(s, r)
	}
	return nil
}
