package machine

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"wasmvmm/host/kvm"
)

// Dirty tracking for live migration. Every RAM block is memory slot i (its
// index in Memory().Blocks()). While logging is on, a page is dirty when the
// guest wrote it (KVM's dirty log) or the host wrote it on a device's behalf
// (guestmem's bitmap); SyncDirty merges both.

// dirtyLog is the machine's dirty-tracking state.
type dirtyLog struct {
	mu      sync.Mutex
	on      bool
	scratch [][]uint64 // one KVM bitmap per slot, reused
}

// StartDirtyLog turns on dirty logging on every RAM slot and forgets what
// the host dirtied before, so the first SyncDirty reports only writes made
// after this call.
func (m *Machine) StartDirtyLog() error {
	m.dirty.mu.Lock()
	defer m.dirty.mu.Unlock()
	if m.dirty.on {
		return errors.New("dirty logging is already on")
	}
	if m.vm == nil || m.mem == nil {
		return errors.New("dirty logging: the machine is closed")
	}
	blocks := m.mem.Blocks()
	m.dirty.scratch = make([][]uint64, len(blocks))
	for i, b := range blocks {
		if err := m.vm.SetUserMemoryRegion(uint32(i), b.GPA, b.Mem, kvm.MemLogDirtyPages); err != nil {
			for j := 0; j < i; j++ {
				bj := blocks[j]
				m.vm.SetUserMemoryRegion(uint32(j), bj.GPA, bj.Mem, 0)
			}
			return fmt.Errorf("dirty logging on RAM block %s: %w", b.Name, err)
		}
		m.dirty.scratch[i] = make([]uint64, kvm.DirtyBitmapWords(b.Size()))
		b.TakeDirty(m.dirty.scratch[i])
		clear(m.dirty.scratch[i])
	}
	m.dirty.on = true
	return nil
}

// StopDirtyLog turns dirty logging off again (after a migration, whatever
// its outcome). It is a no-op when logging is off.
func (m *Machine) StopDirtyLog() error {
	m.dirty.mu.Lock()
	defer m.dirty.mu.Unlock()
	if !m.dirty.on {
		return nil
	}
	if m.vm == nil || m.mem == nil {
		m.dirty.on = false
		return nil // closed: the slots are gone with the VM
	}
	var errs []error
	for i, b := range m.mem.Blocks() {
		if err := m.vm.SetUserMemoryRegion(uint32(i), b.GPA, b.Mem, 0); err != nil {
			errs = append(errs, fmt.Errorf("dirty logging off on RAM block %s: %w", b.Name, err))
		}
	}
	m.dirty.on = false
	m.dirty.scratch = nil
	return errors.Join(errs...)
}

// SyncDirty ORs into dst (one bitmap per RAM block, in Memory().Blocks()
// order, DirtyBitmapWords words each) every page written since the previous
// sync (or StartDirtyLog), by the guest or by the host, re-arms tracking of
// those pages, and returns how many pages it added.
func (m *Machine) SyncDirty(dst [][]uint64) (int, error) {
	m.dirty.mu.Lock()
	defer m.dirty.mu.Unlock()
	if !m.dirty.on || m.vm == nil || m.mem == nil {
		return 0, errors.New("dirty logging is off")
	}
	blocks := m.mem.Blocks()
	if len(dst) != len(blocks) {
		return 0, fmt.Errorf("sync dirty: %d bitmaps for %d RAM blocks", len(dst), len(blocks))
	}
	n := 0
	for i, b := range blocks {
		kb := m.dirty.scratch[i]
		if len(dst[i]) < len(kb) {
			return n, fmt.Errorf("sync dirty: bitmap of RAM block %s has %d words, need %d", b.Name, len(dst[i]), len(kb))
		}
		if err := m.vm.GetDirtyLog(uint32(i), kb); err != nil {
			return n, err
		}
		if m.vm.ManualDirtyLogProtect() {
			if err := m.clearDirty(uint32(i), b.Pages(), kb); err != nil {
				return n, err
			}
		}
		// Host writes after the KVM log was read are caught by the next
		// sync; those before are in this one.
		b.TakeDirty(kb)
		d := dst[i]
		for w, v := range kb {
			if v != 0 {
				n += bits.OnesCount64(v &^ d[w])
				d[w] |= v
			}
		}
	}
	return n, nil
}

