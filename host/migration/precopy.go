package migration

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// Live migration, precopy: RAM moves while the guest runs, in passes; each
// pass sends the pages dirtied (by the guest, per KVM's dirty log, or by the
// host on a device's behalf) since the previous one. When the pages left
// would take no longer than downtime-limit at the measured bandwidth, the
// guest stops and the rest goes: the last dirty pages, vCPU and device
// state. The source then waits for the destination's verdict (the return
// path of the pre-flight framing, preflight.go) and keeps the guest until it
// has it.
//
// Beyond QEMU's algorithm:
//   - Before each 16 MiB chunk is sent its dirty bits are refreshed and
//     re-armed (manual-protect KVM), so a page written after the pass began
//     but before it was sent goes out once, not twice.
//   - A fresh destination (it says so in its pre-flight answer) gets no
//     record for pages never populated on the source (mincore) nor for zero
//     pages it never received; it faults in the pages the first pass will
//     send ahead of the stream.
//   - The downtime estimate uses the pass's own speed without the waits
//     max-bandwidth imposed, since the switchover is not rate limited; a
//     guest whose dirty set still shrinks keeps iterating towards a short
//     pause (readyToSwitch).
//   - Under max-bandwidth, the bytes QEMU would send unpaced inside the
//     pause (at most max-bandwidth × downtime-limit) go unpaced in one
//     last pass while the guest still runs; the pause carries only what
//     that pass left dirty.
//
// With the multifd capability (off by default, as in QEMU) the pages go over
// multifd-channels parallel connections and the main channel carries only
// the stream's structure, a flush per pass and the device state: format and
// ordering rules in multifd.go, measurements in docs/multifd.md.
// Transport code (channel.go) stays apart from this loop.

// chunkWords is how many bitmap words (64 pages each) one PART section
// covers: 16 MiB of RAM, so that cancel, stats and pacing react quickly.
const chunkWords = 64

// syncPeriod bounds the time between two dirty-log syncs while RAM is sent.
const syncPeriod = time.Second

// minSyncPeriod is the shortest time between two syncs that syncDeadline
// asks for.
const minSyncPeriod = 50 * time.Millisecond

// switchoverOverhead is the part of the downtime that does not depend on
// RAM: vCPU and device state, disk hand-over, the destination's load.
const switchoverOverhead = 5 * time.Millisecond

// precopy is one outgoing live migration.
type precopy struct {
	g      *Migrator
	m      *machine.Machine
	ctx    context.Context
	mode   Mode
	conn   net.Conn
	sw     *streamWriter
	w      *vmstate.Writer
	blocks []*guestmem.Block
	host   *hostState
	reg    *vmstate.Registry

	dirty [][]uint64 // pages still to send
	// curBlock and curWord are where the sweep over dirty goes on.
	curBlock, curWord int
	sel               [][]uint64 // scratch: the chunk being sent
	empty             [][]uint64 // all-zero bitmaps
	// sent marks pages the destination received; nil unless the
	// destination's RAM is fresh, in which case a zero page never sent
	// needs no record at all (the destination's page is zero already).
	sent [][]uint64

	preflight bool
	// multifd is the number of parallel RAM channels (0: off); mf sends
	// on them once the destination agreed.
	multifd int
	mf      *multifdOut
	// lim paces the RAM pages (the main channel's, or the multifd
	// channels' when those carry the pages).
	lim *rateLimiter
	// noVMDesc: the destination said it loads a stream without the
	// trailing vmdesc (its pre-flight compared every schema already), and
	// the connection can say where the stream ends (CloseWrite).
	noVMDesc   bool
	stopCancel func() bool // detaches cancel from the connection
	// freshChunks refreshes each chunk's dirty bits just before sending it
	// (off for the final pass: the guest is stopped).
	freshChunks bool

	// convergence
	lastSync      time.Time
	lastSyncBytes int64
	highCount     int
	throttle      int
	bandwidth     float64 // bytes/s while sending, for the downtime estimate
	dirtyRate     float64 // bytes/s the guest dirtied between the last two syncs
	limited       bool    // max-bandwidth, not the link, bounded the last pass
}

