// Package abi is the contract between the wasmvmm host and its device plugins.
//
// It names the host import module and its functions, the plugin exports, the
// status codes, and the binary encodings of device descriptions (properties)
// and vmstate schemas. It has no dependencies outside the standard library
// and this module's small formatter (internal/tinyfmt, which keeps fmt and
// os out of every plugin's WebAssembly module), so that both the host and
// the plugin SDK (built for GOOS=wasip1) import it. The normative text is
// abi/README.md; this package is its machine-readable form.
package abi

import (
	"strconv"
	"strings"

	"wasmvmm/internal/tinyfmt"
)

// Version of the ABI described by this package. Adding a host function or an
// optional plugin export is a minor bump; changing or removing anything is a
// major bump, which renames the host import module.
const (
	Major = 1
	Minor = 0
)

// HostModule is the name of the import module that carries every host
// function. The major version is part of the name, so a plugin built for
// another major cannot link by accident.
const HostModule = "wasmvmm:host@1"

// MarkerPrefix starts the name of the export that marks the ABI version a
// plugin was built for: "wasmvmm_abi_<major>_<minor>", a function taking and
// returning nothing, never called.
const MarkerPrefix = "wasmvmm_abi_"

// MarkerName returns the marker export name for a version.
func MarkerName(major, minor int) string {
	return tinyfmt.Sprintf("%s%d_%d", MarkerPrefix, major, minor)
}

// ParseMarker parses a marker export name into its version. ok is false if
// name is not a well-formed marker.
func ParseMarker(name string) (major, minor int, ok bool) {
	rest, found := strings.CutPrefix(name, MarkerPrefix)
	if !found {
		return 0, 0, false
	}
	maj, min, found := strings.Cut(rest, "_")
	if !found {
		return 0, 0, false
	}
	a, errA := strconv.Atoi(maj)
	b, errB := strconv.Atoi(min)
	if errA != nil || errB != nil || a < 0 || b < 0 {
		return 0, 0, false
	}
	return a, b, true
}

// Status is the single status enum that crosses the boundary as an i32.
// Zero is success; every error is negative, so functions that return a count
// or length return a negative Status on failure.
type Status int32

// Status codes.
const (
	OK                Status = 0
	ErrInvalid        Status = -1  // an argument is malformed or out of range
	ErrOutOfBounds    Status = -2  // a guest or plugin memory range is outside its bounds
	ErrNotFound       Status = -3  // a named property, backend, region or timer does not exist
	ErrUnsupported    Status = -4  // the host or device does not support the request
	ErrIO             Status = -5  // a host system call failed
	ErrAgain          Status = -6  // the operation would block; wait for backend readiness
	ErrBufferTooSmall Status = -7  // the destination buffer is too small
	ErrExists         Status = -8  // the name or id is already registered
	ErrState          Status = -9  // not allowed in the current lifecycle phase
	ErrNoSpace        Status = -10 // a fixed table or the image is full
	ErrReadOnly       Status = -11 // the target is read-only
	ErrFailed         Status = -12 // the operation failed for a reason reported in the log
	ErrType           Status = -13 // a property or field has another type
)

var statusNames = map[Status]string{
	OK: "ok", ErrInvalid: "invalid argument", ErrOutOfBounds: "out of bounds",
	ErrNotFound: "not found", ErrUnsupported: "unsupported", ErrIO: "I/O error",
	ErrAgain: "would block", ErrBufferTooSmall: "buffer too small", ErrExists: "already exists",
	ErrState: "wrong lifecycle phase", ErrNoSpace: "no space", ErrReadOnly: "read-only",
	ErrFailed: "failed", ErrType: "wrong type",
}

// String returns the status's name.
func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return tinyfmt.Sprintf("status %d", int32(s))
}

// Error makes a non-OK Status usable as an error.
func (s Status) Error() string { return s.String() }

// LogLevel is the level argument of the log host function.
type LogLevel int32

// Log levels, mapped one to one onto hclog's.
const (
	LogTrace LogLevel = 0
	LogDebug LogLevel = 1
	LogInfo  LogLevel = 2
	LogWarn  LogLevel = 3
	LogError LogLevel = 4
)

