package qmp

import "fmt"

// ErrorClass is the "class" member of a QMP error response. QEMU keeps a
// short, fixed list of classes; most failures are GenericError.
type ErrorClass string

// The error classes QEMU defines (qapi/error.json, QapiErrorClass).
const (
	// ClassGenericError is used for every error without a more specific class.
	ClassGenericError ErrorClass = "GenericError"
	// ClassCommandNotFound reports an unknown command, or a command issued in
	// the wrong protocol mode (before or after capabilities negotiation).
	ClassCommandNotFound ErrorClass = "CommandNotFound"
	// ClassDeviceNotActive reports a device that exists but is not active.
	ClassDeviceNotActive ErrorClass = "DeviceNotActive"
	// ClassDeviceNotFound reports a device name that does not exist.
	ClassDeviceNotFound ErrorClass = "DeviceNotFound"
	// ClassKVMMissingCap reports a KVM capability the host lacks.
	ClassKVMMissingCap ErrorClass = "KVMMissingCap"
)

// Error is a QMP error: the value of the "error" member of a response.
// Handlers return it (possibly wrapped) to choose the class and the text the
// client sees; any other error becomes a GenericError carrying err.Error().
type Error struct {
	Class ErrorClass `json:"class"`
	Desc  string     `json:"desc"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", e.Class, e.Desc)
}

// Errorf builds an *Error of the given class with a formatted description.
func Errorf(class ErrorClass, format string, args ...any) *Error {
	return &Error{Class: class, Desc: fmt.Sprintf(format, args...)}
}

// genericf builds a GenericError.
func genericf(format string, args ...any) *Error {
	return Errorf(ClassGenericError, format, args...)
}