// startLive begins a live migration to a socket channel in the background.
func (g *Migrator) startLive(ch Channel, mode Mode) error {
	if mode != ModeNormal {
		return fmt.Errorf("mode %s over %s is not supported yet", mode, ch.Transport)
	}
	if caps := g.capabilities(); caps.Multifd {
		if ch.Transport == "fd" {
			return fmt.Errorf("multifd needs a unix or tcp channel: %s cannot be connected to again for the parallel channels (turn the multifd capability off)", ch)
		}
		if !caps.Preflight {
			return errors.New("multifd needs the x-preflight capability: the channels are agreed in the pre-flight exchange")
		}
	}
	ctx, err := g.begin(mode)
	if err != nil {
		return err
	}
	go g.runLive(ctx, ch, mode)
	return nil
}

// runLive runs the whole migration and leaves the source either completed
// (postmigrate) or exactly as it was (disks owned, run state kept).
func (g *Migrator) runLive(ctx context.Context, ch Channel, mode Mode) {
	caps := g.capabilities()
	p := &precopy{g: g, m: g.cfg.Machine, ctx: ctx, mode: mode, blocks: g.cfg.Machine.Memory().Blocks(),
		preflight: caps.Preflight}
	if caps.Multifd {
		p.multifd = int(g.Parameters().MultifdChannels)
	}
	stopped, prev, gaveUp, err := p.run(ch)
	if p.conn != nil {
		p.conn.Close()
	}
	if p.mf != nil {
		p.mf.close()
	}
	p.m.SetThrottle(0)
	if derr := p.m.StopDirtyLog(); derr != nil {
		g.log.Warn("dirty logging off", "error", derr)
	}
	g.mu.Lock()
	g.throttlePct = 0
	g.mu.Unlock()
	if err == nil {
		if rerr := p.m.EnterRunState(machine.StatePostMigrate); rerr != nil {
			g.log.Warn("postmigrate", "error", rerr)
		}
		g.finish(StatusCompleted)
		g.notify(abi.MigrationDone, mode)
		return
	}
	g.recoverSource(ctx, err, "migration", mode, stopped, prev, gaveUp)
}