// RegionKind is the address space of a region a device registers.
type RegionKind int32

// Region kinds.
const (
	RegionMMIO RegionKind = 1
	RegionPIO  RegionKind = 2
)

// BackendKind says what a host backend is.
type BackendKind int32

// Backend kinds.
const (
	BackendChar  BackendKind = 1 // byte stream: console, unix socket, file
	BackendNet   BackendKind = 2 // frames: tap, unix datagram/stream peer
	BackendBlock BackendKind = 3 // random access: raw image file
)

// BackendEvent bits are passed to dev_backend_ready and to backend_watch.
type BackendEvent int32

// Backend events.
const (
	EventReadable BackendEvent = 1
	EventWritable BackendEvent = 2
	EventHangup   BackendEvent = 4
)

// MigrationMode bits select the migration modes a blocker or subscription
// applies to.
type MigrationMode int32

// Migration modes.
const (
	ModeNormal      MigrationMode = 1
	ModeCPRTransfer MigrationMode = 2
	ModeAll         MigrationMode = ModeNormal | ModeCPRTransfer
)

// MigrationEvent is passed to dev_migration_event.
type MigrationEvent int32

// Migration notifier events. Only Setup may be vetoed.
const (
	MigrationSetup  MigrationEvent = 1
	MigrationDone   MigrationEvent = 2
	MigrationFailed MigrationEvent = 4
)

// SGEntrySize is the size of one scatter-gather entry in plugin memory:
// guest physical address (u64, little endian), length (u32), flags (u32,
// reserved, zero).
const SGEntrySize = 16

// MaxSGEntries bounds a scatter-gather list passed in one call.
const MaxSGEntries = 1024

// MaxTimers bounds the timer ids a device may use (0..MaxTimers-1).
const MaxTimers = 64

// Host import names (module HostModule). Signatures are in HostFunctions.
const (
	FnLog                = "log"
	FnGuestRead          = "guest_read"
	FnGuestWrite         = "guest_write"
	FnGuestReadSG        = "guest_read_sg"
	FnGuestWriteSG       = "guest_write_sg"
	FnGuestLoad          = "guest_load"
	FnGuestStore         = "guest_store"
	FnIRQSet             = "irq_set"
	FnIRQPulse           = "irq_pulse"
	FnRegionAdd          = "region_add"
	FnDeviceDeclare      = "device_declare"
	FnPropGetInt         = "prop_get_int"
	FnPropGetString      = "prop_get_string"
	FnTimerArm           = "timer_arm"
	FnTimerCancel        = "timer_cancel"
	FnClockNS            = "clock_ns"
	FnBackendOpen        = "backend_open"
	FnBackendWatch       = "backend_watch"
	FnBackendRead        = "backend_read"
	FnBackendWrite       = "backend_write"
	FnBackendSendSG      = "backend_send_sg"
	FnBackendRecvSG      = "backend_recv_sg"
	FnBackendPreadSG     = "backend_pread_sg"
	FnBackendPwriteSG    = "backend_pwrite_sg"
	FnBackendFlush       = "backend_flush"
	FnBackendDiscard     = "backend_discard"
	FnBackendWriteZeroes = "backend_write_zeroes"
	FnBackendSize        = "backend_size"
	FnFDPreserve         = "fd_preserve"
	FnVMStateRegister    = "vmstate_register"
	FnBlockerAdd         = "migration_blocker_add"
	FnBlockerRemove      = "migration_blocker_remove"
	FnMigrationSubscribe = "migration_subscribe"
)

// Plugin export names.
const (
	ExDescribe         = "dev_describe"
	ExRealize          = "dev_realize"
	ExReset            = "dev_reset"
	ExMMIORead         = "dev_mmio_read"
	ExMMIOWrite        = "dev_mmio_write"
	ExPIORead          = "dev_pio_read"
	ExPIOWrite         = "dev_pio_write"
	ExTimer            = "dev_timer"
	ExBackendReady     = "dev_backend_ready"
	ExPreSave          = "dev_pre_save"
	ExPostLoad         = "dev_post_load"
	ExSubsectionNeeded = "dev_subsection_needed"
	ExIdle             = "dev_idle"
	ExMigrationEvent   = "dev_migration_event"
)

