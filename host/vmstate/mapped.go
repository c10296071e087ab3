package vmstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
)

// The mapped-ram layout (QEMU's capability of that name, for file
// migration): the RAM section's block list carries, after each block's
// name and size, a header giving where in the file the block's page bitmap
// and its pages lie. The pages region has room for every page of the block
// at its own offset (page i at pages_offset + i*PageSize) and starts on a
// MappedRAMAlign boundary; only the pages set in the bitmap are written,
// zero pages are left out (holes in the file) and read back as zeroes. The
// stream itself goes on right after the last page of the region. No page
// record appears in the stream. The configuration section carries the
// "configuration/capabilities" subsection naming "mapped-ram", as QEMU's
// does, so that a destination without the capability refuses the stream
// by name.
const (
	// MappedRAMCapability is the capability's name in the configuration
	// section and in migrate-set-capabilities.
	MappedRAMCapability = "mapped-ram"
	// MappedRAMHeaderVersion is the only header version written and read.
	MappedRAMHeaderVersion uint32 = 1
	// MappedRAMHeaderLen is the size of the per-block header: be32
	// version, be64 page size, be64 bitmap offset, be64 pages offset (file
	// offsets).
	MappedRAMHeaderLen = 28
	// MappedRAMAlign is where the writer starts each pages region (QEMU's
	// MAPPED_RAM_FILE_OFFSET_ALIGNMENT); the reader requires page
	// alignment only, as QEMU does.
	MappedRAMAlign = 1 << 20

	capabilitiesName    = "configuration/capabilities"
	capabilitiesVersion = 1
	// maxCapabilities bounds the capability list a stream may carry.
	maxCapabilities = 64
)

// mappedSaveChunk is the share of a block a saving worker takes at a time
// (a multiple of 64 pages, so that workers set distinct bitmap words).
const mappedSaveChunk = 8 << 20

// MappedFile is the file a mapped-ram stream goes to: pages and bitmaps are
// written at their offsets (pwrite), and the stream moves past each pages
// region with Seek.
type MappedFile interface {
	io.WriterAt
	io.Seeker
}

// NewMappedWriter starts a mapped-ram stream (see MappedRAMCapability): like
// NewWriter, with the capabilities subsection in the configuration section.
// w writes the stream at f's current position, which must be base (the file
// offset of the stream's first byte), with no buffer between w and f: RAMMapped
// flushes the Writer's buffer and seeks f past each pages region.
func NewMappedWriter(w io.Writer, f MappedFile, base int64, machine string) (*Writer, error) {
	wr, err := newWriter(w, machine, []string{MappedRAMCapability})
	if err != nil {
		return nil, err
	}
	wr.mapped, wr.base = f, base
	return wr, nil
}

// appendCapabilities appends the configuration/capabilities subsection.
func appendCapabilities(b []byte, caps []string) []byte {
	b = append(b, SectionSubsection, byte(len(capabilitiesName)))
	b = append(b, capabilitiesName...)
	b = appendBE32(b, capabilitiesVersion)
	b = appendBE32(b, uint32(len(caps)))
	for _, c := range caps {
		b = append(b, byte(len(c)))
		b = append(b, c...)
	}
	return b
}

// capabilitiesDesc describes the subsection for the vmdesc, as QEMU does:
// the count, then each capability (a length byte and the name).
func capabilitiesDesc(caps []string) *descSection {
	d := &descSection{VMSDName: capabilitiesName, Version: capabilitiesVersion, Fields: []*descField{
		{Name: "caps_count", Type: "uint32", Size: 4},
	}}
	for i, c := range caps {
		f := &descField{Name: "capabilities", Type: "capability", Size: int64(1 + len(c))}
		if len(caps) > 1 {
			f.Index = i64p(int64(i))
		}
		d.Fields = append(d.Fields, f)
	}
	return d
}

// RAMMapped writes the whole RAM section of a mapped-ram stream in one go
// (a snapshot of a stopped guest): START with the block list and each
// block's header, every non-zero page written from guest memory to its
// offset in the file (no copy through a buffer), each block's bitmap, and
// an END section without pages. Bytes in the stats counts the file bytes
// the section spans, holes included.
func (w *Writer) RAMMapped(blocks []*guestmem.Block) (RAMStats, error) {
	var st RAMStats
	if w.err != nil {
		return st, w.err
	}
	if w.mapped == nil {
		return st, errors.New("vmstate writer: RAMMapped needs a writer from NewMappedWriter")
	}
	if w.ramState != 0 {
		return st, errors.New("vmstate writer: RAM section already started")
	}
	b, err := ramStartHeader(blocks)
	if err != nil {
		return st, err
	}
	start := w.off
	w.write(b)
	for _, blk := range blocks {
		w.mappedBlock(blk, &st)
	}
	w.write(appendBE64(nil, RAMFlagEOS))
	w.footer(RAMSectionID)
	// The END section QEMU sends once the pages are in the file.
	w.write(appendBE64(appendBE32([]byte{SectionEnd}, RAMSectionID), RAMFlagEOS))
	w.footer(RAMSectionID)
	w.blocks = append([]*guestmem.Block(nil), blocks...)
	w.ramState = 2
	st.Bytes = w.off - start
	return st, w.err
}

