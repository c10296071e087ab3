package sdk

import (
	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

// Backend is a host backend the VM configuration attached to this device:
// a character stream, a network peer or a block image. Its methods never
// block: when an operation would block they return abi.ErrAgain, and the
// device watches for readiness (Watch) and retries in BackendReady.
type Backend struct {
	id   int32
	kind abi.BackendKind
	name string
}

// OpenBackend opens the backend attached under name (e.g. "console",
// "net", "disk"). It returns an error wrapping abi.ErrNotFound when the
// configuration attached none, which devices with optional backends treat as
// "not connected".
func OpenBackend(kind abi.BackendKind, name string) (*Backend, error) {
	r := hostBackendOpen(int32(kind), strPtr(name), uint32(len(name)))
	if r < 0 {
		return nil, tinyfmt.Errorf("backend %q: %w", name, statusError(int64(r)))
	}
	b := &Backend{id: r, kind: kind, name: name}
	plugin.addBackend(b)
	return b, nil
}

// ID returns the host's id for the backend.
func (b *Backend) ID() int32 { return b.id }

// Name returns the name the backend was opened under.
func (b *Backend) Name() string { return b.name }

// Kind returns the backend's kind.
func (b *Backend) Kind() abi.BackendKind { return b.kind }

// Watch asks for BackendReady calls while the backend has any of these
// events; 0 stops watching.
func (b *Backend) Watch(events abi.BackendEvent) error {
	return statusError(int64(hostBackendWatch(b.id, int32(events))))
}

// Read reads up to len(p) bytes (character backends) or one frame (network
// backends). It returns abi.ErrAgain when nothing is available.
func (b *Backend) Read(p []byte) (int, error) {
	return countResult(hostBackendRead(b.id, bytesPtr(p), uint32(len(p))))
}

// Write writes p (or one frame) and returns the bytes accepted, which may
// be fewer than len(p); abi.ErrAgain when none fit.
func (b *Backend) Write(p []byte) (int, error) {
	return countResult(hostBackendWrite(b.id, bytesPtr(p), uint32(len(p))))
}

// SendSG sends one frame gathered from guest memory, skipping the first
// skip bytes.
func (b *Backend) SendSG(sg []SGEntry, skip uint32) (int, error) {
	return countResult(hostBackendSendSG(b.id, sgPtr(sg), uint32(len(sg)), skip))
}

// RecvSG receives one frame into guest memory after skip bytes and returns
// the frame's length.
func (b *Backend) RecvSG(sg []SGEntry, skip uint32) (int, error) {
	return countResult(hostBackendRecvSG(b.id, sgPtr(sg), uint32(len(sg)), skip))
}

// PreadSG reads from a block backend at offset into guest memory.
func (b *Backend) PreadSG(offset int64, sg []SGEntry) (int, error) {
	return countResult(hostBackendPreadSG(b.id, offset, sgPtr(sg), uint32(len(sg))))
}

// PwriteSG writes guest memory to a block backend at offset.
func (b *Backend) PwriteSG(offset int64, sg []SGEntry) (int, error) {
	return countResult(hostBackendPwriteSG(b.id, offset, sgPtr(sg), uint32(len(sg))))
}

// Flush makes completed writes durable.
func (b *Backend) Flush() error { return statusError(int64(hostBackendFlush(b.id))) }

// Discard deallocates a range of a block backend.
func (b *Backend) Discard(offset, length int64) error {
	return statusError(int64(hostBackendDiscard(b.id, offset, length)))
}

// WriteZeroes zeroes a range of a block backend.
func (b *Backend) WriteZeroes(offset, length int64) error {
	return statusError(int64(hostBackendWriteZeroes(b.id, offset, length)))
}

// Size returns a block backend's size in bytes.
func (b *Backend) Size() (int64, error) {
	r := hostBackendSize(b.id)
	if r < 0 {
		return 0, tinyfmt.Errorf("backend %q size: %w", b.name, statusError(r))
	}
	return r, nil
}

// PreserveFD keeps the backend's host file descriptor open across a
// cpr-transfer, under (name, id), so the new process adopts it.
func (b *Backend) PreserveFD(name string, id int32) error {
	if err := statusError(int64(hostFDPreserve(b.id, strPtr(name), uint32(len(name)), id))); err != nil {
		return tinyfmt.Errorf("backend %q: preserve fd as %s/%d: %w", b.name, name, id, err)
	}
	return nil
}
