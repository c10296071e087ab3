package sdk

import (
	"unsafe"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

// boxed holds every known status as a ready-made error value, so turning a
// status into an error never allocates (hot paths return errors too).
var boxed = [...]error{
	abi.OK, abi.ErrInvalid, abi.ErrOutOfBounds, abi.ErrNotFound, abi.ErrUnsupported, abi.ErrIO,
	abi.ErrAgain, abi.ErrBufferTooSmall, abi.ErrExists, abi.ErrState, abi.ErrNoSpace,
	abi.ErrReadOnly, abi.ErrFailed, abi.ErrType,
}

// statusError converts a host result into an error: nil for a non-negative
// result, the abi.Status otherwise. Compare with errors.Is(err, abi.ErrAgain).
func statusError(r int64) error {
	if r >= 0 {
		return nil
	}
	if -r < int64(len(boxed)) {
		return boxed[-r]
	}
	return abi.Status(r)
}

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

func strPtr(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }

// Log sends a message to the host's logger at a level.
func Log(level abi.LogLevel, msg string) {
	hostLog(int32(level), strPtr(msg), uint32(len(msg)))
}

// Logf formats and logs a message. It allocates; keep it off hot paths.
func Logf(level abi.LogLevel, format string, args ...any) {
	Log(level, tinyfmt.Sprintf(format, args...))
}

// Debugf logs at debug level.
func Debugf(format string, args ...any) { Logf(abi.LogDebug, format, args...) }

// Infof logs at info level.
func Infof(format string, args ...any) { Logf(abi.LogInfo, format, args...) }

// Warnf logs at warning level.
func Warnf(format string, args ...any) { Logf(abi.LogWarn, format, args...) }

// GuestRead copies guest memory at gpa into p.
func GuestRead(gpa uint64, p []byte) error {
	return statusError(int64(hostGuestRead(gpa, bytesPtr(p), uint32(len(p)))))
}

// GuestWrite copies p into guest memory at gpa (the host marks the pages
// dirty).
func GuestWrite(gpa uint64, p []byte) error {
	return statusError(int64(hostGuestWrite(gpa, bytesPtr(p), uint32(len(p)))))
}

// GuestLoad reads a little-endian value of size 1, 2, 4 or 8 bytes at gpa.
// On a bad address the value is all ones.
func GuestLoad(gpa uint64, size int) uint64 { return hostGuestLoad(gpa, int32(size)) }

// GuestStore writes a little-endian value of size 1, 2, 4 or 8 bytes at gpa.
func GuestStore(gpa uint64, size int, value uint64) error {
	return statusError(int64(hostGuestStore(gpa, int32(size), value)))
}

// SGEntry is one scatter-gather element, laid out as the ABI's 16-byte
// entry (abi.SGEntrySize), so a []SGEntry crosses the boundary without
// copying.
type SGEntry struct {
	GPA   uint64 // guest physical address
	Len   uint32 // bytes
	Flags uint32 // reserved, zero
}

var _ [abi.SGEntrySize - unsafe.Sizeof(SGEntry{})]struct{} // size check
var _ [unsafe.Sizeof(SGEntry{}) - abi.SGEntrySize]struct{}

func sgPtr(sg []SGEntry) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(sg)) }

func countResult(r int64) (int, error) {
	if r < 0 {
		return 0, statusError(r)
	}
	return int(r), nil
}

// GuestReadSG gathers the guest ranges in sg into buf and returns the bytes
// copied.
func GuestReadSG(sg []SGEntry, buf []byte) (int, error) {
	return countResult(hostGuestReadSG(sgPtr(sg), uint32(len(sg)), bytesPtr(buf), uint32(len(buf))))
}

// GuestWriteSG scatters buf into the guest ranges in sg and returns the
// bytes copied.
func GuestWriteSG(sg []SGEntry, buf []byte) (int, error) {
	return countResult(hostGuestWriteSG(sgPtr(sg), uint32(len(sg)), bytesPtr(buf), uint32(len(buf))))
}

// IRQ is one of the device's interrupt lines, by index.
type IRQ int32

// Set drives the line to a level (level-triggered interrupts).
func (i IRQ) Set(level bool) error {
	var l int32
	if level {
		l = 1
	}
	return statusError(int64(hostIRQSet(int32(i), l)))
}

// Pulse raises and lowers the line (edge-triggered interrupts).
func (i IRQ) Pulse() error { return statusError(int64(hostIRQPulse(int32(i)))) }

// Timer is one of the device's timers, by id (0..abi.MaxTimers-1). When an
// armed timer's deadline passes, the device's TimerFired method runs.
type Timer int32

// Arm sets the timer to fire at deadline, in nanoseconds of the VM clock
// (see Now). Re-arming replaces the deadline.
func (t Timer) Arm(deadlineNS int64) error {
	return statusError(int64(hostTimerArm(int32(t), deadlineNS)))
}

// Duration is what ArmAfter takes: a time.Duration satisfies it. (The SDK
// does not import package time, whose initialization adds to every
// plugin's module.)
type Duration interface{ Nanoseconds() int64 }

// ArmAfter sets the timer to fire d (a time.Duration) from now.
func (t Timer) ArmAfter(d Duration) error { return t.Arm(Now() + d.Nanoseconds()) }

// Cancel disarms the timer.
func (t Timer) Cancel() error { return statusError(int64(hostTimerCancel(int32(t)))) }

// Now returns the VM clock in nanoseconds; it stops while the VM is paused.
func Now() int64 { return hostClockNS() }

// Blocker is a registered migration blocker.
type Blocker int32

// AddBlocker blocks migration in the given modes, with a reason the host
// reports when it refuses a migration.
func AddBlocker(modes abi.MigrationMode, reason string) (Blocker, error) {
	r := hostBlockerAdd(int32(modes), strPtr(reason), uint32(len(reason)))
	if r < 0 {
		return -1, tinyfmt.Errorf("migration blocker %q: %w", reason, statusError(int64(r)))
	}
	return Blocker(r), nil
}

// Remove removes the blocker.
func (b Blocker) Remove() error {
	if err := statusError(int64(hostBlockerRemove(int32(b)))); err != nil {
		return tinyfmt.Errorf("remove migration blocker %d: %w", b, err)
	}
	return nil
}

// SubscribeMigration asks for MigrationEvent calls for these events in
// these modes.
func SubscribeMigration(events abi.MigrationEvent, modes abi.MigrationMode) error {
	if err := statusError(int64(hostMigrationSubscribe(int32(events), int32(modes)))); err != nil {
		return tinyfmt.Errorf("migration subscribe: %w", err)
	}
	return nil
}

func propGetInt(name string) (uint64, error) {
	var v uint64
	if err := statusError(int64(hostPropGetInt(strPtr(name), uint32(len(name)), unsafe.Pointer(&v)))); err != nil {
		return 0, tinyfmt.Errorf("property %s: %w", name, err)
	}
	return v, nil
}

func propGetString(name string) (string, error) {
	buf := make([]byte, 64)
	for {
		n := hostPropGetString(strPtr(name), uint32(len(name)), bytesPtr(buf), uint32(len(buf)))
		if n < 0 {
			return "", tinyfmt.Errorf("property %s: %w", name, statusError(int64(n)))
		}
		if int(n) <= len(buf) {
			return string(buf[:n]), nil
		}
		if n > abi.MaxStringLen*16 {
			return "", tinyfmt.Errorf("property %s: host reports %d bytes", name, n)
		}
		buf = make([]byte, n)
	}
}