// mappedBlock writes one block's name, size and header, then its pages and
// bitmap at their offsets, and moves the stream past its pages region.
func (w *Writer) mappedBlock(blk *guestmem.Block, st *RAMStats) {
	pages := blk.Pages()
	bitmapLen := int64((pages + 63) / 64 * 8)
	h := append([]byte{byte(len(blk.Name))}, blk.Name...)
	h = appendBE64(h, blk.Size())
	bitmapOff := w.base + w.off + int64(len(h)) + MappedRAMHeaderLen
	align := int64(MappedRAMAlign)
	if w.align > 0 {
		align = w.align
	}
	pagesOff := (bitmapOff + bitmapLen + align - 1) &^ (align - 1)
	h = appendBE32(h, MappedRAMHeaderVersion)
	h = appendBE64(h, PageSize)
	h = appendBE64(h, uint64(bitmapOff))
	h = appendBE64(h, uint64(pagesOff))
	w.write(h)
	if err := w.Flush(); err != nil {
		return
	}
	bitmap := make([]uint64, (pages+63)/64)
	// The block is cut in chunks of whole bitmap words that the workers
	// take in turn: each finds the non-zero pages of its chunk, sets their
	// bits and writes each run of them with one pwrite.
	const chunkPages = mappedSaveChunk / PageSize
	var (
		nextChunk     atomic.Uint64
		nPages, nZero atomic.Uint64
		errOnce       sync.Once
		failed        atomic.Bool
		wg            sync.WaitGroup
	)
	worker := func() {
		defer wg.Done()
		for !failed.Load() {
			first := nextChunk.Add(chunkPages) - chunkPages
			if first >= pages {
				return
			}
			last := min(first+chunkPages, pages)
			var runStart, runEnd uint64
			flush := func() error {
				if runEnd > runStart {
					if _, err := w.mapped.WriteAt(blk.Mem[runStart:runEnd], pagesOff+int64(runStart)); err != nil {
						return fmt.Errorf("vmstate writer: RAM block %q: write pages at file offset %#x: %w", blk.Name, pagesOff+int64(runStart), err)
					}
				}
				return nil
			}
			var present uint64
			for p := first; p < last; p++ {
				off := p * PageSize
				if bytes.Equal(blk.Mem[off:off+PageSize], zeroPage[:]) {
					continue
				}
				present++
				bitmap[p/64] |= 1 << (p % 64)
				if runEnd != off {
					if err := flush(); err != nil {
						errOnce.Do(func() { w.err = err })
						failed.Store(true)
						return
					}
					runStart = off
				}
				runEnd = off + PageSize
			}
			if err := flush(); err != nil {
				errOnce.Do(func() { w.err = err })
				failed.Store(true)
				return
			}
			nPages.Add(present)
			nZero.Add(last - first - present)
		}
	}
	for range max(w.MappedWorkers, 1) {
		wg.Add(1)
		go worker()
	}
	wg.Wait()
	st.Pages += nPages.Load()
	st.ZeroPages += nZero.Load()
	if w.err != nil {
		return
	}
	bm := make([]byte, bitmapLen)
	for i, word := range bitmap {
		binary.LittleEndian.PutUint64(bm[i*8:], word)
	}
	if _, err := w.mapped.WriteAt(bm, bitmapOff); err != nil {
		w.err = fmt.Errorf("vmstate writer: RAM block %q: write the page bitmap at file offset %#x: %w", blk.Name, bitmapOff, err)
		return
	}
	next := pagesOff + int64(blk.Size())
	if _, err := w.mapped.Seek(next, io.SeekStart); err != nil {
		w.err = fmt.Errorf("vmstate writer: RAM block %q: seek past the pages region to %#x: %w", blk.Name, next, err)
		return
	}
	w.off = next - w.base
}

// MappedRAM says how a load reads a mapped-ram stream: the stream's file,
// for the bitmaps and pages (read with pread, straight into guest memory),
// and where the stream lies in it. Set it on LoadOptions when this side has
// the mapped-ram capability on; a stream written with the capability is
// refused without it, and one written without it is refused with it.
type MappedRAM struct {
	// File is the file holding the stream.
	File io.ReaderAt
	// Base is the file offset of the stream's first byte (the offset of a
	// file: URI).
	Base int64
	// Size is the file's size in bytes.
	Size int64
	// Workers is the number of goroutines reading pages (at least 1).
	Workers int
}