// run does the work; it reports whether it stopped the guest, the run state
// to go back to, the disks it gave up, and the error.
func (p *precopy) run(ch Channel) (stopped bool, prev machine.RunState, gaveUp []ownedDisk, err error) {
	g, m := p.g, p.m
	setupStart := time.Now()
	conn, err := dial(p.ctx, ch)
	if err != nil {
		return false, "", nil, err
	}
	p.conn = conn
	p.stopCancel = context.AfterFunc(p.ctx, func() { conn.Close() })
	defer func() { p.stopCancel() }() // with the multifd channels' part, once they are open

	p.host, err = newHostState(len(m.VCPUs()))
	if err != nil {
		return false, "", nil, err
	}
	if p.reg, err = buildRegistry(m, p.host); err != nil {
		return false, "", nil, err
	}
	p.lim = &rateLimiter{rate: func() int64 { return g.Parameters().MaxBandwidth }}
	mainLim := p.lim
	if p.multifd > 0 {
		// The pages go on the multifd channels, which share p.lim; the
		// main channel carries a few bytes per pass and the devices.
		mainLim = &rateLimiter{rate: func() int64 { return 0 }}
	}
	p.sw = &streamWriter{ctx: p.ctx, conn: conn, lim: mainLim, timeout: g.ioTimeout}
	// Dirty logging starts before the residency snapshot, so a page first
	// touched after it is caught by the log.
	if err := m.StartDirtyLog(); err != nil {
		return false, "", nil, err
	}
	p.dirty = make([][]uint64, len(p.blocks))
	p.sel = make([][]uint64, len(p.blocks))
	p.empty = make([][]uint64, len(p.blocks))
	zeros := 0
	for i, b := range p.blocks {
		words := int((b.Pages() + 63) / 64)
		p.dirty[i] = make([]uint64, words)
		p.sel[i] = make([]uint64, words)
		p.empty[i] = make([]uint64, words)
		residentPages(b, p.dirty[i])
		if p.preflight {
			// For a fresh destination only pages with data need to go
			// (a page that gets data later is in the dirty log), and
			// only those are worth faulting in ahead of the stream.
			zeros += dropZeroPages(b, p.dirty[i])
		}
	}
	fresh := false
	if p.preflight {
		if fresh, err = p.checkDestination(ch); err != nil {
			return false, "", nil, err
		}
	}
	if p.w, err = vmstate.NewWriter(p.sw, g.cfg.MachineType); err != nil {
		return false, "", nil, err
	}
	// Encoding the vmdesc and the destination's parsing and checking it
	// took about 0.5 ms of the pause; the pre-flight checked the same.
	p.w.SuppressVMDesc = p.noVMDesc
	if err := p.w.RAMStart(p.blocks); err != nil {
		return false, "", nil, err
	}
	var total uint64
	pending := 0
	if fresh {
		p.sent = make([][]uint64, len(p.blocks))
	}
	for i, b := range p.blocks {
		if fresh {
			// Pages never populated are zero here and there.
			p.sent[i] = make([]uint64, len(p.dirty[i]))
		} else {
			allPages(b, p.dirty[i])
		}
		for _, w := range p.dirty[i] {
			pending += bits.OnesCount64(w)
		}
		total += b.Size()
	}
	g.mu.Lock()
	g.setupTime = time.Since(setupStart)
	g.ram.Total = int64(total)
	g.ram.Remaining = int64(pending) * vmstate.PageSize
	g.ram.DirtySyncCount = 1
	if fresh {
		g.ram.Duplicate = int64(zeros) // zero pages the destination has already
	}
	g.mu.Unlock()
	g.setStatus(StatusActive)
	g.emitPass(1)
	g.log.Debug("setup", "time", time.Since(setupStart), "fresh", fresh, "pages", pending)

	// Passes until the rest fits in the downtime limit. The dirty log is
	// synced at the end of each sweep over RAM and at least every
	// syncPeriod within one, so that the switchover and auto-converge
	// react while a long first pass (a big guest, a narrow link) runs.
	p.freshChunks = true
	p.lastSync = time.Now()
	prevRemaining := int64(pending) * vmstate.PageSize
	burst := false // the pass being sent goes at full speed (see below)
passes:
	for {
		passStart, bytes0, slept0 := time.Now(), p.sentBytes(), p.slept()
		// prevRemaining is the rest now: nothing was sent since it was counted.
		if _, err := p.sendDirty(p.syncDeadline(passStart, burst, prevRemaining)); err != nil {
			return false, "", nil, err
		}
		if err := p.multifdSync(false); err != nil {
			return false, "", nil, err
		}
		// The switchover is not rate limited: its speed is the period's
		// bytes over the period's time less the limiter's waits (sender
		// CPU and the receiver's backpressure included).
		if b, d := p.sentBytes()-bytes0, time.Since(passStart)-(p.slept()-slept0); d > time.Millisecond && b > 1<<20 {
			p.bandwidth = float64(b) / d.Seconds()
		}
		g.mu.Lock()
		if el := time.Since(passStart).Seconds(); el > 0 {
			g.ram.Mbps = float64(p.sentBytes()-bytes0) * 8 / 1e6 / el
		}
		g.mu.Unlock()
		sendTime := time.Since(passStart)
		n, err := m.SyncDirty(p.dirty)
		if err != nil {
			return false, "", nil, err
		}
		remaining := p.pendingBytes()
		expected := p.expectedDowntime(remaining)
		g.log.Debug("sync", "sent", p.sentBytes()-bytes0, "send", sendTime, "sync", time.Since(passStart)-sendTime, "new_dirty", n, "remaining", remaining, "expected_downtime", expected, "bandwidth_MiBps", int(p.bandwidth/(1<<20)))
		g.mu.Lock()
		g.ram.DirtySyncCount++
		g.ram.Remaining = remaining
		g.expectedDowntime = expected
		if el := time.Since(p.lastSync).Seconds(); el > 0 {
			g.ram.DirtyPagesRate = int64(float64(n) / el)
			p.dirtyRate = float64(n) * vmstate.PageSize / el
		}
		pass := g.ram.DirtySyncCount
		limit := time.Duration(g.params.DowntimeLimit) * time.Millisecond
		maxBandwidth := g.params.MaxBandwidth
		autoConverge := g.caps.AutoConverge
		g.mu.Unlock()
		g.emitPass(pass)
		// max-bandwidth, not the link, bounds the passes.
		limited := maxBandwidth > 0 && p.bandwidth > 1.1*float64(maxBandwidth)
		p.limited = limited
		switch {
		case burst:
			// The pass just sent went at full speed: stop the guest
			// unless it left more than the limit allows.
			if expected <= limit-limit/8 {
				break passes
			}
			burst = false
			p.limiterOff(false)
		case limited:
			// Paced by max-bandwidth. QEMU switches over once the rest
			// would go within downtime-limit at the paced rate, and sends
			// it at full speed in the pause: at most max-bandwidth ×
			// downtime-limit bytes unpaced. The same bytes go here, at
			// full speed too, but in one pass while the guest still runs,
			// and only what that pass leaves dirty waits for the pause.
			if float64(remaining) <= float64(maxBandwidth)*limit.Seconds() && expected <= limit-limit/8 {
				g.log.Debug("full-speed pass", "remaining", remaining)
				burst = true
				p.limiterOff(true)
			}
		default:
			if p.readyToSwitch(expected, limit, remaining, prevRemaining) {
				break passes
			}
		}
		prevRemaining = remaining
		if autoConverge {
			p.autoConverge(int64(n) * vmstate.PageSize)
		}
		p.lastSync, p.lastSyncBytes = time.Now(), p.sentBytes()
	}
	return p.switchover()
}

