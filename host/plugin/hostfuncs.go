package plugin

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/hashicorp/go-hclog"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"wasmvmm/abi"
)

// Limits on what a plugin may register.
const (
	maxRegions    = 16
	maxBackends   = 16
	maxSections   = 64
	maxPIOSize    = 0x10000
	maxLogMessage = 4096
	maxReasonLen  = 1024
)

// hostFuncs implements every host function of abi.HostFunctions. Each
// reads its arguments from the stack and writes its result to stack[0].
var hostFuncs = map[string]func(i *Instance, m api.Module, s []uint64){
	abi.FnLog:                hLog,
	abi.FnGuestRead:          hGuestRead,
	abi.FnGuestWrite:         hGuestWrite,
	abi.FnGuestReadSG:        hGuestReadSG,
	abi.FnGuestWriteSG:       hGuestWriteSG,
	abi.FnGuestLoad:          hGuestLoad,
	abi.FnGuestStore:         hGuestStore,
	abi.FnIRQSet:             hIRQSet,
	abi.FnIRQPulse:           hIRQPulse,
	abi.FnRegionAdd:          hRegionAdd,
	abi.FnDeviceDeclare:      hDeviceDeclare,
	abi.FnPropGetInt:         hPropGetInt,
	abi.FnPropGetString:      hPropGetString,
	abi.FnTimerArm:           hTimerArm,
	abi.FnTimerCancel:        hTimerCancel,
	abi.FnClockNS:            hClockNS,
	abi.FnBackendOpen:        hBackendOpen,
	abi.FnBackendWatch:       hBackendWatch,
	abi.FnBackendRead:        hBackendRead,
	abi.FnBackendWrite:       hBackendWrite,
	abi.FnBackendSendSG:      hBackendSendSG,
	abi.FnBackendRecvSG:      hBackendRecvSG,
	abi.FnBackendPreadSG:     hBackendPreadSG,
	abi.FnBackendPwriteSG:    hBackendPwriteSG,
	abi.FnBackendFlush:       hBackendFlush,
	abi.FnBackendDiscard:     hBackendDiscard,
	abi.FnBackendWriteZeroes: hBackendWriteZeroes,
	abi.FnBackendSize:        hBackendSize,
	abi.FnFDPreserve:         hFDPreserve,
	abi.FnVMStateRegister:    hVMStateRegister,
	abi.FnBlockerAdd:         hBlockerAdd,
	abi.FnBlockerRemove:      hBlockerRemove,
	abi.FnMigrationSubscribe: hMigrationSubscribe,
}