// mappedPlan is a validated block of a mapped-ram stream, loaded after
// the whole stream was checked.
type mappedPlan struct {
	b        *guestmem.Block
	bitmap   []uint64
	pagesOff int64 // file offset
}

// capabilities reads the configuration/capabilities subsection (its
// header already peeked at off) and checks mapped-ram against this side.
func (l *loader) capabilities(off int64, hdrLen int) error {
	w := where{section: configurationName, sectionID: -1, subsection: capabilitiesName}
	l.r.discard(hdrLen)
	ver, err := l.r.be32()
	if err != nil {
		return w.wrap(l.r.off, fmt.Errorf("version: %w", err))
	}
	if ver != capabilitiesVersion {
		return w.err(off, "version %d, want %d", ver, capabilitiesVersion)
	}
	n, err := l.r.be32()
	if err != nil {
		return w.wrap(l.r.off, fmt.Errorf("capability count: %w", err))
	}
	if n > maxCapabilities {
		return w.err(l.r.off-4, "%d capabilities exceed %d", n, maxCapabilities)
	}
	for i := uint32(0); i < n; i++ {
		coff := l.r.off
		c, err := l.r.str()
		if err != nil {
			return w.wrap(coff, fmt.Errorf("capability %d: %w", i, err))
		}
		if c != MappedRAMCapability {
			return w.err(coff, "capability %q is on in the stream; this side does not support it", c)
		}
		l.streamMapped = true
	}
	return nil
}

// checkMappedCapability compares the stream's mapped-ram with this side's,
// once the configuration section was read.
func (l *loader) checkMappedCapability(off int64) error {
	w := where{section: configurationName, sectionID: -1}
	switch {
	case l.streamMapped && l.opt.MappedRAM == nil:
		return w.err(off, "capability %q is off here, but the stream was written with it on: set it with migrate-set-capabilities before loading", MappedRAMCapability)
	case !l.streamMapped && l.opt.MappedRAM != nil:
		return w.err(off, "capability %q is on here, but the stream was written without it", MappedRAMCapability)
	}
	return nil
}