// syncDeadline is when the pass starting at start, with remaining bytes
// to send, syncs the dirty log at the latest: after syncPeriod, or sooner
// when max-bandwidth paces the pages and the rest is expected to fall to what the switchover may send
// unpaced (max-bandwidth × downtime-limit) before then, counting what the
// guest dirties meanwhile at its last measured rate. QEMU looks at the
// rest after every 100 ms window of its rate limit; deciding only at a
// sync every second made the switchover here up to a second late.
func (p *precopy) syncDeadline(start time.Time, burst bool, remaining int64) time.Time {
	deadline := start.Add(syncPeriod)
	if !p.limited || burst {
		return deadline
	}
	prm := p.g.Parameters()
	maxBW := float64(prm.MaxBandwidth)
	threshold := maxBW * (time.Duration(prm.DowntimeLimit) * time.Millisecond).Seconds()
	shrink := maxBW - p.dirtyRate // how fast the rest shrinks, bytes/s
	if float64(remaining) <= threshold || shrink <= 0 {
		return deadline
	}
	t := time.Duration((float64(remaining) - threshold) / shrink * float64(time.Second))
	return start.Add(min(max(t, minSyncPeriod), syncPeriod))
}

// limiterOff stops pacing the pages to max-bandwidth (true) or paces them
// again (false).
func (p *precopy) limiterOff(off bool) {
	if p.mf != nil {
		p.mf.setLimitOff(off)
		return
	}
	p.sw.lim.off = off
}

// sentBytes counts the bytes sent on every channel.
func (p *precopy) sentBytes() int64 {
	if p.mf != nil {
		return p.sw.n + p.mf.bytes.Load()
	}
	return p.sw.n
}

// slept is the time the RAM pages waited for max-bandwidth.
func (p *precopy) slept() time.Duration {
	if p.mf != nil {
		return p.mf.slept()
	}
	return p.sw.lim.slept
}

