// Package base is the shared body of the host/plugin test plugins. It talks
// to the host through the raw ABI (no SDK) and exports every plugin function
// except the ABI marker and dev_reset, which each test plugin's main package
// provides (or, for the negative tests, deliberately gets wrong). Test
// plugins replace the hook variables to misbehave.
package base

import (
	"unsafe"

	"wasmvmm/abi"
)

//go:wasmimport wasmvmm:host@1 log
func hostLog(level, ptr, n uint32)

//go:wasmimport wasmvmm:host@1 guest_read
func guestRead(gpa uint64, ptr, n uint32) int32

//go:wasmimport wasmvmm:host@1 guest_write
func guestWrite(gpa uint64, ptr, n uint32) int32

//go:wasmimport wasmvmm:host@1 guest_read_sg
func guestReadSG(sgPtr, sgCount, bufPtr, bufLen uint32) int64

//go:wasmimport wasmvmm:host@1 guest_load
func guestLoad(gpa uint64, size uint32) uint64

//go:wasmimport wasmvmm:host@1 guest_store
func guestStore(gpa uint64, size uint32, v uint64) int32

//go:wasmimport wasmvmm:host@1 irq_set
func irqSet(line, level uint32) int32

//go:wasmimport wasmvmm:host@1 region_add
func regionAdd(kind uint32, size uint64) int32

//go:wasmimport wasmvmm:host@1 device_declare
func deviceDeclare(ptr, n uint32) int32

//go:wasmimport wasmvmm:host@1 prop_get_int
func propGetInt(namePtr, nameLen, outPtr uint32) int32

//go:wasmimport wasmvmm:host@1 prop_get_string
func propGetString(namePtr, nameLen, bufPtr, bufCap uint32) int32

//go:wasmimport wasmvmm:host@1 timer_arm
func timerArm(id uint32, deadline uint64) int32

//go:wasmimport wasmvmm:host@1 clock_ns
func clockNS() uint64

//go:wasmimport wasmvmm:host@1 backend_open
func backendOpen(kind, namePtr, nameLen uint32) int32

//go:wasmimport wasmvmm:host@1 backend_watch
func backendWatch(id, events uint32) int32

//go:wasmimport wasmvmm:host@1 backend_read
func backendRead(id, ptr, n uint32) int64

//go:wasmimport wasmvmm:host@1 backend_write
func backendWrite(id, ptr, n uint32) int64

//go:wasmimport wasmvmm:host@1 backend_send_sg
func backendSendSG(id, sgPtr, sgCount, skip uint32) int64

//go:wasmimport wasmvmm:host@1 backend_recv_sg
func backendRecvSG(id, sgPtr, sgCount, skip uint32) int64

//go:wasmimport wasmvmm:host@1 backend_pread_sg
func backendPreadSG(id uint32, off uint64, sgPtr, sgCount uint32) int64

//go:wasmimport wasmvmm:host@1 backend_pwrite_sg
func backendPwriteSG(id uint32, off uint64, sgPtr, sgCount uint32) int64

//go:wasmimport wasmvmm:host@1 backend_flush
func backendFlush(id uint32) int32

//go:wasmimport wasmvmm:host@1 backend_discard
func backendDiscard(id uint32, off, n uint64) int32

//go:wasmimport wasmvmm:host@1 backend_write_zeroes
func backendWriteZeroes(id uint32, off, n uint64) int32

//go:wasmimport wasmvmm:host@1 backend_size
func backendSize(id uint32) int64

//go:wasmimport wasmvmm:host@1 vmstate_register
func vmstateRegister(ptr, n uint32) int32

//go:wasmimport wasmvmm:host@1 migration_blocker_add
func blockerAdd(modes, ptr, n uint32) int32

//go:wasmimport wasmvmm:host@1 migration_blocker_remove
func blockerRemove(id uint32) int32

//go:wasmimport wasmvmm:host@1 migration_subscribe
func migrationSubscribe(events, modes uint32) int32

//go:wasmimport wasmvmm:host@1 fd_preserve
func fdPreserve(backend, namePtr, nameLen, id uint32) int32

func ptr[T any](p *T) uint32 { return uint32(uintptr(unsafe.Pointer(p))) }

func bytesPtr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0])))
}

func strPtr(s string) (uint32, uint32) {
	return bytesPtr([]byte(s)), uint32(len(s))
}

// Log writes msg to the host log at info level.
func Log(msg string) {
	b := []byte(msg)
	hostLog(uint32(abi.LogInfo), bytesPtr(b), uint32(len(b)))
}