// mappedHeader reads and checks a block's mapped-ram header and its bitmap,
// records the block for loading, and moves the stream past its pages.
func (l *loader) mappedHeader(b *guestmem.Block, w where) error {
	m := l.opt.MappedRAM
	off := l.r.off
	var h [MappedRAMHeaderLen]byte
	if err := l.r.full(h[:]); err != nil {
		return w.wrap(off, fmt.Errorf("RAM block %q: mapped-ram header: %w", b.Name, err))
	}
	version := binary.BigEndian.Uint32(h[0:])
	pageSize := binary.BigEndian.Uint64(h[4:])
	bitmapOff := binary.BigEndian.Uint64(h[12:])
	pagesOff := binary.BigEndian.Uint64(h[20:])
	fileOff := func(o int64) uint64 { return uint64(m.Base + o) }
	switch {
	case version != MappedRAMHeaderVersion:
		return w.err(off, "RAM block %q: mapped-ram header version %d, want %d", b.Name, version, MappedRAMHeaderVersion)
	case pageSize != PageSize:
		return w.err(off+4, "RAM block %q: mapped-ram page size %d, want %d", b.Name, pageSize, PageSize)
	}
	bitmapLen := (b.Pages() + 63) / 64 * 8
	hdrEnd := fileOff(l.r.off)
	size := uint64(m.Size)
	switch {
	case bitmapOff < hdrEnd || bitmapOff > size || size-bitmapOff < bitmapLen:
		return w.err(off+12, "RAM block %q: bitmap of %d bytes at file offset %#x is not between the header's end (%#x) and the file's end (%#x)", b.Name, bitmapLen, bitmapOff, hdrEnd, size)
	case pagesOff%PageSize != 0:
		return w.err(off+20, "RAM block %q: pages region at file offset %#x is not aligned to %d", b.Name, pagesOff, PageSize)
	case pagesOff < bitmapOff+bitmapLen:
		return w.err(off+20, "RAM block %q: pages region at file offset %#x overlaps the bitmap [%#x, %#x)", b.Name, pagesOff, bitmapOff, bitmapOff+bitmapLen)
	case pagesOff > size || size-pagesOff <= b.Size():
		return w.err(off+20, "RAM block %q: pages region [%#x, %#x) does not end before the file's end (%#x): the file is truncated", b.Name, pagesOff, pagesOff+b.Size(), size)
	}
	raw := make([]byte, bitmapLen)
	if n, err := m.File.ReadAt(raw, int64(bitmapOff)); n != len(raw) {
		return w.err(off+12, "RAM block %q: read the bitmap at file offset %#x: %d of %d bytes: %v", b.Name, bitmapOff, n, len(raw), err)
	}
	bitmap := make([]uint64, len(raw)/8)
	for i := range bitmap {
		bitmap[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	if extra := b.Pages() % 64; extra != 0 && bitmap[len(bitmap)-1]>>extra != 0 {
		return w.err(off+12, "RAM block %q: the bitmap at file offset %#x marks pages past the block's %d pages", b.Name, bitmapOff, b.Pages())
	}
	l.mapped = append(l.mapped, mappedPlan{b: b, bitmap: bitmap, pagesOff: int64(pagesOff)})
	next := int64(pagesOff+b.Size()) - m.Base
	if err := l.r.seekTo(next); err != nil {
		return w.wrap(off+20, fmt.Errorf("RAM block %q: the stream after the pages region: %w", b.Name, err))
	}
	return nil
}

// mappedJob is a run of pages to read (present) or to zero.
type mappedJob struct {
	plan    *mappedPlan
	off, n  uint64 // byte range in the block
	present bool
}

// maxMappedRead bounds one pread, so that the workers share the work.
const maxMappedRead = 8 << 20

// loadMapped reads every present page of the validated blocks straight
// into guest memory with large preads (a run of consecutive pages at a
// time, split across the workers), and zeroes the absent pages.
func (l *loader) loadMapped() error {
	var jobs []mappedJob
	for i := range l.mapped {
		p := &l.mapped[i]
		pages := p.b.Pages()
		for pg := uint64(0); pg < pages; {
			present := p.bitmap[pg/64]&(1<<(pg%64)) != 0
			end := nextBit(p.bitmap, pg, pages, !present)
			for s := pg * PageSize; s < end*PageSize; {
				n := min(end*PageSize-s, maxMappedRead)
				if !present {
					n = end*PageSize - s
				}
				jobs = append(jobs, mappedJob{plan: p, off: s, n: n, present: present})
				s += n
			}
			if present {
				l.res.Pages += end - pg
			} else {
				l.res.ZeroPages += end - pg
			}
			pg = end
		}
	}
	workers := max(l.opt.MappedRAM.Workers, 1)
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		failed  atomic.Bool
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(len(jobs)) {
					return
				}
				if err := l.mappedJob(&jobs[i]); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func (l *loader) mappedJob(j *mappedJob) error {
	b := j.plan.b
	mem := b.Mem[j.off : j.off+j.n]
	if !j.present {
		zeroRange(b, mem)
		return nil
	}
	// Fault the run in writable first (MADV_POPULATE_WRITE, a hint: an
	// older kernel only loses the speed-up): on this host two readers
	// whose preads take the first-touch faults themselves were slower
	// than one, while populate-then-pread on each was the fastest.
	_ = unix.Madvise(mem, unix.MADV_POPULATE_WRITE)
	at := j.plan.pagesOff + int64(j.off)
	for done := 0; done < len(mem); {
		n, err := l.opt.MappedRAM.File.ReadAt(mem[done:], at+int64(done))
		done += n
		if done < len(mem) {
			if err == nil || errors.Is(err, io.EOF) {
				err = ErrTruncated
			}
			return fmt.Errorf("vmstate load: RAM block %q: read pages at %#x from file offset %#x: %w", b.Name, j.off+uint64(done), at+int64(done), err)
		}
	}
	return nil
}

// nextBit returns the first page at or after from (below n) whose bit is
// set (want true) or clear (want false), or n.
func nextBit(bm []uint64, from, n uint64, want bool) uint64 {
	for p := from; p < n; {
		word := bm[p/64]
		if !want {
			word = ^word
		}
		word >>= p % 64
		if word != 0 {
			return min(p+uint64(bits.TrailingZeros64(word)), n)
		}
		p = (p/64 + 1) * 64
	}
	return n
}

// zeroRange makes a page-aligned range of a block read as zeroes without
// touching memory that is already unpopulated: anonymous memory is dropped
// (MADV_DONTNEED), a memfd's pages are removed (MADV_REMOVE); where the
// kernel refuses, the non-zero pages are cleared.
func zeroRange(b *guestmem.Block, mem []byte) {
	advice := unix.MADV_DONTNEED
	if b.FD >= 0 {
		advice = unix.MADV_REMOVE
	}
	if unix.Madvise(mem, advice) == nil {
		return
	}
	for off := 0; off < len(mem); off += PageSize {
		if p := mem[off : off+PageSize]; !bytes.Equal(p, zeroPage[:]) {
			clear(p)
		}
	}
}
