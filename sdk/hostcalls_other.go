//go:build !wasip1

package sdk

//lint:file-ignore U1000 stand-ins mirror every host import, used or not on this platform

// Stand-ins for the host imports so the package builds and its pure parts
// (schema builder, properties) are testable on the developer's machine.
// Every call fails with ErrUnsupported; log writes to standard error.

import (
	"os"
	"unsafe"

	"wasmvmm/abi"
)

const unsupported = int32(abi.ErrUnsupported)

func hostLog(level int32, ptr unsafe.Pointer, n uint32) {
	os.Stderr.Write(unsafe.Slice((*byte)(ptr), n))
	os.Stderr.Write([]byte{'\n'})
	_ = level
}

func hostGuestRead(gpa uint64, ptr unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostGuestWrite(gpa uint64, ptr unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostGuestReadSG(sg unsafe.Pointer, count uint32, buf unsafe.Pointer, n uint32) int64 {
	return int64(unsupported)
}

func hostGuestWriteSG(sg unsafe.Pointer, count uint32, buf unsafe.Pointer, n uint32) int64 {
	return int64(unsupported)
}

func hostGuestLoad(gpa uint64, size int32) uint64 {
	return ^uint64(0)
}

func hostGuestStore(gpa uint64, size int32, value uint64) int32 {
	return unsupported
}

func hostIRQSet(line int32, level int32) int32 {
	return unsupported
}

func hostIRQPulse(line int32) int32 {
	return unsupported
}

func hostRegionAdd(kind int32, size uint64) int32 {
	return unsupported
}

func hostDeviceDeclare(ptr unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostPropGetInt(name unsafe.Pointer, n uint32, out unsafe.Pointer) int32 {
	return unsupported
}

func hostPropGetString(name unsafe.Pointer, n uint32, buf unsafe.Pointer, capacity uint32) int32 {
	return unsupported
}

func hostTimerArm(id int32, deadline int64) int32 {
	return unsupported
}

func hostTimerCancel(id int32) int32 {
	return unsupported
}

func hostClockNS() int64 {
	return int64(unsupported)
}

func hostBackendOpen(kind int32, name unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostBackendWatch(id int32, events int32) int32 {
	return unsupported
}

func hostBackendRead(id int32, buf unsafe.Pointer, n uint32) int64 {
	return int64(unsupported)
}

func hostBackendWrite(id int32, buf unsafe.Pointer, n uint32) int64 {
	return int64(unsupported)
}

func hostBackendSendSG(id int32, sg unsafe.Pointer, count uint32, skip uint32) int64 {
	return int64(unsupported)
}

func hostBackendRecvSG(id int32, sg unsafe.Pointer, count uint32, skip uint32) int64 {
	return int64(unsupported)
}

func hostBackendPreadSG(id int32, offset int64, sg unsafe.Pointer, count uint32) int64 {
	return int64(unsupported)
}

func hostBackendPwriteSG(id int32, offset int64, sg unsafe.Pointer, count uint32) int64 {
	return int64(unsupported)
}

func hostBackendFlush(id int32) int32 {
	return unsupported
}

func hostBackendDiscard(id int32, offset int64, n int64) int32 {
	return unsupported
}

func hostBackendWriteZeroes(id int32, offset int64, n int64) int32 {
	return unsupported
}

func hostBackendSize(id int32) int64 {
	return int64(unsupported)
}

func hostFDPreserve(id int32, name unsafe.Pointer, n uint32, fdID int32) int32 {
	return unsupported
}

func hostVMStateRegister(ptr unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostBlockerAdd(modes int32, reason unsafe.Pointer, n uint32) int32 {
	return unsupported
}

func hostBlockerRemove(id int32) int32 {
	return unsupported
}

func hostMigrationSubscribe(events int32, modes int32) int32 {
	return unsupported
}