// State is the device state; its fields are registered as vmstate.
type State struct {
	Regs        [8]uint64
	PIO         [8]uint8
	Counter     uint32
	ExtraReg    uint32
	TimerFired  uint32
	Saves       uint32
	LoadedVer   uint32
	Resets      uint32
	GPA         uint64
	Len         uint32
	LastStatus  int64
	Scratch     [256]byte
	InBuf       [64]byte
	InLen       uint32
	Console     int32
	Disk        int32
	Net         int32
	Blocker     int32
	Events      uint32
	PropWidth   uint64
	PropEnabled uint64
	PropExtra   uint64
	Label       [32]byte
	// SaveAsksClock makes dev_pre_save read the host clock (a hook that
	// consults the outside world).
	SaveAsksClock uint32
	SaveClock     uint64
}

// S is the one device state; globals do not move in Go's wasm heap.
var S State

// Props are the declared properties of the test device; each type occurs.
var Props = []abi.Property{
	{Name: "enabled", Type: abi.PropBool, DefaultInt: 1, Doc: "device answers accesses"},
	{Name: "width", Type: abi.PropU8, DefaultInt: 4},
	{Name: "port", Type: abi.PropU16, DefaultInt: 0x3f8},
	{Name: "irq", Type: abi.PropU32, DefaultInt: 4},
	{Name: "big", Type: abi.PropU64, DefaultInt: 1 << 40},
	{Name: "label", Type: abi.PropString, DefaultStr: "echo0"},
	{Name: "extra", Type: abi.PropBool, DefaultInt: 0},
	{Name: "mode", Type: abi.PropU8, DefaultInt: 0},
}

// DeviceName is the declared device type name.
var DeviceName = "test-echo"

// Section returns the vmstate layout of S.
func Section() *abi.Section {
	return &abi.Section{
		Name: DeviceName, InstanceID: abi.InstanceAny, VersionID: 2, MinimumVersionID: 1,
		Fields: []abi.Field{
			{Name: "regs", Type: abi.FieldU64, Offset: ptr(&S.Regs), Size: 8, Count: 8},
			{Name: "pio", Type: abi.FieldBuffer, Offset: ptr(&S.PIO), Size: 8, Count: 1},
			{Name: "counter", Type: abi.FieldU32, Offset: ptr(&S.Counter), Size: 4, Count: 1, VersionID: 2},
			{Name: "extra_reg", Type: abi.FieldU32, Offset: ptr(&S.ExtraReg), Size: 4, Count: 1,
				Exists: &abi.Condition{Prop: "extra", Op: abi.CondEQ, Value: 1}},
		},
		Subsections: []abi.Section{{
			Name: DeviceName + "/timer", VersionID: 1, MinimumVersionID: 1, NeededID: 1,
			Fields: []abi.Field{{Name: "timer_fired", Type: abi.FieldU32, Offset: ptr(&S.TimerFired), Size: 4, Count: 1}},
		}},
	}
}

// Hooks the test plugins replace.
var (
	Describe  = defaultDescribe
	Realize   = defaultRealize
	MMIORead  = defaultMMIORead
	MMIOWrite = defaultMMIOWrite
	PIORead   = defaultPIORead
	PIOWrite  = defaultPIOWrite
)

func defaultDescribe() int32 {
	b := abi.MarshalDeviceInfo(&abi.DeviceInfo{Name: DeviceName, Version: "1.0.0", Properties: Props})
	return deviceDeclare(bytesPtr(b), uint32(len(b)))
}

// PropInt reads an integer property or returns the status.
func PropInt(name string) (uint64, int32) {
	var v uint64
	np, nl := strPtr(name)
	st := propGetInt(np, nl, ptr(&v))
	return v, st
}

// RegisterSection registers s and returns the status.
func RegisterSection(s *abi.Section) int32 {
	b := abi.MarshalSection(s)
	return vmstateRegister(bytesPtr(b), uint32(len(b)))
}

func defaultRealize() int32 {
	if r := regionAdd(uint32(abi.RegionPIO), 8); r != 0 {
		return r
	}
	if r := regionAdd(uint32(abi.RegionMMIO), 0x1000); r != 1 {
		return r
	}
	var st int32
	if S.PropWidth, st = PropInt("width"); st != 0 {
		return st
	}
	if S.PropEnabled, st = PropInt("enabled"); st != 0 {
		return st
	}
	if S.PropExtra, st = PropInt("extra"); st != 0 {
		return st
	}
	np, nl := strPtr("label")
	if n := propGetString(np, nl, ptr(&S.Label), uint32(len(S.Label))); n < 0 {
		return n
	}
	np, nl = strPtr("console")
	S.Console = backendOpen(uint32(abi.BackendChar), np, nl)
	if S.Console >= 0 {
		if st := backendWatch(uint32(S.Console), uint32(abi.EventReadable)); st != 0 {
			return st
		}
	}
	np, nl = strPtr("disk")
	S.Disk = backendOpen(uint32(abi.BackendBlock), np, nl)
	np, nl = strPtr("net")
	S.Net = backendOpen(uint32(abi.BackendNet), np, nl)
	if st := RegisterSection(Section()); st != 0 {
		return st
	}
	S.Blocker = -1
	return migrationSubscribe(uint32(abi.MigrationSetup|abi.MigrationDone), uint32(abi.ModeAll))
}

