package migration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// ctxWriter fails writes once ctx is done, so a cancelled save stops.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, errCancelled
	}
	return c.w.Write(p)
}

// StartChannels begins an outgoing migration over the given channels (one
// main channel; a cpr channel for mode cpr-transfer).
func (g *Migrator) StartChannels(chs []Channel) error {
	if g.HandedOver() {
		return errHandedOver
	}
	if g.capabilities().MappedRAM {
		for _, ch := range chs {
			if ch.Type == "main" && ch.Transport != "file" {
				return errNotSeekable
			}
		}
	}
	if g.Parameters().Mode == ModeCPRTransfer {
		return g.startCPR(chs) // cpr.go
	}
	var main *Channel
	for i := range chs {
		switch chs[i].Type {
		case "main":
			if main != nil {
				return errors.New("more than one main channel")
			}
			main = &chs[i]
		case "cpr":
			if g.Parameters().Mode != ModeCPRTransfer {
				return errors.New("a cpr channel is only used in mode cpr-transfer")
			}
		}
	}
	if main == nil {
		return errors.New("no main channel")
	}
	return g.Start(*main)
}

// Start begins an outgoing migration to ch in the background. Errors found
// before the guest is touched (blockers, a busy migrator, a bad channel) are
// returned; later ones land in query-migrate and the MIGRATION event.
func (g *Migrator) Start(ch Channel) error {
	if g.HandedOver() {
		return errHandedOver
	}
	if g.capabilities().MappedRAM && ch.Transport != "file" {
		return errNotSeekable
	}
	mode := g.Parameters().Mode
	if mode == ModeCPRTransfer {
		return g.startCPR([]Channel{ch}) // cpr.go
	}
	if reasons := g.BlockedReasons(mode); len(reasons) > 0 {
		return fmt.Errorf("disallowing migration: %s", strings.Join(reasons, "; "))
	}
	if socketChannel(ch) {
		return g.startLive(ch, mode)
	}
	if ch.Transport != "file" {
		return fmt.Errorf("migration to %s is not supported", ch)
	}
	if mode != ModeNormal {
		return fmt.Errorf("mode %s cannot migrate to a file", mode)
	}
	ctx, err := g.begin(mode)
	if err != nil {
		return err
	}
	go g.saveToFile(ctx, ch, mode)
	return nil
}

// saveToFile writes a snapshot: stop the guest, write RAM and devices, leave
// the source in postmigrate. On failure or cancel the source goes back to
// the run state it had.
func (g *Migrator) saveToFile(ctx context.Context, ch Channel, mode Mode) {
	m := g.cfg.Machine
	setupStart := time.Now()
	prev, err := m.StopFor(machine.StateFinishMigrate)
	if err != nil {
		g.abort(err, prev, mode)
		return
	}
	g.mu.Lock()
	g.setupTime = time.Since(setupStart)
	g.mu.Unlock()
	g.setStatus(StatusActive)
	stopped := time.Now()
	err = g.writeFile(ctx, ch, prev)
	if err != nil {
		if ch.Offset == 0 {
			os.Remove(ch.Path) // no half-written snapshot is left to be mistaken for a good one
		}
		if errors.Is(err, errCancelled) || ctx.Err() != nil {
			g.abortCancelled(prev, mode)
		} else {
			g.abort(err, prev, mode)
		}
		return
	}
	g.mu.Lock()
	g.downtime = time.Since(stopped)
	g.mu.Unlock()
	if err := m.EnterRunState(machine.StatePostMigrate); err != nil {
		g.log.Warn("postmigrate", "error", err)
	}
	g.finish(StatusCompleted)
	g.notify(abi.MigrationDone, mode)
}

func (g *Migrator) writeFile(ctx context.Context, ch Channel, prev machine.RunState) error {
	m := g.cfg.Machine
	st, err := m.SaveCPUState()
	if err != nil {
		return err
	}
	st.RunState = prev
	host, err := newHostState(len(st.VCPUs))
	if err != nil {
		return err
	}
	if err := host.fill(st); err != nil {
		return err
	}
	reg, err := buildRegistry(m, host)
	if err != nil {
		return err
	}
	if g.capabilities().MappedRAM {
		return g.writeMappedFile(ctx, ch, reg)
	}
	f, err := openSnapshotFile(ch)
	if err != nil {
		return err
	}
	defer f.Close()
	counter := &countingWriter{w: ctxWriter{ctx, f}}
	bw := bufio.NewWriterSize(counter, 1<<20)
	blocks := m.Memory().Blocks()
	w, err := vmstate.NewWriter(bw, g.cfg.MachineType)
	if err != nil {
		return err
	}
	if err := w.RAMStart(blocks); err != nil {
		return err
	}
	stats, err := w.RAMEnd(nil)
	if err != nil {
		return err
	}
	return g.endSnapshot(f, w, reg, stats, bw.Flush, func() int64 { return counter.n })
}

// endSnapshot finishes a snapshot file once its RAM is written: the
// figures for query-migrate, the device state, flush (what the writer
// buffers), fsync, and the bytes written (written, read after the flush).
func (g *Migrator) endSnapshot(f *os.File, w *vmstate.Writer, reg *vmstate.Registry, stats vmstate.RAMStats, flush func() error, written func() int64) error {
	g.snapshotRAMWritten(stats)
	g.setStatus(StatusDevice)
	if err := w.Complete(reg); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	g.snapshotWritten(written())
	return nil
}

