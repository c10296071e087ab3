package virtio

import (
	"encoding/binary"
	"errors"

	"wasmvmm/sdk"
)

// Memory is how the transport reaches guest RAM. Every method checks its
// whole range: a range not wholly inside guest RAM is an error (Load returns
// all ones for the access size), and nothing is touched.
type Memory interface {
	// Read copies guest memory at gpa into p.
	Read(gpa uint64, p []byte) error
	// Load returns the little-endian value of size 1, 2, 4 or 8 bytes at
	// gpa, or all ones when the range is outside guest RAM.
	Load(gpa uint64, size int) uint64
	// Store writes a little-endian value of size 1, 2, 4 or 8 bytes at gpa.
	Store(gpa uint64, size int, v uint64) error
}

// HostMemory is guest RAM through the SDK's host calls (guest_read,
// guest_load, guest_store). Stores mark pages dirty on the host side.
type HostMemory struct{}

// Read implements Memory with guest_read.
func (HostMemory) Read(gpa uint64, p []byte) error { return sdk.GuestRead(gpa, p) }

// Load implements Memory with guest_load.
func (HostMemory) Load(gpa uint64, size int) uint64 { return sdk.GuestLoad(gpa, size) }

// Store implements Memory with guest_store.
func (HostMemory) Store(gpa uint64, size int, v uint64) error { return sdk.GuestStore(gpa, size, v) }

// ErrOutOfRAM is ByteMemory's error for a range outside its bytes.
var ErrOutOfRAM = errors.New("guest range outside RAM")

// ByteMemory is guest RAM as a byte slice starting at guest address Base,
// for tests and fuzzing off the plugin runtime.
type ByteMemory struct {
	Base uint64
	Mem  []byte
}

func (m *ByteMemory) slice(gpa, n uint64) ([]byte, bool) {
	if gpa < m.Base {
		return nil, false
	}
	off := gpa - m.Base
	size := uint64(len(m.Mem))
	if off > size || n > size-off {
		return nil, false
	}
	return m.Mem[off : off+n], true
}

// Read implements Memory.
func (m *ByteMemory) Read(gpa uint64, p []byte) error {
	b, ok := m.slice(gpa, uint64(len(p)))
	if !ok {
		return ErrOutOfRAM
	}
	copy(p, b)
	return nil
}

// Write copies p into the memory at gpa (test drivers use it).
func (m *ByteMemory) Write(gpa uint64, p []byte) error {
	b, ok := m.slice(gpa, uint64(len(p)))
	if !ok {
		return ErrOutOfRAM
	}
	copy(b, p)
	return nil
}

// Load implements Memory.
func (m *ByteMemory) Load(gpa uint64, size int) uint64 {
	b, ok := m.slice(gpa, uint64(size))
	if !ok || !validSize(size) {
		return allOnes(size)
	}
	switch size {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b))
	}
	return binary.LittleEndian.Uint64(b)
}

// Store implements Memory.
func (m *ByteMemory) Store(gpa uint64, size int, v uint64) error {
	b, ok := m.slice(gpa, uint64(size))
	if !ok || !validSize(size) {
		return ErrOutOfRAM
	}
	switch size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	default:
		binary.LittleEndian.PutUint64(b, v)
	}
	return nil
}

func validSize(size int) bool { return size == 1 || size == 2 || size == 4 || size == 8 }

func allOnes(size int) uint64 {
	if size >= 8 || size <= 0 {
		return ^uint64(0)
	}
	return 1<<(8*uint(size)) - 1
}
