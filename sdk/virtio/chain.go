package virtio

import (
	"encoding/binary"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
)

// Errors of a malformed descriptor chain. Each is wrapped in a *ChainError
// naming the head and the descriptor; errors.Is finds the kind. All of them
// are driver errors the device cannot recover from (the transport sets
// DEVICE_NEEDS_RESET).
var (
	ErrHeadOutOfRange        = errors.New("head index out of range")
	ErrNextOutOfRange        = errors.New("next index out of range")
	ErrChainLoop             = errors.New("chain longer than its table (descriptor loop)")
	ErrTooManyDescriptors    = errors.New("more descriptors than the device accepts")
	ErrNestedIndirect        = errors.New("indirect descriptor inside an indirect table")
	ErrIndirectWithNext      = errors.New("indirect descriptor with NEXT set")
	ErrIndirectNotNegotiated = errors.New("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
	ErrIndirectLength        = errors.New("indirect table length not a non-zero multiple of 16 within the limit")
	ErrDescOutOfRAM          = errors.New("descriptor outside guest RAM")
	ErrAddressWrap           = errors.New("buffer wraps around the address space")
	ErrReadableAfterWritable = errors.New("device-readable descriptor after a device-writable one")
	ErrChainTooLarge         = errors.New("chain longer than the byte limit")
)

// ChainError is a malformed chain: the kind (one of the Err* values), the
// chain's head and the position of the offending descriptor (its index in
// the descriptor table, or in the indirect table when Indirect is set).
type ChainError struct {
	Kind     error
	Head     uint16
	Index    uint32
	Indirect bool
}

func (e *ChainError) Error() string {
	where := "table"
	if e.Indirect {
		where = "indirect table"
	}
	return tinyfmt.Sprintf("descriptor chain at head %d, %s entry %d: %v", e.Head, where, e.Index, e.Kind)
}

// Unwrap returns the kind.
func (e *ChainError) Unwrap() error { return e.Kind }

// Desc is one split-ring descriptor (§2.7.5).
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// DecodeDesc decodes a 16-byte little-endian descriptor.
func DecodeDesc(b []byte) Desc {
	return Desc{
		Addr:  binary.LittleEndian.Uint64(b),
		Len:   binary.LittleEndian.Uint32(b[8:]),
		Flags: binary.LittleEndian.Uint16(b[12:]),
		Next:  binary.LittleEndian.Uint16(b[14:]),
	}
}

// Encode writes the descriptor's 16-byte little-endian form into b.
func (d Desc) Encode(b []byte) {
	binary.LittleEndian.PutUint64(b, d.Addr)
	binary.LittleEndian.PutUint32(b[8:], d.Len)
	binary.LittleEndian.PutUint16(b[12:], d.Flags)
	binary.LittleEndian.PutUint16(b[14:], d.Next)
}

// Limits bound one chain.
type Limits struct {
	// MaxDescriptors bounds the descriptors of one chain, those of an
	// indirect table included. Zero means abi.MaxSGEntries, the most one
	// scatter-gather host call takes.
	MaxDescriptors int
	// MaxBytes bounds the sum of the chain's buffer lengths. Zero means
	// 4 GiB - 1 (the used ring's length field is 32 bits).
	MaxBytes uint64
	// Indirect says VIRTIO_F_INDIRECT_DESC was negotiated.
	Indirect bool
}

func (l Limits) maxDescriptors() int {
	if l.MaxDescriptors <= 0 {
		return abi.MaxSGEntries
	}
	return l.MaxDescriptors
}

func (l Limits) maxBytes() uint64 {
	if l.MaxBytes == 0 || l.MaxBytes > 1<<32-1 {
		return 1<<32 - 1
	}
	return l.MaxBytes
}

// Chain is one descriptor chain taken from the available ring: its driver
// readable buffers then its device-writable buffers, as scatter-gather lists
// for the host's calls. Adjacent buffers are merged, and empty ones dropped,
// so a list may be shorter than the chain.
type Chain struct {
	Head        uint16
	Readable    []sdk.SGEntry
	Writable    []sdk.SGEntry
	ReadableLen uint64
	WritableLen uint64
	Descriptors int // descriptors walked, indirect tables' entries included
}

// Walker parses descriptor chains. It keeps its buffers between calls, so
// walking does not allocate; one Walker serves one queue at a time.
type Walker struct {
	Mem   Memory
	desc  [DescSize]byte
	table []byte
}

// WalkChain parses the chain at head of the descriptor table at descTable
// (queueSize entries) into c, reusing c's lists. The result satisfies the
// limits; any violation is a *ChainError.
func (w *Walker) WalkChain(c *Chain, descTable uint64, queueSize uint16, head uint16, lim Limits) error {
	c.Head = head
	c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
	c.ReadableLen, c.WritableLen, c.Descriptors = 0, 0, 0
	fail := func(kind error, idx uint32, ind bool) error {
		return &ChainError{Kind: kind, Head: head, Index: idx, Indirect: ind}
	}
	if head >= queueSize {
		return fail(ErrHeadOutOfRange, uint32(head), false)
	}
	maxDesc := lim.maxDescriptors()
	idx, walked := uint32(head), uint32(0)
	for {
		walked++
		if walked > uint32(queueSize) {
			return fail(ErrChainLoop, idx, false)
		}
		if err := w.Mem.Read(descTable+DescSize*uint64(idx), w.desc[:]); err != nil {
			return fail(ErrDescOutOfRAM, idx, false)
		}
		d := DecodeDesc(w.desc[:])
		if d.Flags&DescFIndirect != 0 {
			if err := w.walkIndirect(c, d, head, idx, lim); err != nil {
				return err
			}
		} else {
			c.Descriptors++
			if c.Descriptors > maxDesc {
				return fail(ErrTooManyDescriptors, idx, false)
			}
			if kind := c.add(d, lim); kind != nil {
				return fail(kind, idx, false)
			}
		}
		if d.Flags&DescFNext == 0 {
			return nil
		}
		if d.Next >= queueSize {
			return fail(ErrNextOutOfRange, idx, false)
		}
		idx = uint32(d.Next)
	}
}

// walkIndirect adds the descriptors of the indirect table d points to.
func (w *Walker) walkIndirect(c *Chain, d Desc, head uint16, at uint32, lim Limits) error {
	fail := func(kind error, idx uint32, ind bool) error {
		return &ChainError{Kind: kind, Head: head, Index: idx, Indirect: ind}
	}
	switch {
	case !lim.Indirect:
		return fail(ErrIndirectNotNegotiated, at, false)
	case d.Flags&DescFNext != 0:
		return fail(ErrIndirectWithNext, at, false)
	case d.Len == 0 || d.Len%DescSize != 0 || uint64(d.Len/DescSize) > uint64(lim.maxDescriptors()):
		return fail(ErrIndirectLength, at, false)
	}
	n := d.Len / DescSize
	if cap(w.table) < int(d.Len) {
		w.table = make([]byte, DescSize*lim.maxDescriptors())
	}
	tbl := w.table[:d.Len]
	if err := w.Mem.Read(d.Addr, tbl); err != nil {
		return fail(ErrDescOutOfRAM, at, false)
	}
	// The loop body makes no calls: in the plugin runtime (wazero with
	// termination checks) a call or a taken jump in Go's WebAssembly costs
	// an exit to the host. Inlined, a 256-entry table takes about 60 µs
	// there instead of about 100 µs.
	var (
		le       = binary.LittleEndian
		maxDesc  = lim.maxDescriptors()
		maxBytes = lim.maxBytes()
		i        uint32
		walked   uint32
		kind     error
	)
	var (
		e           []byte
		addr        uint64
		l           uint32
		flags, next uint16
		sg          *[]sdk.SGEntry
		total       *uint64
	)
	for {
		walked++
		if walked > n {
			return fail(ErrChainLoop, i, true)
		}
		e = tbl[DescSize*i : DescSize*i+DescSize]
		addr, l, flags, next = le.Uint64(e), le.Uint32(e[8:]), le.Uint16(e[12:]), le.Uint16(e[14:])
		c.Descriptors++
		switch {
		case flags&DescFIndirect != 0:
			kind = ErrNestedIndirect
		case c.Descriptors > maxDesc:
			kind = ErrTooManyDescriptors
		case l != 0 && addr+uint64(l)-1 < addr:
			kind = ErrAddressWrap
		case c.ReadableLen+c.WritableLen+uint64(l) > maxBytes:
			kind = ErrChainTooLarge
		case flags&DescFWrite == 0 && c.WritableLen != 0:
			kind = ErrReadableAfterWritable
		}
		if kind != nil {
			return fail(kind, i, true)
		}
		if l != 0 {
			sg, total = &c.Readable, &c.ReadableLen
			if flags&DescFWrite != 0 {
				sg, total = &c.Writable, &c.WritableLen
			}
			*total += uint64(l)
			if m := len(*sg); m > 0 && (*sg)[m-1].GPA+uint64((*sg)[m-1].Len) == addr && uint64((*sg)[m-1].Len)+uint64(l) <= 1<<32-1 {
				(*sg)[m-1].Len += l
			} else {
				*sg = append(*sg, sdk.SGEntry{GPA: addr, Len: l})
			}
		}
		if flags&DescFNext == 0 {
			return nil
		}
		if uint32(next) >= n {
			return fail(ErrNextOutOfRange, i, true)
		}
		i = uint32(next)
	}
}

// add appends one buffer descriptor; it returns the error kind or nil.
func (c *Chain) add(d Desc, lim Limits) error {
	if d.Len != 0 && d.Addr+uint64(d.Len)-1 < d.Addr {
		return ErrAddressWrap
	}
	if c.ReadableLen+c.WritableLen+uint64(d.Len) > lim.maxBytes() {
		return ErrChainTooLarge
	}
	if d.Flags&DescFWrite == 0 {
		if len(c.Writable) != 0 || c.WritableLen != 0 {
			return ErrReadableAfterWritable
		}
		c.ReadableLen += uint64(d.Len)
		c.Readable = appendSG(c.Readable, d)
		return nil
	}
	c.WritableLen += uint64(d.Len)
	c.Writable = appendSG(c.Writable, d)
	return nil
}

// appendSG appends a buffer, merging it into the last entry when it
// continues it.
func appendSG(sg []sdk.SGEntry, d Desc) []sdk.SGEntry {
	if d.Len == 0 {
		return sg
	}
	if n := len(sg); n > 0 {
		last := &sg[n-1]
		if last.GPA+uint64(last.Len) == d.Addr && uint64(last.Len)+uint64(d.Len) <= 1<<32-1 {
			last.Len += d.Len
			return sg
		}
	}
	return append(sg, sdk.SGEntry{GPA: d.Addr, Len: d.Len})
}

// SGSlice appends to dst the part [off, off+n) of the buffers in sg and
// returns dst and the bytes it covers (less than n when sg is shorter).
func SGSlice(dst, sg []sdk.SGEntry, off, n uint64) ([]sdk.SGEntry, uint64) {
	var got uint64
	for _, e := range sg {
		if n == 0 {
			break
		}
		l := uint64(e.Len)
		if off >= l {
			off -= l
			continue
		}
		take := min(l-off, n)
		dst = append(dst, sdk.SGEntry{GPA: e.GPA + off, Len: uint32(take)})
		got += take
		n -= take
		off = 0
	}
	return dst, got
}

// SGAt returns the guest address of byte off of the buffers in sg.
func SGAt(sg []sdk.SGEntry, off uint64) (uint64, bool) {
	for _, e := range sg {
		if off < uint64(e.Len) {
			return e.GPA + off, true
		}
		off -= uint64(e.Len)
	}
	return 0, false
}

// SGRange returns the part [off, off+n) of sg, whose buffers hold total
// bytes. In the usual request layout (the range starts in the first
// entry, or right after it, and ends in the last one) it runs no loop
// over the entries: it re-slices sg, or copies it into dst once and trims
// the ends. Otherwise it is SGSlice. dst must not share sg's array.
func SGRange(dst, sg []sdk.SGEntry, off, n, total uint64) ([]sdk.SGEntry, uint64) {
	if off > total || n > total-off || len(sg) == 0 || n == 0 {
		return SGSlice(dst[:0], sg, off, n)
	}
	if off != 0 && off == uint64(sg[0].Len) {
		sg, off, total = sg[1:], 0, total-off
		if len(sg) == 0 {
			return dst[:0], 0
		}
	}
	last := uint64(sg[len(sg)-1].Len)
	cut := total - off - n
	if off >= uint64(sg[0].Len) || cut > last {
		return SGSlice(dst[:0], sg, off, n)
	}
	if cut == last && len(sg) > 1 && (off == 0 || len(sg) > 2) {
		// The range ends exactly before the last entry (a status byte).
		if off == 0 {
			return sg[:len(sg)-1], n
		}
		sg, cut = sg[:len(sg)-1], 0
	} else if cut == last {
		return SGSlice(dst[:0], sg, off, n)
	}
	if off == 0 && cut == 0 {
		return sg, n
	}
	dst = append(dst[:0], sg...)
	dst[0].GPA += off
	dst[0].Len -= uint32(off)
	dst[len(dst)-1].Len -= uint32(cut)
	return dst, n
}
