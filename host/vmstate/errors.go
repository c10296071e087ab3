package vmstate

import (
	"errors"
	"fmt"
	"strings"
)

// ErrTruncated is wrapped by every error caused by the stream ending early.
var ErrTruncated = errors.New("stream truncated")

// StreamError is an error found while reading a stream. It says where: the
// byte offset in the stream, and when known the section (name and id), the
// subsection and the field.
type StreamError struct {
	Offset     int64
	Section    string // "" outside a section
	SectionID  int64  // -1 when unknown
	Subsection string
	Field      string
	Err        error
}

// Error formats the error as
// `offset 0x1234: section "serial" (id 3) field "ier": reason`.
func (e *StreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "offset %#x", e.Offset)
	if e.Section != "" {
		fmt.Fprintf(&b, ": section %q", e.Section)
		if e.SectionID >= 0 {
			fmt.Fprintf(&b, " (id %d)", e.SectionID)
		}
	} else if e.SectionID >= 0 {
		fmt.Fprintf(&b, ": section id %d", e.SectionID)
	}
	if e.Subsection != "" {
		fmt.Fprintf(&b, " subsection %q", e.Subsection)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, " field %q", e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the underlying error.
func (e *StreamError) Unwrap() error { return e.Err }

// where is the context a reader error is reported in.
type where struct {
	section    string
	sectionID  int64
	subsection string
	field      string
}

var nowhere = where{sectionID: -1}

func (w where) err(off int64, format string, args ...any) error {
	return w.wrap(off, fmt.Errorf(format, args...))
}

func (w where) wrap(off int64, err error) error {
	var se *StreamError
	if errors.As(err, &se) {
		return err
	}
	return &StreamError{Offset: off, Section: w.section, SectionID: w.sectionID,
		Subsection: w.subsection, Field: w.field, Err: err}
}