// clearDirty re-protects the pages whose bits are set in bm, skipping runs
// of clean words so a sparse log costs little.
func (m *Machine) clearDirty(slot uint32, pages uint64, bm []uint64) error {
	const chunk = 1 << 15 // words per KVM_CLEAR_DIRTY_LOG call (2 Mi pages)
	for w := 0; w < len(bm); w += chunk {
		end := min(w+chunk, len(bm))
		any := false
		for _, v := range bm[w:end] {
			if v != 0 {
				any = true
				break
			}
		}
		if !any {
			continue
		}
		first := uint64(w) * 64
		num := min(uint64(end-w)*64, pages-first)
		if err := m.vm.ClearDirtyLog(slot, first, uint32(num), bm[w:end]); err != nil {
			return err
		}
	}
	return nil
}

// throttle slows the vCPUs down for auto-converge, as QEMU's cpu-throttle
// does: at pct percent a vCPU runs a slice of throttleSlice, then sleeps
// pct/(100-pct) times what it actually ran, so it runs (100-pct)% of the
// time.
//
// Each vCPU keeps its own account (vcpuThrottle). Its run time is measured
// on the VM clock (which stands still while the machine is paused) from the
// end of its last sleep, so kick latency, timer slack and exits handled in
// between change only how long a slice is, not the run fraction; and a
// sleep that overshoots (or ends early) is carried into the next one. A
// per-vCPU timer marks the slice over and kicks the vCPU out of KVM_RUN; the
// vCPU sleeps on its own thread before re-entering KVM_RUN (throttleWait),
// waking early when the machine pauses or stops, or throttling ends.
type throttle struct {
	pct   atomic.Int32
	epoch atomic.Uint64 // bumped when throttling turns on or off
	mu    sync.Mutex    // serializes SetThrottle
	// startVM is the VM time throttling last turned on; the first slice of
	// every vCPU counts from it. Written before epoch is bumped.
	startVM atomic.Int64
	vcpus   atomic.Pointer[[]vcpuThrottle] // one per vCPU, by index; set once
}

// vcpuThrottle is one vCPU's throttle account. owed and timer are shared
// with the timer's callback; the rest belongs to the vCPU's thread.
type vcpuThrottle struct {
	owed     atomic.Bool   // the slice is over: sleep before the next KVM_RUN
	timer    *time.Timer   // kicks the vCPU when its slice is over
	runStart int64         // VM time the current slice began
	debt     time.Duration // sleep owed; negative after a sleep overshot
}

const (
	// throttleSlice is the run time between two forced sleeps (QEMU's
	// CPU_THROTTLE_TIMESLICE_NS).
	throttleSlice = 10 * time.Millisecond
	// throttleMaxRun caps the run time one sleep pays for, so that a jump
	// of the VM clock (an incoming machine's clock is set) cannot put a
	// vCPU to sleep for long.
	throttleMaxRun = 4 * throttleSlice
)

// SetThrottle makes the vCPUs sleep pct percent of the time (0 turns
// throttling off; at most 99). Changing a non-zero percentage applies from
// each vCPU's next sleep; turning throttling off wakes sleeping vCPUs.
func (m *Machine) SetThrottle(pct int) {
	pct = max(0, min(pct, 99))
	t := &m.throttle
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.pct.Load()
	if t.vcpus.Load() == nil && pct > 0 {
		vs := make([]vcpuThrottle, len(m.vcpus))
		for i := range vs {
			vt, v := &vs[i], m.vcpus[i]
			vt.timer = time.AfterFunc(time.Hour, func() {
				vt.owed.Store(true)
				v.cpu.Kick() // an error means the vCPU is closed: nothing to kick
			})
			vt.timer.Stop()
		}
		t.vcpus.Store(&vs)
	}
	switch {
	case was == 0 && pct > 0:
		t.startVM.Store(m.Clock.Now())
		t.epoch.Add(1)
		t.pct.Store(int32(pct))
		for i := range *t.vcpus.Load() {
			vt := &(*t.vcpus.Load())[i]
			vt.owed.Store(false)
			vt.timer.Reset(throttleSlice)
		}
	case was > 0 && pct == 0:
		t.pct.Store(0)
		t.epoch.Add(1)
		for i := range *t.vcpus.Load() {
			(*t.vcpus.Load())[i].timer.Stop()
		}
		// Wake the vCPUs sleeping in throttleWait.
		m.pause.mu.Lock()
		m.pause.cond.Broadcast()
		m.pause.mu.Unlock()
	default:
		t.pct.Store(int32(pct))
	}
}