// ValType is a core WebAssembly value type on the boundary (only i32 and i64).
type ValType byte

// Value types, with their WebAssembly binary encodings.
const (
	I32 ValType = 0x7f
	I64 ValType = 0x7e
)

// Signature is a function type on the boundary.
type Signature struct {
	Params  []ValType
	Results []ValType
}

func sig(params []ValType, results ...ValType) Signature {
	return Signature{Params: params, Results: results}
}

func p(t ...ValType) []ValType { return t }

// HostFunctions lists every host import of this ABI version with its
// signature. Pointers and lengths are i32 offsets into plugin memory; guest
// physical addresses and file offsets are i64.
var HostFunctions = map[string]Signature{
	// log(level, msg_ptr, msg_len)
	FnLog: sig(p(I32, I32, I32)),
	// guest_read(gpa, buf_ptr, len) -> status; guest_write likewise. A write
	// marks every touched guest page dirty.
	FnGuestRead:  sig(p(I64, I32, I32), I32),
	FnGuestWrite: sig(p(I64, I32, I32), I32),
	// guest_read_sg(sg_ptr, sg_count, buf_ptr, buf_len) -> bytes copied or status:
	// gathers the guest ranges into the plugin buffer; guest_write_sg scatters.
	FnGuestReadSG:  sig(p(I32, I32, I32, I32), I64),
	FnGuestWriteSG: sig(p(I32, I32, I32, I32), I64),
	// guest_load(gpa, size 1|2|4|8) -> value (little endian); on a bad
	// address the value is all ones and the device's error counter rises.
	// guest_store(gpa, size, value) -> status. Hot path helpers for rings.
	FnGuestLoad:  sig(p(I64, I32), I64),
	FnGuestStore: sig(p(I64, I32, I64), I32),
	// irq_set(line_index, level) -> status; irq_pulse(line_index) -> status.
	FnIRQSet:   sig(p(I32, I32), I32),
	FnIRQPulse: sig(p(I32), I32),
	// region_add(kind, size) -> region id (>= 0) or status. Only in dev_realize.
	// The machine type decides where the n-th region of a kind is placed.
	FnRegionAdd: sig(p(I32, I64), I32),
	// device_declare(desc_ptr, desc_len) -> status: the DeviceInfo encoding.
	// Only in dev_describe.
	FnDeviceDeclare: sig(p(I32, I32), I32),
	// prop_get_int(name_ptr, name_len, out_ptr) -> status: writes the value as
	// a little-endian u64 at out_ptr (bool: 0 or 1).
	FnPropGetInt: sig(p(I32, I32, I32), I32),
	// prop_get_string(name_ptr, name_len, buf_ptr, buf_cap) -> full length or
	// status; copies only when the full length fits in buf_cap.
	FnPropGetString: sig(p(I32, I32, I32, I32), I32),
	// timer_arm(timer_id, deadline_ns) -> status, deadline on the clock_ns
	// clock; re-arming replaces the deadline. timer_cancel(timer_id) -> status.
	FnTimerArm:    sig(p(I32, I64), I32),
	FnTimerCancel: sig(p(I32), I32),
	// clock_ns() -> nanoseconds of the VM clock (stops while the VM is paused).
	FnClockNS: sig(nil, I64),
	// backend_open(kind, name_ptr, name_len) -> backend id or status: the
	// backend the VM configuration attached to this device under that name.
	FnBackendOpen: sig(p(I32, I32, I32), I32),
	// backend_watch(backend_id, events) -> status: ask for dev_backend_ready
	// calls while the backend has any of these events (0 stops).
	FnBackendWatch: sig(p(I32, I32), I32),
	// backend_read(backend_id, buf_ptr, len) -> bytes or status (ErrAgain).
	// backend_write(backend_id, buf_ptr, len) -> bytes or status.
	FnBackendRead:  sig(p(I32, I32, I32), I64),
	FnBackendWrite: sig(p(I32, I32, I32), I64),
	// backend_send_sg(backend_id, sg_ptr, sg_count, skip) -> bytes or status:
	// one frame gathered from guest memory, skipping the first skip bytes.
	// backend_recv_sg(backend_id, sg_ptr, sg_count, skip) -> frame length or
	// status: one frame scattered into guest memory after skip bytes.
	FnBackendSendSG: sig(p(I32, I32, I32, I32), I64),
	FnBackendRecvSG: sig(p(I32, I32, I32, I32), I64),
	// backend_pread_sg(backend_id, offset, sg_ptr, sg_count) -> bytes or status;
	// backend_pwrite_sg likewise (block backends).
	FnBackendPreadSG:  sig(p(I32, I64, I32, I32), I64),
	FnBackendPwriteSG: sig(p(I32, I64, I32, I32), I64),
	// backend_flush(backend_id) -> status.
	FnBackendFlush: sig(p(I32), I32),
	// backend_discard(backend_id, offset, len) -> status; write_zeroes likewise.
	FnBackendDiscard:     sig(p(I32, I64, I64), I32),
	FnBackendWriteZeroes: sig(p(I32, I64, I64), I32),
	// backend_size(backend_id) -> size in bytes or status.
	FnBackendSize: sig(p(I32), I64),
	// fd_preserve(backend_id, name_ptr, name_len, id) -> status: keep this
	// backend's host fd across cpr-transfer under (name, id).
	FnFDPreserve: sig(p(I32, I32, I32, I32), I32),
	// vmstate_register(desc_ptr, desc_len) -> status: the Section encoding.
	// Only in dev_realize.
	FnVMStateRegister: sig(p(I32, I32), I32),
	// migration_blocker_add(modes, reason_ptr, reason_len) -> blocker id or
	// status; migration_blocker_remove(blocker_id) -> status.
	FnBlockerAdd:    sig(p(I32, I32, I32), I32),
	FnBlockerRemove: sig(p(I32), I32),
	// migration_subscribe(events, modes) -> status: dev_migration_event will be
	// called for these events in these modes.
	FnMigrationSubscribe: sig(p(I32, I32), I32),
}

