package vmstate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// streamReader reads big-endian items from a stream and tracks the offset.
// It reads either through a buffer from an io.Reader or, for a stream
// already in memory (a mapped snapshot file), straight from the bytes, so
// that page data is copied once, from the stream to guest RAM.
type streamReader struct {
	br  *bufio.Reader
	mem []byte // the whole stream when in memory; br is nil then
	off int64

	// rs and base, for a seekable stream read through br: the reader and
	// its position at the stream's first byte, so that seekTo can jump
	// over a mapped-ram pages region instead of reading it.
	rs   io.ReadSeeker
	base int64
}

func newStreamReader(r io.Reader) *streamReader {
	sr := &streamReader{br: bufio.NewReaderSize(r, 256<<10)}
	if rs, ok := r.(io.ReadSeeker); ok {
		if pos, err := rs.Seek(0, io.SeekCurrent); err == nil {
			sr.rs, sr.base = rs, pos
		}
	}
	return sr
}

func newMemReader(b []byte) *streamReader {
	return &streamReader{mem: b}
}

// rest is the unread part of an in-memory stream.
func (r *streamReader) rest() []byte { return r.mem[r.off:] }

// full fills p or fails with ErrTruncated.
func (r *streamReader) full(p []byte) error {
	if r.br == nil {
		n := copy(p, r.rest())
		r.off += int64(n)
		if n < len(p) {
			return fmt.Errorf("%w: need %d bytes, the stream ends after %d", ErrTruncated, len(p), n)
		}
		return nil
	}
	n, err := io.ReadFull(r.br, p)
	r.off += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: need %d bytes, the stream ends after %d", ErrTruncated, len(p), n)
		}
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

func (r *streamReader) u8() (byte, error) {
	if r.br == nil {
		if len(r.rest()) == 0 {
			return 0, fmt.Errorf("%w: need 1 byte, the stream ends", ErrTruncated)
		}
		r.off++
		return r.mem[r.off-1], nil
	}
	b, err := r.br.ReadByte()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("%w: need 1 byte, the stream ends", ErrTruncated)
		}
		return 0, fmt.Errorf("read: %w", err)
	}
	r.off++
	return b, nil
}

func (r *streamReader) be32() (uint32, error) {
	var b [4]byte
	if err := r.full(b[:]); err != nil {
		return 0, err
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), nil
}

func (r *streamReader) be64() (uint64, error) {
	var b [8]byte
	if err := r.full(b[:]); err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// str reads a string of a length byte and that many bytes.
func (r *streamReader) str() (string, error) {
	n, err := r.u8()
	if err != nil {
		return "", err
	}
	var b [255]byte
	if err := r.full(b[:n]); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// peek returns the next n bytes without consuming them; fewer at the end.
func (r *streamReader) peek(n int) []byte {
	if r.br == nil {
		return r.rest()[:min(n, len(r.rest()))]
	}
	b, _ := r.br.Peek(n)
	return b
}

func (r *streamReader) discard(n int) {
	if r.br == nil {
		r.off += int64(min(n, len(r.rest())))
		return
	}
	d, _ := r.br.Discard(n)
	r.off += int64(d)
}

// readVar reads n bytes, growing the result as data arrives so that a
// bogus length cannot allocate more than the stream holds.
func (r *streamReader) readVar(n int64) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("negative length %d", n)
	}
	var out []byte
	for int64(len(out)) < n {
		chunk := min(n-int64(len(out)), 1<<20)
		start := len(out)
		out = append(out, make([]byte, chunk)...)
		if err := r.full(out[start:]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// skip consumes n bytes.
func (r *streamReader) skip(n int64) (int64, error) {
	if r.br == nil {
		d := min(n, int64(len(r.rest())))
		r.off += d
		if d < n {
			return d, fmt.Errorf("%w: need %d bytes, the stream ends after %d", ErrTruncated, n, d)
		}
		return d, nil
	}
	d, err := r.br.Discard(int(n))
	r.off += int64(d)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return int64(d), fmt.Errorf("%w: need %d bytes, the stream ends after %d", ErrTruncated, n, d)
		}
		return int64(d), fmt.Errorf("read: %w", err)
	}
	return int64(d), nil
}

// seekTo moves the read position forward to stream offset off (a mapped-ram
// stream continues after a block's pages region). An in-memory stream
// fails with ErrTruncated past its end; a stream read through a reader
// needs one that can seek.
func (r *streamReader) seekTo(off int64) error {
	if off < r.off {
		return fmt.Errorf("cannot seek back from %#x to %#x", r.off, off)
	}
	if r.br == nil {
		if off > int64(len(r.mem)) {
			return fmt.Errorf("%w: offset %#x is past the stream's end (%#x bytes)", ErrTruncated, off, len(r.mem))
		}
		r.off = off
		return nil
	}
	if r.rs == nil {
		_, err := r.skip(off - r.off)
		return err
	}
	if _, err := r.rs.Seek(r.base+off, io.SeekStart); err != nil {
		return fmt.Errorf("seek to %#x: %w", off, err)
	}
	r.br.Reset(r.rs)
	r.off = off
	return nil
}