// multifdSync ends a pass on the multifd channels: every page queued went
// out, a SYNC on every channel, then the flush on the main channel (in the
// RAM END when final). Without multifd it does nothing.
func (p *precopy) multifdSync(final bool) error {
	if p.mf == nil {
		return nil
	}
	if err := p.mf.sync(final); err != nil {
		return err
	}
	if err := p.w.RAMFlush(final); err != nil {
		return err
	}
	return p.w.Flush()
}

// readyToSwitch decides the switchover. The guest stops once the expected
// downtime fits the limit (with a reserve) and another pass would not help much (the dirty
// set shrank by less than a quarter), or once it is small outright (a
// sixteenth of the limit): a guest that converges keeps iterating towards a
// short pause, one that does not stops as soon as the limit allows.
func (p *precopy) readyToSwitch(expected, limit time.Duration, remaining, prev int64) bool {
	// An eighth of the limit is kept in reserve for the estimate's error
	// (the bandwidth of the last pass, a fixed overhead guessed).
	if expected > limit-limit/8 {
		return false
	}
	converging := remaining*4 < prev*3
	return !converging || expected <= max(limit/16, 2*switchoverOverhead)
}

// expectedDowntime estimates the pause if the guest stopped now.
func (p *precopy) expectedDowntime(remaining int64) time.Duration {
	bw := p.bandwidth
	if bw <= 0 {
		bw = 1 << 30 // no measurement yet (nothing was sent)
	}
	return switchoverOverhead + time.Duration(float64(remaining)/bw*float64(time.Second))
}

// autoConverge throttles the vCPUs when the guest dirties memory faster
// than half the link carries, twice in a row (QEMU's rule), raising the
// throttle by cpu-throttle-increment each time after cpu-throttle-initial.
func (p *precopy) autoConverge(dirtyBytes int64) {
	sent := p.sentBytes() - p.lastSyncBytes
	if sent <= 0 || dirtyBytes*2 <= sent {
		p.highCount = 0
		return
	}
	p.highCount++
	if p.highCount < 2 {
		return
	}
	p.highCount = 0
	prm := p.g.Parameters()
	if p.throttle == 0 {
		p.throttle = int(prm.CPUThrottleInit)
	} else {
		p.throttle = min(p.throttle+int(prm.CPUThrottleInc), int(prm.MaxCPUThrottle))
	}
	p.m.SetThrottle(p.throttle)
	p.g.mu.Lock()
	p.g.throttlePct = int64(p.throttle)
	p.g.mu.Unlock()
	p.g.log.Debug("auto-converge", "throttle", p.throttle)
}

// sendDirty sends the pages in p.dirty a chunk at a time, clearing them,
// from the cursor on: until the end of RAM (then the cursor goes back to
// the start and it reports true) or, with a non-zero deadline, until the
// deadline passes.
func (p *precopy) sendDirty(deadline time.Time) (bool, error) {
	list := make([][]uint64, len(p.blocks))
	for {
		if p.curBlock >= len(p.blocks) {
			p.curBlock, p.curWord = 0, 0
			return true, p.w.Flush()
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return false, p.w.Flush()
		}
		i := p.curBlock
		bm, sel := p.dirty[i], p.sel[i]
		if p.curWord >= len(bm) {
			p.curBlock, p.curWord = i+1, 0
			continue
		}
		w := p.curWord
		end := min(w+chunkWords, len(bm))
		p.curWord = end
		if p.freshChunks {
			// Writes since the last sync, to pages not sent yet, go out
			// with this chunk instead of again after the next sync.
			n, err := p.m.SyncDirtyRange(i, w, end-w, bm[w:end])
			if err != nil {
				return false, err
			}
			p.g.mu.Lock()
			p.g.ram.Remaining += int64(n) * vmstate.PageSize
			p.g.mu.Unlock()
		}
		pending := 0
		for j := w; j < end; j++ {
			pending += bits.OnesCount64(bm[j])
		}
		if pending == 0 {
			continue
		}
		copy(list, p.empty)
		list[i] = sel
		copy(sel[w:end], bm[w:end])
		clear(bm[w:end])
		skipped := 0
		if p.sent != nil {
			skipped = p.dropFreshZeros(i, sel[w:end], p.sent[i][w:end], w)
		}
		if skipped < pending && p.mf != nil {
			err := p.mf.send(i, w, sel[w:end])
			clear(sel[w:end])
			if err != nil {
				return false, err
			}
			// The channels count the pages they send.
			p.account(vmstate.RAMStats{ZeroPages: uint64(skipped)}, int64(pending))
			continue
		}
		if skipped < pending {
			st, err := p.w.RAMPart(list)
			if err != nil {
				clear(sel[w:end])
				return false, err
			}
			st.ZeroPages += uint64(skipped)
			p.account(st, int64(pending))
		} else {
			p.account(vmstate.RAMStats{ZeroPages: uint64(skipped)}, int64(pending))
		}
		clear(sel[w:end])
	}
}