// Export describes a plugin export.
type Export struct {
	Signature Signature
	Required  bool
}

// PluginExports lists every plugin export of this ABI version.
var PluginExports = map[string]Export{
	// dev_describe() -> status: calls device_declare once.
	ExDescribe: {sig(nil, I32), true},
	// dev_realize() -> status: reads properties, adds regions, opens
	// backends, registers vmstate.
	ExRealize: {sig(nil, I32), true},
	// dev_reset(): the device returns to its power-on state.
	ExReset: {sig(nil), true},
	// dev_mmio_read(region, offset, size) -> value; dev_mmio_write(region,
	// offset, size, value). Hot paths: no status.
	ExMMIORead:  {sig(p(I32, I64, I32), I64), true},
	ExMMIOWrite: {sig(p(I32, I64, I32, I64)), true},
	// dev_pio_read(region, offset, size) -> value; dev_pio_write likewise.
	ExPIORead:  {sig(p(I32, I32, I32), I32), true},
	ExPIOWrite: {sig(p(I32, I32, I32, I32)), true},
	// dev_pre_save() -> status; dev_post_load(version_id) -> status.
	ExPreSave:  {sig(nil, I32), true},
	ExPostLoad: {sig(p(I32), I32), true},
	// dev_subsection_needed(needed_id) -> 0 or 1.
	ExSubsectionNeeded: {sig(p(I32), I32), true},
	// dev_timer(timer_id).
	ExTimer: {sig(p(I32)), false},
	// dev_backend_ready(backend_id, events).
	ExBackendReady: {sig(p(I32, I32)), false},
	// dev_idle(): called when the host has nothing else for the device.
	ExIdle: {sig(nil), false},
	// dev_migration_event(event, mode) -> status; a non-OK status from
	// MigrationSetup vetoes the migration (the reason: the last error the
	// call logged).
	ExMigrationEvent: {sig(p(I32, I32), I32), false},
}
