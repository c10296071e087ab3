//go:build wasip1

package sdk

//lint:file-ignore U1000 every host import is declared, used or not

// The host imports of module wasmvmm:host@1 (abi.HostFunctions), one Go
// declaration each. hostcalls_other.go mirrors them for other platforms, and
// abi_test.go checks these declarations against the ABI.

import "unsafe"

//go:wasmimport wasmvmm:host@1 log
//go:noescape
func hostLog(level int32, ptr unsafe.Pointer, n uint32)

//go:wasmimport wasmvmm:host@1 guest_read
//go:noescape
func hostGuestRead(gpa uint64, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 guest_write
//go:noescape
func hostGuestWrite(gpa uint64, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 guest_read_sg
//go:noescape
func hostGuestReadSG(sg unsafe.Pointer, count uint32, buf unsafe.Pointer, n uint32) int64

//go:wasmimport wasmvmm:host@1 guest_write_sg
//go:noescape
func hostGuestWriteSG(sg unsafe.Pointer, count uint32, buf unsafe.Pointer, n uint32) int64

//go:wasmimport wasmvmm:host@1 guest_load
func hostGuestLoad(gpa uint64, size int32) uint64

//go:wasmimport wasmvmm:host@1 guest_store
func hostGuestStore(gpa uint64, size int32, value uint64) int32

//go:wasmimport wasmvmm:host@1 irq_set
func hostIRQSet(line int32, level int32) int32

//go:wasmimport wasmvmm:host@1 irq_pulse
func hostIRQPulse(line int32) int32

//go:wasmimport wasmvmm:host@1 region_add
func hostRegionAdd(kind int32, size uint64) int32

//go:wasmimport wasmvmm:host@1 device_declare
//go:noescape
func hostDeviceDeclare(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 prop_get_int
//go:noescape
func hostPropGetInt(name unsafe.Pointer, n uint32, out unsafe.Pointer) int32

//go:wasmimport wasmvmm:host@1 prop_get_string
//go:noescape
func hostPropGetString(name unsafe.Pointer, n uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport wasmvmm:host@1 timer_arm
func hostTimerArm(id int32, deadline int64) int32

//go:wasmimport wasmvmm:host@1 timer_cancel
func hostTimerCancel(id int32) int32

//go:wasmimport wasmvmm:host@1 clock_ns
func hostClockNS() int64

//go:wasmimport wasmvmm:host@1 backend_open
//go:noescape
func hostBackendOpen(kind int32, name unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 backend_watch
func hostBackendWatch(id int32, events int32) int32

//go:wasmimport wasmvmm:host@1 backend_read
//go:noescape
func hostBackendRead(id int32, buf unsafe.Pointer, n uint32) int64

//go:wasmimport wasmvmm:host@1 backend_write
//go:noescape
func hostBackendWrite(id int32, buf unsafe.Pointer, n uint32) int64

//go:wasmimport wasmvmm:host@1 backend_send_sg
//go:noescape
func hostBackendSendSG(id int32, sg unsafe.Pointer, count uint32, skip uint32) int64

//go:wasmimport wasmvmm:host@1 backend_recv_sg
//go:noescape
func hostBackendRecvSG(id int32, sg unsafe.Pointer, count uint32, skip uint32) int64

//go:wasmimport wasmvmm:host@1 backend_pread_sg
//go:noescape
func hostBackendPreadSG(id int32, offset int64, sg unsafe.Pointer, count uint32) int64

//go:wasmimport wasmvmm:host@1 backend_pwrite_sg
//go:noescape
func hostBackendPwriteSG(id int32, offset int64, sg unsafe.Pointer, count uint32) int64

//go:wasmimport wasmvmm:host@1 backend_flush
func hostBackendFlush(id int32) int32

//go:wasmimport wasmvmm:host@1 backend_discard
func hostBackendDiscard(id int32, offset int64, n int64) int32

//go:wasmimport wasmvmm:host@1 backend_write_zeroes
func hostBackendWriteZeroes(id int32, offset int64, n int64) int32

//go:wasmimport wasmvmm:host@1 backend_size
func hostBackendSize(id int32) int64

//go:wasmimport wasmvmm:host@1 fd_preserve
//go:noescape
func hostFDPreserve(id int32, name unsafe.Pointer, n uint32, fdID int32) int32

//go:wasmimport wasmvmm:host@1 vmstate_register
//go:noescape
func hostVMStateRegister(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 migration_blocker_add
//go:noescape
func hostBlockerAdd(modes int32, reason unsafe.Pointer, n uint32) int32

//go:wasmimport wasmvmm:host@1 migration_blocker_remove
func hostBlockerRemove(id int32) int32

//go:wasmimport wasmvmm:host@1 migration_subscribe
func hostMigrationSubscribe(events int32, modes int32) int32