// instantiateHostModule builds wasmvmm:host@1 from hostFuncs with
// GoModuleFunc (no reflection) and the signatures of abi.HostFunctions.
func instantiateHostModule(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder(hostModuleName)
	for _, name := range sortedKeys(abi.HostFunctions) {
		sig := abi.HostFunctions[name]
		impl, ok := hostFuncs[name]
		if !ok {
			return fmt.Errorf("host function %s is not implemented", name)
		}
		hasResult := len(sig.Results) > 0
		// Every host function but log may hand the plugin something from
		// outside its memory (time, guest memory, a backend's state), so
		// it counts as a change (Instance.StateChanges).
		counts := name != abi.FnLog
		fn := api.GoModuleFunc(func(ctx context.Context, m api.Module, stack []uint64) {
			i := instanceOf(ctx)
			if i == nil {
				if hasResult {
					stack[0] = status(abi.ErrState)
				}
				return
			}
			if counts {
				i.changes++ // the export's caller holds i.mu
			}
			impl(i, m, stack)
		})
		b.NewFunctionBuilder().WithGoModuleFunction(fn, valTypes(sig.Params), valTypes(sig.Results)).Export(name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

// status encodes a Status as an i32 result (also valid as i64 via sign
// extension for functions returning counts).
func status(s abi.Status) uint64 { return uint64(uint32(int32(s))) }

// status64 encodes a Status as an i64 result.
func status64(s abi.Status) uint64 { return uint64(int64(s)) }

func argU32(v uint64) uint32 { return uint32(v) }

// pmem returns the plugin memory view [ptr, ptr+n) or false.
func pmem(m api.Module, ptr, n uint32) ([]byte, bool) {
	mem := m.Memory()
	if mem == nil {
		return nil, false
	}
	return mem.Read(ptr, n)
}

func hLog(i *Instance, m api.Module, s []uint64) {
	level, ptr, n := abi.LogLevel(argU32(s[0])), argU32(s[1]), argU32(s[2])
	truncated := false
	if n > maxLogMessage {
		n, truncated = maxLogMessage, true
	}
	b, ok := pmem(m, ptr, n)
	if !ok {
		i.log.Warn("plugin log message outside plugin memory", "ptr", ptr, "len", n)
		return
	}
	msg := string(b)
	if truncated {
		msg += "…"
	}
	var l hclog.Level
	switch level {
	case abi.LogTrace:
		l = hclog.Trace
	case abi.LogDebug:
		l = hclog.Debug
	case abi.LogInfo:
		l = hclog.Info
	case abi.LogWarn:
		l = hclog.Warn
	default:
		l = hclog.Error
		i.callErr = msg // hLog runs inside a call, under i.mu
	}
	i.log.Log(l, msg)
}

func hGuestRead(i *Instance, m api.Module, s []uint64) {
	gpa, ptr, n := s[0], argU32(s[1]), argU32(s[2])
	buf, ok := pmem(m, ptr, n)
	if !ok || i.mem == nil || gpa > math.MaxInt64 {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	if _, err := i.mem.ReadAt(buf, int64(gpa)); err != nil {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	s[0] = status(abi.OK)
}

func hGuestWrite(i *Instance, m api.Module, s []uint64) {
	gpa, ptr, n := s[0], argU32(s[1]), argU32(s[2])
	buf, ok := pmem(m, ptr, n)
	if !ok || i.mem == nil || gpa > math.MaxInt64 {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	if _, err := i.mem.WriteAt(buf, int64(gpa)); err != nil {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	s[0] = status(abi.OK)
}

// sgScratch holds the decoded scatter-gather list of the current call
// (reused; calls are serialized by the instance lock).
type sgScratch struct {
	gpas []uint64
	bufs [][]byte
}

// guestSG decodes count entries at ptr in plugin memory into guest memory
// slices, all checked before any byte moves. skip drops that many leading
// bytes of the list.
func (i *Instance) guestSG(m api.Module, ptr, count uint32, skip uint64) ([][]byte, []uint64, abi.Status) {
	if count > abi.MaxSGEntries {
		return nil, nil, abi.ErrInvalid
	}
	raw, ok := pmem(m, ptr, count*abi.SGEntrySize)
	if !ok {
		return nil, nil, abi.ErrOutOfBounds
	}
	if i.mem == nil && count > 0 {
		return nil, nil, abi.ErrOutOfBounds
	}
	sc := &i.sg
	sc.bufs, sc.gpas = sc.bufs[:0], sc.gpas[:0]
	for k := uint32(0); k < count; k++ {
		e := raw[k*abi.SGEntrySize:]
		gpa := binary.LittleEndian.Uint64(e)
		n := uint64(binary.LittleEndian.Uint32(e[8:]))
		if binary.LittleEndian.Uint32(e[12:]) != 0 {
			return nil, nil, abi.ErrInvalid
		}
		if skip >= n {
			skip -= n
			// Still check that the skipped range is inside guest RAM.
			if _, err := i.mem.Slice(gpa, n); err != nil {
				return nil, nil, abi.ErrOutOfBounds
			}
			continue
		}
		gpa, n = gpa+skip, n-skip
		skip = 0
		b, err := i.mem.Slice(gpa, n)
		if err != nil {
			return nil, nil, abi.ErrOutOfBounds
		}
		sc.bufs = append(sc.bufs, b)
		sc.gpas = append(sc.gpas, gpa)
	}
	if skip > 0 {
		return nil, nil, abi.ErrInvalid
	}
	return sc.bufs, sc.gpas, abi.OK
}

// markWritten marks the first n bytes of the scattered buffers dirty.
func (i *Instance) markWritten(bufs [][]byte, gpas []uint64, n uint64) {
	for k, b := range bufs {
		if n == 0 {
			return
		}
		l := min(uint64(len(b)), n)
		i.mem.MarkDirty(gpas[k], l)
		n -= l
	}
}

func hGuestReadSG(i *Instance, m api.Module, s []uint64) {
	sgPtr, count, bufPtr, bufLen := argU32(s[0]), argU32(s[1]), argU32(s[2]), argU32(s[3])
	bufs, _, st := i.guestSG(m, sgPtr, count, 0)
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	dst, ok := pmem(m, bufPtr, bufLen)
	if !ok {
		s[0] = status64(abi.ErrOutOfBounds)
		return
	}
	n := 0
	for _, b := range bufs {
		n += copy(dst[n:], b)
	}
	s[0] = uint64(n)
}

func hGuestWriteSG(i *Instance, m api.Module, s []uint64) {
	sgPtr, count, bufPtr, bufLen := argU32(s[0]), argU32(s[1]), argU32(s[2]), argU32(s[3])
	bufs, gpas, st := i.guestSG(m, sgPtr, count, 0)
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	src, ok := pmem(m, bufPtr, bufLen)
	if !ok {
		s[0] = status64(abi.ErrOutOfBounds)
		return
	}
	n := 0
	for _, b := range bufs {
		n += copy(b, src[n:])
	}
	i.markWritten(bufs, gpas, uint64(n))
	s[0] = uint64(n)
}

func validSize(size uint32) bool { return size == 1 || size == 2 || size == 4 || size == 8 }

func hGuestLoad(i *Instance, m api.Module, s []uint64) {
	gpa, size := s[0], argU32(s[1])
	if !validSize(size) || i.mem == nil {
		i.guestErrors.Add(1)
		s[0] = ^uint64(0)
		return
	}
	b, err := i.mem.Slice(gpa, uint64(size))
	if err != nil {
		i.guestErrors.Add(1)
		s[0] = sizeMask(int(size))
		return
	}
	var v uint64
	switch size {
	case 1:
		v = uint64(b[0])
	case 2:
		v = uint64(binary.LittleEndian.Uint16(b))
	case 4:
		v = uint64(binary.LittleEndian.Uint32(b))
	default:
		v = binary.LittleEndian.Uint64(b)
	}
	s[0] = v
}

func hGuestStore(i *Instance, m api.Module, s []uint64) {
	gpa, size, v := s[0], argU32(s[1]), s[2]
	if !validSize(size) {
		s[0] = status(abi.ErrInvalid)
		return
	}
	if i.mem == nil {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	b, err := i.mem.Slice(gpa, uint64(size))
	if err != nil {
		s[0] = status(abi.ErrOutOfBounds)
		return
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
	i.mem.MarkDirty(gpa, uint64(size))
	s[0] = status(abi.OK)
}

func hIRQSet(i *Instance, m api.Module, s []uint64) {
	line, level := int32(argU32(s[0])), argU32(s[1])
	if line < 0 {
		s[0] = status(abi.ErrNotFound)
		return
	}
	if err := i.host.SetIRQ(int(line), level != 0); err != nil {
		i.log.Debug("irq_set refused", "line", line, "error", err)
		s[0] = status(abi.ErrNotFound)
		return
	}
	s[0] = status(abi.OK)
}

func hIRQPulse(i *Instance, m api.Module, s []uint64) {
	line := int32(argU32(s[0]))
	if line < 0 {
		s[0] = status(abi.ErrNotFound)
		return
	}
	if err := i.host.SetIRQ(int(line), true); err != nil {
		i.log.Debug("irq_pulse refused", "line", line, "error", err)
		s[0] = status(abi.ErrNotFound)
		return
	}
	if err := i.host.SetIRQ(int(line), false); err != nil {
		s[0] = status(abi.ErrIO)
		return
	}
	s[0] = status(abi.OK)
}

func hRegionAdd(i *Instance, m api.Module, s []uint64) {
	kind, size := abi.RegionKind(int32(argU32(s[0]))), s[1]
	switch {
	case i.phase != phaseRealize:
		s[0] = status(abi.ErrState)
	case kind != abi.RegionMMIO && kind != abi.RegionPIO:
		s[0] = status(i.refuse(abi.ErrInvalid, "region_add: unknown region kind %d", kind))
	case size == 0 || (kind == abi.RegionPIO && size > maxPIOSize):
		s[0] = status(i.refuse(abi.ErrInvalid, "region_add: invalid size %#x for a region of kind %d", size, kind))
	case len(i.regions) >= maxRegions:
		s[0] = status(i.refuse(abi.ErrNoSpace, "region_add: more than %d regions", maxRegions))
	default:
		i.regions = append(i.regions, Region{Kind: kind, Size: size})
		s[0] = uint64(len(i.regions) - 1)
	}
}

func hDeviceDeclare(i *Instance, m api.Module, s []uint64) {
	ptr, n := argU32(s[0]), argU32(s[1])
	if i.phase != phaseDescribe {
		s[0] = status(abi.ErrState)
		return
	}
	if i.info != nil {
		s[0] = status(i.refuse(abi.ErrExists, "device_declare called twice"))
		return
	}
	b, ok := pmem(m, ptr, n)
	if !ok {
		s[0] = status(i.refuse(abi.ErrOutOfBounds, "device_declare: [%#x, +%#x) outside plugin memory", ptr, n))
		return
	}
	info, err := abi.UnmarshalDeviceInfo(b)
	if err != nil {
		s[0] = status(i.refuse(abi.ErrInvalid, "device_declare: %v", err))
		return
	}
	i.info = info
	s[0] = status(abi.OK)
}

// propLookup reads the property name argument and finds its value.
func (i *Instance) propLookup(m api.Module, ptr, n uint32) (PropertyValue, abi.Status) {
	if i.phase < phaseRealize || i.phase == phaseClosed {
		return PropertyValue{}, abi.ErrState
	}
	if n > abi.MaxNameLen {
		return PropertyValue{}, abi.ErrNotFound
	}
	b, ok := pmem(m, ptr, n)
	if !ok {
		return PropertyValue{}, abi.ErrOutOfBounds
	}
	v, ok := i.props[string(b)]
	if !ok {
		return PropertyValue{}, abi.ErrNotFound
	}
	return v, abi.OK
}

func hPropGetInt(i *Instance, m api.Module, s []uint64) {
	v, st := i.propLookup(m, argU32(s[0]), argU32(s[1]))
	switch {
	case st != abi.OK:
	case v.Type == abi.PropString:
		st = abi.ErrType
	case !m.Memory().WriteUint64Le(argU32(s[2]), v.Int):
		st = abi.ErrOutOfBounds
	}
	s[0] = status(st)
}

func hPropGetString(i *Instance, m api.Module, s []uint64) {
	v, st := i.propLookup(m, argU32(s[0]), argU32(s[1]))
	if st == abi.OK && v.Type != abi.PropString {
		st = abi.ErrType
	}
	if st != abi.OK {
		s[0] = status(st)
		return
	}
	buf, ok := pmem(m, argU32(s[2]), argU32(s[3]))
	if !ok {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	if len(v.Str) <= len(buf) {
		copy(buf, v.Str)
	}
	s[0] = uint64(len(v.Str))
}

func hTimerArm(i *Instance, m api.Module, s []uint64) {
	id, deadline := argU32(s[0]), int64(s[1])
	switch {
	case i.phase < phaseRealize || i.phase == phaseClosed:
		s[0] = status(abi.ErrState)
		return
	case id >= abi.MaxTimers:
		s[0] = status(abi.ErrNotFound)
		return
	case i.fns[exTimer] == nil:
		s[0] = status(abi.ErrUnsupported)
		return
	}
	t := &i.timers[id]
	if t.stop != nil {
		t.stop()
	}
	t.gen++
	gen := t.gen
	t.stop = i.clock.AfterFunc(deadline, func() { i.fireTimer(id, gen) })
	s[0] = status(abi.OK)
}

func hTimerCancel(i *Instance, m api.Module, s []uint64) {
	id := argU32(s[0])
	if id >= abi.MaxTimers {
		s[0] = status(abi.ErrNotFound)
		return
	}
	t := &i.timers[id]
	if t.stop != nil {
		t.stop()
		t.stop = nil
	}
	t.gen++
	s[0] = status(abi.OK)
}

// fireTimer runs in the clock's goroutine: it calls dev_timer under the
// instance lock unless the timer was re-armed or canceled meanwhile.
func (i *Instance) fireTimer(id uint32, gen uint64) {
	i.mu.Lock()
	defer i.mu.Unlock()
	defer i.recoverLocked("timer")
	t := &i.timers[id]
	if t.gen != gen || i.phase != phaseRunning {
		return
	}
	if i.held {
		i.heldTimers = append(i.heldTimers, heldTimer{id, gen})
		return
	}
	t.stop = nil
	i.stack[0] = uint64(id)
	_ = i.callLocked(exTimer)
}

func hClockNS(i *Instance, m api.Module, s []uint64) {
	s[0] = uint64(i.clock.Now())
}

func hBackendOpen(i *Instance, m api.Module, s []uint64) {
	kind, ptr, n := abi.BackendKind(int32(argU32(s[0]))), argU32(s[1]), argU32(s[2])
	if i.phase < phaseRealize || i.phase == phaseClosed {
		s[0] = status(abi.ErrState)
		return
	}
	if kind < abi.BackendChar || kind > abi.BackendBlock {
		s[0] = status(abi.ErrInvalid)
		return
	}
	if n > abi.MaxNameLen {
		s[0] = status(abi.ErrNotFound)
		return
	}
	b, ok := pmem(m, ptr, n)
	if !ok {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	name := string(b)
	for id, slot := range i.backends {
		if slot.name == name {
			if slot.kind != kind {
				s[0] = status(abi.ErrType)
			} else {
				s[0] = uint64(id)
			}
			return
		}
	}
	if len(i.backends) >= maxBackends {
		s[0] = status(abi.ErrNoSpace)
		return
	}
	be, err := i.host.Backend(kind, name)
	if err != nil || be == nil {
		i.log.Debug("backend not attached", "name", name, "kind", kind, "error", err)
		s[0] = status(abi.ErrNotFound)
		return
	}
	okKind := be.Kind() == kind
	switch kind {
	case abi.BackendChar:
		_, okKind = be.(CharBackend)
	case abi.BackendNet:
		_, okKind = be.(NetBackend)
	case abi.BackendBlock:
		_, okKind = be.(BlockBackend)
	}
	if !okKind || be.Kind() != kind {
		s[0] = status(abi.ErrType)
		return
	}
	i.backends = append(i.backends, &backendSlot{name: name, kind: kind, b: be})
	s[0] = uint64(len(i.backends) - 1)
}

func (i *Instance) backend(id uint32) *backendSlot {
	if int(id) >= len(i.backends) || i.phase == phaseClosed {
		return nil
	}
	return i.backends[id]
}

func hBackendWatch(i *Instance, m api.Module, s []uint64) {
	slot, events := i.backend(argU32(s[0])), abi.BackendEvent(int32(argU32(s[1])))
	if slot == nil {
		s[0] = status(abi.ErrNotFound)
		return
	}
	w, ok := slot.b.(Watchable)
	if !ok {
		s[0] = status(abi.ErrUnsupported)
		return
	}
	if events&^(abi.EventReadable|abi.EventWritable|abi.EventHangup) != 0 {
		s[0] = status(abi.ErrInvalid)
		return
	}
	if events != 0 && i.fns[exBackendReady] == nil {
		s[0] = status(abi.ErrUnsupported)
		return
	}
	slot.watched.Store(int32(events))
	if events != 0 {
		if !slot.hooked {
			slot.hooked = true
			w.Watch(func() { i.scheduleReady(slot) })
		}
		if w.Ready()&events != 0 {
			i.scheduleReady(slot)
		}
	}
	s[0] = status(abi.OK)
}

// scheduleReady arranges one delivery of dev_backend_ready in its own
// goroutine (never synchronously: the caller may hold the instance lock).
func (i *Instance) scheduleReady(slot *backendSlot) {
	if slot.watched.Load() == 0 || i.failed.Load() {
		return
	}
	if slot.pending.CompareAndSwap(false, true) {
		go i.deliverReady(slot)
	}
}

// deliverReady calls dev_backend_ready while a watched event is present
// and the plugin consumes something; a plugin that stops consuming calls
// backend_watch again when it can take more.
func (i *Instance) deliverReady(slot *backendSlot) {
	i.mu.Lock()
	defer i.mu.Unlock()
	defer i.recoverLocked("backend readiness")
	slot.pending.Store(false)
	if i.held {
		return // ReleaseEvents delivers it
	}
	w := slot.b.(Watchable)
	id := -1
	for k, b := range i.backends {
		if b == slot {
			id = k
		}
	}
	for range 1024 {
		if i.phase != phaseRunning && i.phase != phaseRealize {
			return
		}
		ev := w.Ready() & abi.BackendEvent(slot.watched.Load())
		if ev == 0 || id < 0 {
			return
		}
		before := slot.reads
		i.stack[0], i.stack[1] = uint64(id), uint64(uint32(ev))
		if i.callLocked(exBackendReady) != nil || slot.reads == before {
			return
		}
	}
}

func hBackendRead(i *Instance, m api.Module, s []uint64) {
	slot := i.backend(argU32(s[0]))
	if slot == nil {
		s[0] = status64(abi.ErrNotFound)
		return
	}
	cb, ok := slot.b.(CharBackend)
	if !ok {
		s[0] = status64(abi.ErrType)
		return
	}
	buf, ok := pmem(m, argU32(s[1]), argU32(s[2]))
	if !ok {
		s[0] = status64(abi.ErrOutOfBounds)
		return
	}
	n, err := cb.TryRead(buf)
	if n > 0 {
		slot.reads += uint64(n)
		s[0] = uint64(n)
		return
	}
	if err == nil {
		err = ErrWouldBlock
	}
	s[0] = status64(statusOf(err))
}

func hBackendWrite(i *Instance, m api.Module, s []uint64) {
	slot := i.backend(argU32(s[0]))
	if slot == nil {
		s[0] = status64(abi.ErrNotFound)
		return
	}
	cb, ok := slot.b.(CharBackend)
	if !ok {
		s[0] = status64(abi.ErrType)
		return
	}
	buf, ok := pmem(m, argU32(s[1]), argU32(s[2]))
	if !ok {
		s[0] = status64(abi.ErrOutOfBounds)
		return
	}
	n, err := cb.Write(buf)
	if n > 0 || len(buf) == 0 {
		slot.reads++ // progress for writable watchers
		s[0] = uint64(n)
		return
	}
	s[0] = status64(statusOf(err))
}

func (i *Instance) netBackend(id uint32) (*backendSlot, NetBackend, abi.Status) {
	slot := i.backend(id)
	if slot == nil {
		return nil, nil, abi.ErrNotFound
	}
	nb, ok := slot.b.(NetBackend)
	if !ok {
		return nil, nil, abi.ErrType
	}
	return slot, nb, abi.OK
}

func (i *Instance) blockBackend(id uint32) (BlockBackend, abi.Status) {
	slot := i.backend(id)
	if slot == nil {
		return nil, abi.ErrNotFound
	}
	bb, ok := slot.b.(BlockBackend)
	if !ok {
		return nil, abi.ErrType
	}
	return bb, abi.OK
}

func hBackendSendSG(i *Instance, m api.Module, s []uint64) {
	_, nb, st := i.netBackend(argU32(s[0]))
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	bufs, _, st := i.guestSG(m, argU32(s[1]), argU32(s[2]), uint64(argU32(s[3])))
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	n, err := nb.SendSG(bufs)
	if err != nil {
		s[0] = status64(statusOf(err))
		return
	}
	s[0] = uint64(n)
}

func hBackendRecvSG(i *Instance, m api.Module, s []uint64) {
	slot, nb, st := i.netBackend(argU32(s[0]))
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	bufs, gpas, st := i.guestSG(m, argU32(s[1]), argU32(s[2]), uint64(argU32(s[3])))
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	n, err := nb.RecvSG(bufs)
	if err != nil {
		s[0] = status64(statusOf(err))
		return
	}
	slot.reads++
	i.markWritten(bufs, gpas, uint64(max(n, 0)))
	s[0] = uint64(n)
}

// blockSGArgs decodes (backend_id, offset, sg_ptr, sg_count), the
// arguments of backend_pread_sg and backend_pwrite_sg.
func (i *Instance) blockSGArgs(m api.Module, s []uint64) (BlockBackend, int64, [][]byte, []uint64, abi.Status) {
	bb, st := i.blockBackend(argU32(s[0]))
	if st != abi.OK {
		return nil, 0, nil, nil, st
	}
	off := int64(s[1])
	bufs, gpas, st := i.guestSG(m, argU32(s[2]), argU32(s[3]), 0)
	if st != abi.OK {
		return nil, 0, nil, nil, st
	}
	if off < 0 {
		return nil, 0, nil, nil, abi.ErrInvalid
	}
	return bb, off, bufs, gpas, abi.OK
}

func hBackendPreadSG(i *Instance, m api.Module, s []uint64) {
	bb, off, bufs, gpas, st := i.blockSGArgs(m, s)
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	n, err := bb.PreadSG(bufs, off)
	i.markWritten(bufs, gpas, uint64(max(n, 0)))
	if err != nil && n == 0 {
		s[0] = status64(statusOf(err))
		return
	}
	s[0] = uint64(n)
}

func hBackendPwriteSG(i *Instance, m api.Module, s []uint64) {
	bb, off, bufs, _, st := i.blockSGArgs(m, s)
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	n, err := bb.PwriteSG(bufs, off)
	if err != nil && n == 0 {
		s[0] = status64(statusOf(err))
		return
	}
	s[0] = uint64(n)
}

func hBackendFlush(i *Instance, m api.Module, s []uint64) {
	bb, st := i.blockBackend(argU32(s[0]))
	if st == abi.OK {
		st = statusOf(bb.Flush())
	}
	s[0] = status(st)
}

func rangeOp(s []uint64, i *Instance, op func(BlockBackend, int64, int64) error) {
	bb, st := i.blockBackend(argU32(s[0]))
	off, n := int64(s[1]), int64(s[2])
	if st == abi.OK && (off < 0 || n < 0 || off > math.MaxInt64-n) {
		st = abi.ErrInvalid
	}
	if st == abi.OK {
		st = statusOf(op(bb, off, n))
	}
	s[0] = status(st)
}

func hBackendDiscard(i *Instance, m api.Module, s []uint64) {
	rangeOp(s, i, func(b BlockBackend, off, n int64) error { return b.Discard(off, n) })
}

func hBackendWriteZeroes(i *Instance, m api.Module, s []uint64) {
	rangeOp(s, i, func(b BlockBackend, off, n int64) error { return b.WriteZeroes(off, n) })
}

func hBackendSize(i *Instance, m api.Module, s []uint64) {
	bb, st := i.blockBackend(argU32(s[0]))
	if st != abi.OK {
		s[0] = status64(st)
		return
	}
	n, err := bb.Size()
	if err != nil {
		s[0] = status64(statusOf(err))
		return
	}
	s[0] = uint64(n)
}

func hFDPreserve(i *Instance, m api.Module, s []uint64) {
	slot := i.backend(argU32(s[0]))
	if slot == nil || i.phase < phaseRealize {
		s[0] = status(abi.ErrNotFound)
		return
	}
	if h, ok := slot.b.(FDHolder); !ok || h.FD() < 0 {
		s[0] = status(abi.ErrUnsupported)
		return
	}
	n := argU32(s[2])
	if n > abi.MaxNameLen {
		s[0] = status(abi.ErrInvalid)
		return
	}
	b, ok := pmem(m, argU32(s[1]), n)
	if !ok {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	if len(b) == 0 {
		s[0] = status(abi.ErrInvalid)
		return
	}
	p := PreservedFD{Device: i.name, Name: string(b), ID: argU32(s[3]), BackendName: slot.name, Backend: slot.b}
	if !i.preserved.add(i, p) {
		s[0] = status(abi.ErrExists)
		return
	}
	s[0] = status(abi.OK)
}

func hVMStateRegister(i *Instance, m api.Module, s []uint64) {
	ptr, n := argU32(s[0]), argU32(s[1])
	if i.phase != phaseRealize {
		s[0] = status(abi.ErrState)
		return
	}
	b, ok := pmem(m, ptr, n)
	if !ok {
		s[0] = status(i.refuse(abi.ErrOutOfBounds, "vmstate_register: [%#x, +%#x) outside plugin memory", ptr, n))
		return
	}
	sec, err := abi.UnmarshalSection(b)
	if err != nil {
		s[0] = status(i.refuse(abi.ErrInvalid, "vmstate_register: %v", err))
		return
	}
	if err := sec.Validate(uint64(m.Memory().Size())); err != nil {
		s[0] = status(i.refuse(abi.ErrInvalid, "vmstate_register: %v", err))
		return
	}
	if err := i.checkConditions(sec); err != nil {
		s[0] = status(i.refuse(abi.ErrInvalid, "vmstate_register: section %s: %v", sec.Name, err))
		return
	}
	if len(i.sections) >= maxSections {
		s[0] = status(i.refuse(abi.ErrNoSpace, "vmstate_register: more than %d sections", maxSections))
		return
	}
	for _, o := range i.sections {
		if o.Name == sec.Name && o.InstanceID == sec.InstanceID {
			s[0] = status(i.refuse(abi.ErrExists, "vmstate_register: section %s (instance %d) registered twice", sec.Name, sec.InstanceID))
			return
		}
	}
	i.sections = append(i.sections, sec)
	s[0] = status(abi.OK)
}

// checkConditions verifies that every existence condition names a bool or
// integer property of the device.
func (i *Instance) checkConditions(sec *abi.Section) error {
	for _, f := range sec.Fields {
		if f.Exists != nil {
			v, ok := i.props[f.Exists.Prop]
			if !ok {
				return fmt.Errorf("field %s depends on unknown property %q", f.Name, f.Exists.Prop)
			}
			if v.Type == abi.PropString {
				return fmt.Errorf("field %s depends on string property %q", f.Name, f.Exists.Prop)
			}
		}
		if f.Struct != nil {
			if err := i.checkConditions(f.Struct); err != nil {
				return err
			}
		}
	}
	for k := range sec.Subsections {
		if err := i.checkConditions(&sec.Subsections[k]); err != nil {
			return err
		}
	}
	return nil
}

func hBlockerAdd(i *Instance, m api.Module, s []uint64) {
	modes, ptr, n := abi.MigrationMode(int32(argU32(s[0]))), argU32(s[1]), argU32(s[2])
	if i.phase < phaseRealize || i.phase == phaseClosed {
		s[0] = status(abi.ErrState)
		return
	}
	if modes == 0 || modes&^abi.ModeAll != 0 {
		s[0] = status(abi.ErrInvalid)
		return
	}
	n = min(n, maxReasonLen)
	b, ok := pmem(m, ptr, n)
	if !ok {
		s[0] = status(abi.ErrOutOfBounds)
		return
	}
	s[0] = uint64(i.migration.addBlocker(i, modes, string(b)))
}

func hBlockerRemove(i *Instance, m api.Module, s []uint64) {
	if !i.migration.removeBlocker(i, int32(argU32(s[0]))) {
		s[0] = status(abi.ErrNotFound)
		return
	}
	s[0] = status(abi.OK)
}

func hMigrationSubscribe(i *Instance, m api.Module, s []uint64) {
	events, modes := abi.MigrationEvent(int32(argU32(s[0]))), abi.MigrationMode(int32(argU32(s[1])))
	switch {
	case i.phase < phaseRealize || i.phase == phaseClosed:
		s[0] = status(abi.ErrState)
	case events&^(abi.MigrationSetup|abi.MigrationDone|abi.MigrationFailed) != 0 || modes&^abi.ModeAll != 0:
		s[0] = status(abi.ErrInvalid)
	case i.fns[exMigrationEvent] == nil:
		s[0] = status(abi.ErrUnsupported)
	default:
		i.migration.subscribe(i, events, modes)
		s[0] = status(abi.OK)
	}
}