// pendingBytes counts the bytes of the pages still to send.
func (p *precopy) pendingBytes() int64 {
	n := 0
	for _, bm := range p.dirty {
		for _, w := range bm {
			n += bits.OnesCount64(w)
		}
	}
	return int64(n) * vmstate.PageSize
}

// dropFreshZeros removes from sel the zero pages the destination never
// received (they are zero there already), marks the rest as sent, and
// returns how many it removed. sel and sent cover words from word first.
func (p *precopy) dropFreshZeros(block int, sel, sent []uint64, first int) int {
	mem := p.blocks[block].Mem
	n := 0
	for j, word := range sel {
		todo := word &^ sent[j]
		for todo != 0 {
			bit := bits.TrailingZeros64(todo)
			todo &= todo - 1
			off := ((first+j)*64 + bit) * vmstate.PageSize
			if isZeroPage(mem[off : off+vmstate.PageSize]) {
				sel[j] &^= 1 << bit
				n++
			}
		}
		sent[j] |= sel[j]
	}
	return n
}

// dropZeroPages clears the zero pages of b from bm and counts them.
func dropZeroPages(b *guestmem.Block, bm []uint64) int {
	n := 0
	for w, word := range bm {
		for word != 0 {
			bit := bits.TrailingZeros64(word)
			word &= word - 1
			off := (w*64 + bit) * vmstate.PageSize
			if isZeroPage(b.Mem[off : off+vmstate.PageSize]) {
				bm[w] &^= 1 << bit
				n++
			}
		}
	}
	return n
}

// isZeroPage reports whether a page reads as zeroes, 64 bytes at a time.
func isZeroPage(b []byte) bool {
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
	for i := 0; i < len(w); i += 8 {
		if w[i]|w[i+1]|w[i+2]|w[i+3]|w[i+4]|w[i+5]|w[i+6]|w[i+7] != 0 {
			return false
		}
	}
	return true
}

func (p *precopy) account(st vmstate.RAMStats, pages int64) {
	g := p.g
	g.mu.Lock()
	g.ram.Normal += int64(st.Pages)
	g.ram.NormalBytes += int64(st.Pages) * vmstate.PageSize
	g.ram.Duplicate += int64(st.ZeroPages)
	g.ram.Transferred = p.sentBytes()
	g.ram.Remaining = max(0, g.ram.Remaining-pages*vmstate.PageSize)
	if el := time.Since(g.started).Seconds(); el > 0 {
		g.ram.PagesPerSecond = int64(float64(g.ram.Normal+g.ram.Duplicate) / el)
	}
	g.mu.Unlock()
}