// snapshotRAMWritten records a snapshot's RAM figures for query-migrate:
// one pass over every page.
func (g *Migrator) snapshotRAMWritten(stats vmstate.RAMStats) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ram.Normal = int64(stats.Pages)
	g.ram.NormalBytes = int64(stats.Pages) * vmstate.PageSize
	g.ram.Duplicate = int64(stats.ZeroPages)
	g.ram.Total = int64(g.cfg.Machine.Memory().Size())
	g.ram.DirtySyncCount = 1
}

// snapshotWritten records the bytes a snapshot wrote and their rate.
func (g *Migrator) snapshotWritten(n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ram.Transferred = n
	if el := time.Since(g.started).Seconds(); el > 0 {
		g.ram.Mbps = float64(n) * 8 / 1e6 / el
	}
}

// countingWriter counts bytes written.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// abort fails the migration and gives the source back its run state.
func (g *Migrator) abort(err error, prev machine.RunState, mode Mode) {
	g.log.Error("migration failed", "error", err)
	if rerr := g.cfg.Machine.EnterRunState(prev); rerr != nil {
		g.log.Error("restoring the run state after a failed migration", "state", prev, "error", rerr)
	}
	g.fail(err)
	g.finishDone()
	g.notify(abi.MigrationFailed, mode)
}

func (g *Migrator) abortCancelled(prev machine.RunState, mode Mode) {
	if rerr := g.cfg.Machine.EnterRunState(prev); rerr != nil {
		g.log.Error("restoring the run state after a cancelled migration", "state", prev, "error", rerr)
	}
	g.finish(StatusCancelled)
	g.notify(abi.MigrationFailed, mode)
}

func (g *Migrator) finishDone() {
	g.mu.Lock()
	done := g.done
	g.done = nil
	g.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// Incoming loads a migration stream from ch (a file, or a socket channel it
// listens on; see ListenIncoming to listen without waiting) into the
// machine, which must be in the inmigrate state with its vCPUs parked. On success the machine enters
// the run state the source had (running only if it was live and autostart is
// on); on failure it stays in inmigrate and nothing of the devices' state was
// applied.
func (g *Migrator) Incoming(ctx context.Context, ch Channel) error {
	m := g.cfg.Machine
	if st, _ := m.State(); st != machine.StateInMigrate {
		return fmt.Errorf("incoming migration: the machine is %s, not inmigrate", st)
	}
	if g.capabilities().MappedRAM && ch.Transport != "file" {
		return errNotSeekable
	}
	if socketChannel(ch) {
		res, err := g.ListenIncoming(ctx, ch)
		if err != nil {
			return err
		}
		return <-res
	}
	if ch.Transport != "file" {
		return fmt.Errorf("incoming migration from %s is not supported", ch)
	}
	g.mu.Lock()
	if g.status.Running() {
		g.mu.Unlock()
		return errors.New("an incoming migration is already running")
	}
	g.started, g.finished, g.errDesc = time.Now(), time.Time{}, ""
	g.mu.Unlock()
	g.setStatus(StatusActive)
	err := g.loadFile(ch)
	if err != nil {
		g.fail(fmt.Errorf("load %s: %w", ch, err))
		return err
	}
	g.finish(StatusCompleted)
	return nil
}

func (g *Migrator) loadFile(ch Channel) error {
	m := g.cfg.Machine
	f, err := os.Open(ch.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(ch.Offset, io.SeekStart); err != nil {
		return err
	}
	host, reg, err := machineRegistry(m)
	if err != nil {
		return err
	}
	opt := vmstate.LoadOptions{Machine: g.cfg.MachineType, Blocks: m.Memory().Blocks(), Registry: reg}
	var (
		res    *vmstate.LoadResult
		mapped bool
	)
	if g.capabilities().MappedRAM {
		res, err = g.loadMappedRAM(f, ch.Offset, opt)
		mapped = true
	} else {
		res, mapped, err = loadMapped(f, ch.Offset, opt)
	}
	if !mapped {
		var r io.Reader = f
		if ch.Offset != 0 {
			r = bufio.NewReaderSize(f, 1<<20)
		}
		res, err = vmstate.Load(r, opt)
	}
	if err != nil {
		return err
	}
	st, err := host.state()
	if err != nil {
		return err
	}
	if err := m.RestoreCPUState(st); err != nil {
		return err
	}
	g.mu.Lock()
	g.ram.Transferred = res.Bytes
	g.ram.Normal = int64(res.Pages)
	g.ram.Duplicate = int64(res.ZeroPages)
	g.mu.Unlock()
	return g.enterLoadedState(st.RunState)
}

// enterLoadedState resumes the guest as the source had it: running stays
// running (if autostart), paused stays paused, suspended stays suspended.
func (g *Migrator) enterLoadedState(src machine.RunState) error {
	m := g.cfg.Machine
	switch src {
	case machine.StateRunning:
		if m.Autostart() {
			return m.EnterRunState(machine.StateRunning)
		}
		return m.EnterRunState(machine.StatePaused)
	case machine.StateSuspended:
		return m.EnterRunState(machine.StateSuspended)
	default:
		return m.EnterRunState(machine.StatePaused)
	}
}

// openSnapshotFile opens a file: channel's path for writing a snapshot,
// created with mode 0600, positioned at the channel's offset. Without an
// offset the file is truncated; with one, the bytes before it are kept.
func openSnapshotFile(ch Channel) (*os.File, error) {
	f, err := os.OpenFile(ch.Path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ch.Path, err)
	}
	if ch.Offset == 0 {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate %s: %w", ch.Path, err)
		}
	}
	if _, err := f.Seek(ch.Offset, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek %s: %w", ch.Path, err)
	}
	return f, nil
}
