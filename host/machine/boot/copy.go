package boot

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// copyChunk bounds the buffer used to move file data into guest memory, so
// a huge (or hostile) segment never causes a huge allocation.
const copyChunk = 1 << 20

// errShortFile reports that a file ended before the data it announces.
var errShortFile = errors.New("file too short")

// readFull reads exactly len(buf) bytes at off, reporting errShortFile when
// the file ends early.
func readFull(r io.ReaderAt, buf []byte, off uint64) error {
	if off > math.MaxInt64 || uint64(len(buf)) > math.MaxInt64-off {
		return fmt.Errorf("offset %#x+%#x: %w", off, len(buf), errShortFile)
	}
	n, err := r.ReadAt(buf, int64(off))
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("need %#x bytes at offset %#x, file has %#x: %w", len(buf), off, n, errShortFile)
	}
	return fmt.Errorf("read %#x bytes at offset %#x: %w", len(buf), off, err)
}

// copyToGuest copies n bytes from src at srcOff to guest memory at gpa.
func copyToGuest(mem io.WriterAt, gpa uint64, src io.ReaderAt, srcOff, n uint64) error {
	buf := make([]byte, min(n, copyChunk))
	for done := uint64(0); done < n; {
		chunk := buf[:min(n-done, uint64(len(buf)))]
		if err := readFull(src, chunk, srcOff+done); err != nil {
			return err
		}
		if err := writeGuest(mem, gpa+done, chunk); err != nil {
			return err
		}
		done += uint64(len(chunk))
	}
	return nil
}

// zeroGuest writes n zero bytes to guest memory at gpa.
func zeroGuest(mem io.WriterAt, gpa, n uint64) error {
	buf := make([]byte, min(n, copyChunk))
	for done := uint64(0); done < n; {
		chunk := buf[:min(n-done, uint64(len(buf)))]
		if err := writeGuest(mem, gpa+done, chunk); err != nil {
			return err
		}
		done += uint64(len(chunk))
	}
	return nil
}

// writeGuest writes b to guest memory at gpa and reports short writes.
func writeGuest(mem io.WriterAt, gpa uint64, b []byte) error {
	if gpa > math.MaxInt64 {
		return fmt.Errorf("guest address %#x out of range", gpa)
	}
	n, err := mem.WriteAt(b, int64(gpa))
	if err != nil {
		return fmt.Errorf("write %#x bytes at guest address %#x: %w", len(b), gpa, err)
	}
	if n != len(b) {
		return fmt.Errorf("write %#x bytes at guest address %#x: short write (%#x)", len(b), gpa, n)
	}
	return nil
}

// rangeFits reports whether [addr, addr+size) lies inside [0, limit).
func rangeFits(addr, size, limit uint64) bool {
	return addr <= limit && size <= limit-addr
}