// switchover stops the guest and sends the rest.
func (p *precopy) switchover() (bool, machine.RunState, []ownedDisk, error) {
	g, m := p.g, p.m
	if err := p.ctx.Err(); err != nil {
		return false, "", nil, errCancelled
	}
	p.freshChunks = false
	saveAhead(g, p.reg)
	stopAt := time.Now()
	prev, err := m.StopFor(machine.StateFinishMigrate)
	if err != nil {
		return false, "", nil, fmt.Errorf("stop the guest: %w", err)
	}
	p.limiterOff(true)
	if g.capabilities().PauseBeforeSwitchover {
		g.setStatus(StatusPreSwitchover)
		if err := g.waitContinue(p.ctx); err != nil {
			return true, prev, nil, err
		}
	}
	if p.ctx.Err() != nil {
		return true, prev, nil, errCancelled
	}
	g.setStatus(StatusDevice)
	var tm phaseTimer
	tm.start()
	// The vCPU state: read alongside the disks and the last RAM pass when
	// that only reads (the vCPUs settled as they parked), else first, as
	// finishing an exit may run a device that writes RAM the final dirty
	// sync must see.
	var cpu *machine.CPUState
	var cpuErr error
	cpuDone := make(chan struct{})
	if m.StateReadable() {
		go func() {
			defer close(cpuDone)
			cpu, cpuErr = m.SaveCPUState()
		}()
		defer func() { <-cpuDone }() // not past a failure: the guest may run again
	} else {
		cpu, cpuErr = m.SaveCPUState()
		close(cpuDone)
		if cpuErr != nil {
			return true, prev, nil, cpuErr
		}
		tm.mark("cpu")
	}
	gaveUp, err := inactivateDisks(m)
	tm.mark("disks")
	if err != nil {
		return true, prev, gaveUp, err
	}
	if _, err := m.SyncDirty(p.dirty); err != nil {
		return true, prev, gaveUp, err
	}
	tm.mark("sync")
	final := p.pendingBytes()
	g.mu.Lock()
	g.ram.DirtySyncCount++
	g.ram.Remaining = final
	g.mu.Unlock()
	p.curBlock, p.curWord = 0, 0
	if _, err := p.sendDirty(time.Time{}); err != nil {
		return true, prev, gaveUp, err
	}
	if p.mf != nil {
		if err := p.multifdSync(true); err != nil {
			return true, prev, gaveUp, err
		}
	} else if _, err := p.w.RAMEnd(p.empty); err != nil {
		return true, prev, gaveUp, err
	}
	tm.mark("ram")
	<-cpuDone
	if cpuErr != nil {
		return true, prev, gaveUp, cpuErr
	}
	cpu.RunState = prev
	if err := p.host.fill(cpu); err != nil {
		return true, prev, gaveUp, err
	}
	tm.mark("cpu")
	if err := p.w.Complete(p.reg); err != nil {
		return true, prev, gaveUp, err
	}
	if p.noVMDesc {
		// Without a vmdesc the stream ends at EOF: say so.
		if err := p.conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			return true, prev, gaveUp, fmt.Errorf("end the stream: %w", err)
		}
	}
	tm.mark("devices")
	if p.preflight {
		// The stream is out: from here a cancel cannot take it back, so
		// the source waits for the destination's word either way (a
		// cancel that closed the socket now could leave both sides
		// believing they own the guest).
		p.stopCancel()
		p.conn.SetReadDeadline(time.Now().Add(max(g.ioTimeout(), 30*time.Second)))
		v, err := readVerdict(bufio.NewReader(p.conn))
		if err != nil {
			return true, prev, gaveUp, fmt.Errorf("no completion from the destination: %w", err)
		}
		if !v.OK {
			return true, prev, gaveUp, fmt.Errorf("the destination failed to load: %s", v.Error)
		}
		tm.mark("destination")
	}
	g.log.Info("switchover", "bytes", final, "stop", tm.t0.Sub(stopAt), "phases", tm.String())
	g.mu.Lock()
	g.downtime = time.Since(stopAt)
	g.ram.Transferred = p.sentBytes()
	g.ram.Remaining = 0
	if el := time.Since(g.started).Seconds(); el > 0 {
		g.ram.Mbps = float64(p.sentBytes()) * 8 / 1e6 / el
	}
	g.mu.Unlock()
	return true, prev, gaveUp, nil
}