func defaultMMIORead(region int32, off int64, size int32) int64 {
	switch {
	case off < 64:
		return int64(S.Regs[off/8])
	case off == 0x118:
		return S.LastStatus
	case off == 0x120:
		return int64(guestLoad(S.GPA, uint32(size)))
	case off == 0x308:
		return int64(S.TimerFired)
	case off == 0x500:
		return int64(S.PropWidth)
	case off == 0x508:
		return int64(S.Resets)
	case off == 0x510:
		return int64(S.Saves)
	case off == 0x518:
		return int64(S.LoadedVer)
	case off == 0x520:
		return int64(S.Events)
	case off == 0x708:
		if S.InLen == 0 {
			return -1
		}
		c := S.InBuf[0]
		copy(S.InBuf[:], S.InBuf[1:S.InLen])
		S.InLen--
		if S.InLen < uint32(len(S.InBuf)) {
			backendWatch(uint32(S.Console), uint32(abi.EventReadable))
		}
		return int64(c)
	case off >= 0x800 && off < 0x900:
		return int64(S.Scratch[off-0x800])
	}
	return int64(region)<<32 | off
}

func defaultMMIOWrite(region int32, off int64, size int32, v int64) {
	switch {
	case off < 64:
		S.Regs[off/8] = uint64(v)
		S.Counter++
	case off == 0x100:
		S.GPA = uint64(v)
	case off == 0x528:
		S.SaveAsksClock = uint32(v)
	case off == 0x108:
		S.Len = uint32(v)
		S.LastStatus = int64(guestRead(S.GPA, bytesPtr(S.Scratch[:]), S.Len))
	case off == 0x110:
		S.LastStatus = int64(guestWrite(S.GPA, bytesPtr(S.Scratch[:]), uint32(v)))
	case off == 0x128:
		S.LastStatus = int64(guestStore(S.GPA, uint32(size), uint64(v)))
	case off == 0x130:
		// One scatter-gather entry (GPA, v) gathered into Scratch.
		var sg [16]byte
		putU64(sg[0:], S.GPA)
		putU32(sg[8:], uint32(v))
		S.LastStatus = guestReadSG(bytesPtr(sg[:]), 1, bytesPtr(S.Scratch[:]), uint32(len(S.Scratch)))
	case off >= 0x900 && off < 0x940:
		S.LastStatus = blockNet(off, uint64(v))
	case off == 0x200:
		S.LastStatus = int64(irqSet(0, uint32(v&1)))
	case off == 0x300:
		S.LastStatus = int64(timerArm(0, clockNS()+uint64(v)))
	case off == 0x400:
		Log("echo: hello")
	case off == 0x600:
		// Calls a cheap host function v times (plugin->host benchmark).
		var sum uint64
		for i := int64(0); i < v; i++ {
			sum += clockNS()
		}
		S.Regs[7] = sum
	case off == 0x610:
		// A tight loop of v iterations (fuel meter benchmark).
		for i := int64(0); i < v; i++ {
			S.Regs[6]++
		}
	case off == 0x618:
		// v calls of a small Go function that is not inlined.
		for i := int64(0); i < v; i++ {
			S.Regs[6] = bump(S.Regs[6])
		}
	case off == 0x700:
		b := [1]byte{byte(v)}
		S.LastStatus = backendWrite(uint32(S.Console), bytesPtr(b[:]), 1)
	case off == 0x710:
		if v != 0 {
			msg := []byte("test blocker")
			S.Blocker = blockerAdd(uint32(v), bytesPtr(msg), uint32(len(msg)))
			S.LastStatus = int64(S.Blocker)
		} else {
			S.LastStatus = int64(blockerRemove(uint32(S.Blocker)))
		}
	case off == 0x720:
		np, nl := strPtr("console-fd")
		S.LastStatus = int64(fdPreserve(uint32(S.Console), np, nl, uint32(v)))
	case off >= 0x800 && off < 0x900:
		S.Scratch[off-0x800] = byte(v)
	}
}

