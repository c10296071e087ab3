// Package cpr is the cpr-transfer channel: the CPR state that a wasmvmm
// process hands to its successor over a unix socket before the guest moves.
//
// # Wire format (QEMU's, migration/cpr.c)
//
// The state is QEMU's "CprState" vmstate with its list of descriptors:
//
//	be32 0x51435052 ("QCPR")   magic
//	be32 1                     version
//	for each entry:
//	    u8   1                 another entry follows (QLIST element marker)
//	    be32 namelen           length of the name including its NUL
//	    name[namelen]          NUL-terminated
//	    be32 id                signed 32-bit
//	    u8   ' '               one byte carrying the descriptor as SCM_RIGHTS
//	u8 0                       end of the list
//
// After the state the sender shuts down its writing side; the receiver
// closes the socket once it no longer needs the source (QEMU: when it
// listens on the main channel), and the sender sees the hang-up.
//
// Descriptors are matched to their marker bytes in order: the kernel
// delivers a descriptor with the read that returns its byte, so when the
// decoder reads a marker its descriptor is already queued.
package cpr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic and Version head every CPR state (QEMU_CPR_FILE_MAGIC/VERSION).
const (
	Magic   uint32 = 0x51435052
	Version uint32 = 1
)

// Limits a receiver enforces on a state from a peer.
const (
	MaxEntries = 4096 // descriptors in one state
	MaxNameLen = 4096 // bytes of a name, its NUL included
)

// fdMarker is the data byte each descriptor travels with.
const fdMarker = ' '

// Entry is one preserved descriptor: QEMU's (name, id, fd).
type Entry struct {
	Name string
	ID   int32
	FD   int
}

// ErrBadState wraps every decoding error (the peer sent something that is
// not a CPR state this package can read).
var ErrBadState = errors.New("bad cpr state")

// sink is where Encode writes: bytes, and descriptors on marker bytes.
type sink interface {
	io.Writer
	// WriteFD sends one marker byte carrying fd.
	WriteFD(fd int) error
}

// source is what decode reads: bytes, and the descriptor that arrived with
// the marker byte just read.
type source interface {
	io.Reader
	// TakeFD returns the oldest received descriptor not yet taken.
	TakeFD() (int, bool)
}

// encode writes entries in QEMU's layout to s.
func encode(s sink, entries []Entry) error {
	if len(entries) > MaxEntries {
		return fmt.Errorf("cpr state: %d entries exceed %d", len(entries), MaxEntries)
	}
	b := binary.BigEndian.AppendUint32(nil, Magic)
	b = binary.BigEndian.AppendUint32(b, Version)
	for _, e := range entries {
		if len(e.Name)+1 > MaxNameLen || len(e.Name) == 0 {
			return fmt.Errorf("cpr state: entry name of %d bytes (want 1 to %d)", len(e.Name), MaxNameLen-1)
		}
		if e.FD < 0 {
			return fmt.Errorf("cpr state: entry %s/%d has no descriptor", e.Name, e.ID)
		}
		b = append(b, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.Name)+1))
		b = append(b, e.Name...)
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(e.ID))
		if _, err := s.Write(b); err != nil {
			return fmt.Errorf("cpr state: write entry %s/%d: %w", e.Name, e.ID, err)
		}
		b = b[:0]
		if err := s.WriteFD(e.FD); err != nil {
			return fmt.Errorf("cpr state: send descriptor of %s/%d: %w", e.Name, e.ID, err)
		}
	}
	b = append(b, 0)
	if _, err := s.Write(b); err != nil {
		return fmt.Errorf("cpr state: write end of list: %w", err)
	}
	return nil
}

// decode reads a state from s. On error the entries decoded so far are
// returned too, so the caller can close their descriptors.
func decode(s source) ([]Entry, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(s, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrBadState, err)
	}
	if m := binary.BigEndian.Uint32(hdr[:4]); m != Magic {
		return nil, fmt.Errorf("%w: magic %#x, want %#x (QCPR)", ErrBadState, m, Magic)
	}
	if v := binary.BigEndian.Uint32(hdr[4:]); v != Version {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrBadState, v, Version)
	}
	var out []Entry
	var one [1]byte
	var word [4]byte
	for {
		if _, err := io.ReadFull(s, one[:]); err != nil {
			return out, fmt.Errorf("%w: entry %d marker: %w", ErrBadState, len(out), err)
		}
		switch one[0] {
		case 0:
			return out, nil
		case 1:
		default:
			return out, fmt.Errorf("%w: entry %d: list marker %d (want 0 or 1)", ErrBadState, len(out), one[0])
		}
		if len(out) >= MaxEntries {
			return out, fmt.Errorf("%w: more than %d entries", ErrBadState, MaxEntries)
		}
		if _, err := io.ReadFull(s, word[:]); err != nil {
			return out, fmt.Errorf("%w: entry %d name length: %w", ErrBadState, len(out), err)
		}
		n := binary.BigEndian.Uint32(word[:])
		if n < 2 || n > MaxNameLen {
			return out, fmt.Errorf("%w: entry %d: name length %d (want 2 to %d, NUL included)", ErrBadState, len(out), n, MaxNameLen)
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(s, name); err != nil {
			return out, fmt.Errorf("%w: entry %d name: %w", ErrBadState, len(out), err)
		}
		if name[n-1] != 0 {
			return out, fmt.Errorf("%w: entry %d: name is not NUL-terminated", ErrBadState, len(out))
		}
		if _, err := io.ReadFull(s, word[:]); err != nil {
			return out, fmt.Errorf("%w: entry %d id: %w", ErrBadState, len(out), err)
		}
		id := int32(binary.BigEndian.Uint32(word[:]))
		if _, err := io.ReadFull(s, one[:]); err != nil {
			return out, fmt.Errorf("%w: entry %d descriptor: %w", ErrBadState, len(out), err)
		}
		if one[0] != fdMarker {
			return out, fmt.Errorf("%w: entry %d: descriptor byte %#x, want %#x", ErrBadState, len(out), one[0], fdMarker)
		}
		fd, ok := s.TakeFD()
		if !ok {
			return out, fmt.Errorf("%w: entry %d (%s): no descriptor came with its byte", ErrBadState, len(out), name[:n-1])
		}
		out = append(out, Entry{Name: string(name[:n-1]), ID: id, FD: fd})
	}
}