// checkDestination sends the description and waits for the pre-flight
// verdict; it reports whether the destination's RAM is fresh. With multifd
// it then opens the parallel channels to ch.
func (p *precopy) checkDestination(ch Channel) (bool, error) {
	desc := describeMachine(p.g.cfg.MachineType, p.blocks, p.reg)
	desc.Populated = pageRuns(p.dirty)
	var id [16]byte
	if p.multifd > 0 {
		var err error
		if id, err = newMultifdID(); err != nil {
			return false, err
		}
		desc.Multifd = &multifdDesc{Channels: p.multifd, ID: hex.EncodeToString(id[:])}
	}
	if d := p.g.ioTimeout(); d > 0 {
		p.conn.SetWriteDeadline(time.Now().Add(d))
		p.conn.SetReadDeadline(time.Now().Add(d))
	}
	if err := writeMsg(p.conn, preambleMagic, desc); err != nil {
		return false, fmt.Errorf("pre-flight: send the description: %w", err)
	}
	v, err := readAnswer(p.conn)
	p.conn.SetReadDeadline(time.Time{})
	if err != nil {
		if p.ctx.Err() != nil {
			return false, errCancelled
		}
		return false, fmt.Errorf("pre-flight: no answer from the destination: %w", err)
	}
	if !v.OK {
		return false, fmt.Errorf("the destination refused the migration: %s", v.Error)
	}
	_, canClose := p.conn.(interface{ CloseWrite() error })
	p.noVMDesc = v.VMDescOptional && canClose
	if p.multifd > 0 {
		if !v.Multifd {
			return false, errors.New("the destination did not agree to multifd (this wasmvmm version does not support it): turn the multifd capability off on the source")
		}
		mf, err := openMultifd(p.ctx, p.g, ch, id, p.multifd, p.blocks, p.lim)
		if err != nil {
			if p.ctx.Err() != nil {
				return false, errCancelled
			}
			return false, err
		}
		p.mf = mf
		// Cancel also closes the channels (a write blocked on a
		// stalled destination returns).
		stopMain, stopMF := p.stopCancel, context.AfterFunc(p.ctx, mf.closeConns)
		p.stopCancel = func() bool { a, b := stopMain(), stopMF(); return a && b }
	}
	return v.FreshRAM, nil
}

// allPages sets every page of b in bm.
func allPages(b *guestmem.Block, bm []uint64) {
	for i := range bm {
		bm[i] = ^uint64(0)
	}
	if r := b.Pages() % 64; r != 0 {
		bm[len(bm)-1] = 1<<r - 1
	}
}

// residentPages sets in bm the pages of b that were ever populated. Pages
// never touched read as zero on both sides (used only when the destination
// said its RAM is fresh), so the first pass skips them. Without mincore, or with swap
// configured (a swapped-out page is not resident but not zero), every page
// is selected.
func residentPages(b *guestmem.Block, bm []uint64) {
	all := func() { allPages(b, bm) }
	if swapConfigured() {
		all()
		return
	}
	vec := make([]byte, b.Pages())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b.Mem[0])), uintptr(len(b.Mem)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		all()
		return
	}
	// Eight pages at a time: a word of vec with no resident bit is skipped.
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&vec[0])), len(vec)/8)
	for i, w := range words {
		if w&0x0101010101010101 == 0 {
			continue
		}
		for j := 0; j < 8; j++ {
			if vec[i*8+j]&1 != 0 {
				pg := i*8 + j
				bm[pg/64] |= 1 << (pg % 64)
			}
		}
	}
	for pg := len(words) * 8; pg < len(vec); pg++ {
		if vec[pg]&1 != 0 {
			bm[pg/64] |= 1 << (pg % 64)
		}
	}
}

// swapConfigured reports whether the host has swap space.
func swapConfigured() bool {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return true
	}
	return strings.Count(strings.TrimSpace(string(b)), "\n") > 0
}

// phaseTimer records how long each phase of the switchover took.
type phaseTimer struct {
	t0, last time.Time
	phases   []string
}

func (t *phaseTimer) start() { t.t0 = time.Now(); t.last = t.t0 }

func (t *phaseTimer) mark(name string) {
	now := time.Now()
	t.phases = append(t.phases, fmt.Sprintf("%s=%v", name, now.Sub(t.last).Round(10*time.Microsecond)))
	t.last = now
}

func (t *phaseTimer) String() string { return strings.Join(t.phases, " ") }