//go:noinline
func bump(x uint64) uint64 { return x*3 + 1 }

// blockNet runs a block or net backend call on a two-entry scatter-gather
// list: [GPA, Len/2) and [GPA+0x1000, +Len-Len/2).
func blockNet(off int64, v uint64) int64 {
	var sg [32]byte
	half := S.Len / 2
	putU64(sg[0:], S.GPA)
	putU32(sg[8:], half)
	putU64(sg[16:], S.GPA+0x1000)
	putU32(sg[24:], S.Len-half)
	p := bytesPtr(sg[:])
	disk, net := uint32(S.Disk), uint32(S.Net)
	switch off {
	case 0x900:
		return backendPreadSG(disk, v, p, 2)
	case 0x908:
		return backendPwriteSG(disk, v, p, 2)
	case 0x910:
		return int64(backendFlush(disk))
	case 0x918:
		return backendSize(disk)
	case 0x920:
		return int64(backendDiscard(disk, 0, v))
	case 0x928:
		return int64(backendWriteZeroes(disk, 0, v))
	case 0x930:
		return backendSendSG(net, p, 2, uint32(v))
	case 0x938:
		return backendRecvSG(net, p, 2, uint32(v))
	}
	return -1
}

func defaultPIORead(region, off, size int32) int32 {
	if off < 8 {
		return int32(S.PIO[off])
	}
	return -1
}

func defaultPIOWrite(region, off, size, v int32) {
	if off < 8 {
		S.PIO[off] = byte(v)
	}
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

func putU32(b []byte, v uint32) {
	for i := 0; i < 4; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

// GuestRead, GuestWrite and GuestReadSG expose the raw imports to test
// plugins that pass bad arguments.
func GuestRead(gpa uint64, p, n uint32) int32          { return guestRead(gpa, p, n) }
func GuestWrite(gpa uint64, p, n uint32) int32         { return guestWrite(gpa, p, n) }
func GuestReadSG(sg, count, buf, n uint32) int64       { return guestReadSG(sg, count, buf, n) }
func BytesPtr(b []byte) uint32                         { return bytesPtr(b) }
func RawLog(level, p, n uint32)                        { hostLog(level, p, n) }
func RawPropGetInt(namePtr, nameLen, out uint32) int32 { return propGetInt(namePtr, nameLen, out) }

//go:wasmexport dev_describe
func devDescribe() int32 { return Describe() }

//go:wasmexport dev_realize
func devRealize() int32 { return Realize() }

//go:wasmexport dev_mmio_read
func devMMIORead(region int32, off int64, size int32) int64 { return MMIORead(region, off, size) }

//go:wasmexport dev_mmio_write
func devMMIOWrite(region int32, off int64, size int32, v int64) { MMIOWrite(region, off, size, v) }

//go:wasmexport dev_pio_read
func devPIORead(region, off, size int32) int32 { return PIORead(region, off, size) }

//go:wasmexport dev_pio_write
func devPIOWrite(region, off, size, v int32) { PIOWrite(region, off, size, v) }

//go:wasmexport dev_pre_save
func devPreSave() int32 {
	S.Saves++
	if S.SaveAsksClock != 0 {
		S.SaveClock = clockNS()
	}
	return 0
}

//go:wasmexport dev_post_load
func devPostLoad(v int32) int32 { S.LoadedVer = uint32(v); return 0 }

//go:wasmexport dev_subsection_needed
func devSubsectionNeeded(id int32) int32 {
	if id == 1 && S.TimerFired != 0 {
		return 1
	}
	return 0
}

//go:wasmexport dev_timer
func devTimer(id int32) {
	S.TimerFired++
	irqSet(0, 1)
}

//go:wasmexport dev_backend_ready
func devBackendReady(id, events int32) {
	S.Events |= uint32(events)
	for S.InLen < uint32(len(S.InBuf)) {
		n := backendRead(uint32(id), bytesPtr(S.InBuf[S.InLen:]), uint32(len(S.InBuf))-S.InLen)
		if n <= 0 {
			return
		}
		S.InLen += uint32(n)
	}
}

//go:wasmexport dev_idle
func devIdle() {}

//go:wasmexport dev_migration_event
func devMigrationEvent(ev, mode int32) int32 {
	if ev == int32(abi.MigrationSetup) && S.Regs[6] == 0xdead {
		return int32(abi.ErrFailed)
	}
	return 0
}

// Reset is the body of dev_reset for the plugins that export it.
func Reset() {
	S.Regs = [8]uint64{}
	S.PIO = [8]uint8{}
	S.Resets++
}