// Throttle returns the current throttle percentage.
func (m *Machine) Throttle() int { return int(m.throttle.pct.Load()) }

// throttleWait runs on a vCPU's thread before KVM_RUN: when the vCPU's
// slice is over it sleeps its share of the time it ran, waking early if the
// machine pauses or stops or throttling ends.
func (m *Machine) throttleWait(v *vcpu) {
	t := &m.throttle
	pct := time.Duration(t.pct.Load())
	if pct <= 0 {
		return
	}
	vs := t.vcpus.Load()
	if vs == nil || v.id >= len(*vs) {
		return
	}
	vt := &(*vs)[v.id]
	if epoch := t.epoch.Load(); v.throttleGen != epoch {
		// Throttling (re)started: this vCPU's first slice began then.
		v.throttleGen = epoch
		vt.runStart = t.startVM.Load()
		vt.debt = 0
	}
	if !vt.owed.Load() {
		return
	}
	vt.owed.Store(false)
	ran := min(max(time.Duration(m.Clock.Now()-vt.runStart), 0), throttleMaxRun)
	vt.debt += ran * pct / (100 - pct)
	if vt.debt > 0 {
		slept, whole := m.throttleSleep(vt.debt, v.throttleGen)
		if whole {
			// Carry the overshoot (or shortfall) into the next sleep,
			// within a slice's worth.
			vt.debt = max(vt.debt-slept, -throttleSlice)
		} else {
			vt.debt = 0 // paused, stopped or throttling ended
		}
	}
	vt.runStart = m.Clock.Now()
	if t.pct.Load() > 0 && t.epoch.Load() == v.throttleGen {
		vt.timer.Reset(throttleSlice)
	}
}

// throttleSleep sleeps d on the calling vCPU thread unless the machine
// pauses or stops, or the throttle epoch moves on, first. It returns how
// long it slept and whether it slept the whole time.
func (m *Machine) throttleSleep(d time.Duration, epoch uint64) (time.Duration, bool) {
	p := &m.pause
	start := time.Now()
	done := false
	tm := time.AfterFunc(d, func() {
		p.mu.Lock()
		done = true
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	p.mu.Lock()
	for !done && !p.paused && !p.terminated && m.throttle.epoch.Load() == epoch {
		p.cond.Wait()
	}
	whole := done
	p.mu.Unlock()
	tm.Stop()
	return time.Since(start), whole
}

// SyncDirtyRange is SyncDirty for part of one RAM block, for a migration
// that refreshes the dirty state of each chunk right before sending it (a
// page written since the last full sync but before it is sent goes out
// once, not twice). It ORs into dst the guest's writes to pages [first*64,
// (first+words)*64) of block and re-arms tracking of exactly those; dst
// covers the same range. Host-side writes are left for SyncDirty. Without
// manual dirty-log protection it does nothing (reading KVM's log would
// clear the whole slot's).
func (m *Machine) SyncDirtyRange(block, first, words int, dst []uint64) (int, error) {
	m.dirty.mu.Lock()
	defer m.dirty.mu.Unlock()
	if !m.dirty.on || m.vm == nil || m.mem == nil {
		return 0, errors.New("dirty logging is off")
	}
	if !m.vm.ManualDirtyLogProtect() {
		return 0, nil
	}
	blocks := m.mem.Blocks()
	if block < 0 || block >= len(blocks) {
		return 0, fmt.Errorf("sync dirty range: no RAM block %d", block)
	}
	kb := m.dirty.scratch[block]
	if first < 0 || words <= 0 || first+words > len(kb) || len(dst) < words {
		return 0, fmt.Errorf("sync dirty range: words [%d, +%d) outside %d (dst %d)", first, words, len(kb), len(dst))
	}
	if err := m.vm.GetDirtyLog(uint32(block), kb); err != nil {
		return 0, err
	}
	part := kb[first : first+words]
	pages := blocks[block].Pages()
	n := 0
	for w, v := range part {
		if v != 0 {
			n += bits.OnesCount64(v &^ dst[w])
			dst[w] |= v
		}
	}
	if n == 0 && !anySet(part) {
		return 0, nil
	}
	num := min(uint64(words)*64, pages-uint64(first)*64)
	if err := m.vm.ClearDirtyLog(uint32(block), uint64(first)*64, uint32(num), part); err != nil {
		return n, err
	}
	return n, nil
}

func anySet(ws []uint64) bool {
	for _, w := range ws {
		if w != 0 {
			return true
		}
	}
	return false
}
