package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// The incoming side of a live migration: listen, accept the source, answer
// its pre-flight description, load the stream (RAM pages are applied as they
// arrive, device state only once the whole stream checked out), restore the
// vCPUs, take the disks, tell the source, and resume as the source was.

// listenIncoming checks that the machine waits for an incoming migration
// and none runs, and listens on the socket channel ch; what names the kind
// of migration in errors.
func (g *Migrator) listenIncoming(ch Channel, what string) (listener, error) {
	if st, _ := g.cfg.Machine.State(); st != machine.StateInMigrate {
		return nil, fmt.Errorf("%s: the machine is %s, not inmigrate", what, st)
	}
	if !socketChannel(ch) {
		return nil, fmt.Errorf("%s: %s is not a socket channel", what, ch)
	}
	if g.Status().Running() {
		return nil, errors.New("an incoming migration is already running")
	}
	return listen(ch)
}

// ListenIncoming opens a socket channel for an incoming migration and loads
// the first connection in the background. Errors opening the channel are
// returned; the load's outcome arrives on the returned channel (and in
// query-migrate). The machine must be in inmigrate.
func (g *Migrator) ListenIncoming(ctx context.Context, ch Channel) (<-chan error, error) {
	if g.capabilities().MappedRAM {
		return nil, errNotSeekable
	}
	ln, err := g.listenIncoming(ch, "incoming migration")
	if err != nil {
		return nil, err
	}
	// Cancel (migrate_cancel, or the VMM shutting down) aborts the load;
	// Wait waits for it, so RAM is not unmapped under the loader.
	ctx, cancel := context.WithCancel(ctx)
	g.mu.Lock()
	g.started, g.finished, g.errDesc = time.Now(), time.Time{}, ""
	g.ram = RAMInfo{}
	g.cancel = cancel
	g.done = make(chan struct{})
	g.mu.Unlock()
	g.setStatus(StatusSetup)
	out := make(chan error, 1)
	go func() {
		defer cancel()
		err := g.acceptLive(ctx, ln, ch)
		if err != nil {
			g.fail(fmt.Errorf("incoming migration from %s: %w", ch, err))
			g.finishDone()
		} else {
			g.finish(StatusCompleted)
		}
		out <- err
	}()
	return out, nil
}

// acceptAndLoad takes the source's connection on ln and loads it with
// load (live migration, or the main channel of a cpr-transfer). keepOpen
// leaves ln listening until the load ends (multifd channels connect to it
// after the main one).
func (g *Migrator) acceptAndLoad(ctx context.Context, ln listener, keepOpen bool, load func(net.Conn) error) error {
	conn, err := ln.accept(ctx)
	if keepOpen {
		defer ln.close()
	} else {
		ln.close()
	}
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	g.setStatus(StatusActive)
	return load(conn)
}

// acceptLive takes the source's main connection on ln and loads it. With
// the multifd capability the listener stays open for the parallel channels
// (not for an fd channel, which cannot be connected to again).
func (g *Migrator) acceptLive(ctx context.Context, ln listener, ch Channel) error {
	var more listener
	if g.capabilities().Multifd && ch.Transport != "fd" {
		more = ln
	}
	return g.acceptAndLoad(ctx, ln, more != nil, func(conn net.Conn) error { return g.loadLive(ctx, conn, more) })
}

// checkMultifd compares the source's multifd request with this side's
// capability; it returns the id and channel count when both have it on.
func (g *Migrator) checkMultifd(src *multifdDesc, ln listener) ([16]byte, int, error) {
	var id [16]byte
	on := g.capabilities().Multifd
	switch {
	case src == nil && !on:
		return id, 0, nil
	case src == nil:
		return id, 0, errors.New("multifd is on here and off on the source: set the multifd capability the same on both sides")
	case !on:
		return id, 0, errors.New("multifd is on on the source and off here: set the multifd capability the same on both sides")
	case ln == nil:
		return id, 0, errors.New("multifd needs a unix or tcp channel: this side listens on an fd, which cannot take the parallel channels")
	case src.Channels < 1 || src.Channels > maxMultifdChannels:
		return id, 0, fmt.Errorf("multifd: %d channels, want 1 to %d", src.Channels, maxMultifdChannels)
	}
	id, err := parseMultifdID(src.ID)
	return id, src.Channels, err
}

// loadLive reads one migration from conn into the machine; ln is the
// listener still open for multifd channels (nil without multifd).
func (g *Migrator) loadLive(ctx context.Context, conn net.Conn, ln listener) error {
	m := g.cfg.Machine
	host, reg, err := machineRegistry(m)
	if err != nil {
		return err
	}
	var r io.Reader = deadlineReader{conn: conn, timeout: g.ioTimeout()}
	magic := make([]byte, len(preambleMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return fmt.Errorf("read the stream header: %w", err)
	}
	framed := string(magic) == preambleMagic
	if !framed {
		if g.capabilities().Multifd {
			return errors.New("multifd is on here, but the source sent a plain QEMU stream without the pre-flight framing (x-preflight off there), which cannot carry multifd channels")
		}
		r = io.MultiReader(bytes.NewReader(magic), r)
	}
	fresh := !g.ramWritten
	g.ramWritten = true
	// reply sends the verdict when the source speaks the framing.
	reply := func(err error) error {
		if !framed {
			return err
		}
		v := verdict{OK: err == nil}
		if err != nil {
			v.Error = err.Error()
		}
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if werr := writeMsg(conn, verdictMagic, v); werr != nil && err == nil {
			// The state is loaded and the disks are ours; the source
			// will not hear it and will find its disks taken.
			g.log.Warn("could not tell the source the migration completed", "error", werr)
		}
		return err
	}
	var mf *multifdIn
	if framed {
		var src machineDesc
		if err := readMsgBody(r, &src); err != nil {
			return fmt.Errorf("pre-flight description: %w", err)
		}
		here := describeMachine(g.cfg.MachineType, m.Memory().Blocks(), reg)
		if err := checkCompatible(src, here); err != nil {
			return reply(fmt.Errorf("incompatible source: %w", err))
		}
		id, channels, err := g.checkMultifd(src.Multifd, ln)
		if err != nil {
			return reply(fmt.Errorf("incompatible source: %w", err))
		}
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		// A source that reads vmdesc_optional ends the stream at EOF
		// without the vmdesc: this side compared every schema already.
		if err := writeMsg(conn, verdictMagic, preflightAnswer{verdict: verdict{OK: true, FreshRAM: fresh}, VMDescOptional: true, Multifd: channels > 0}); err != nil {
			return fmt.Errorf("pre-flight answer: %w", err)
		}
		if channels > 0 {
			conns, err := acceptMultifd(ctx, ln, id, channels, max(g.ioTimeout(), 30*time.Second))
			if err != nil {
				return reply(err)
			}
			ln.close()
			ir := &interruptibleReader{conn: conn, timeout: g.ioTimeout()}
			r = ir
			mf = startMultifdIn(conns, m.Memory().Blocks(), g.ioTimeout(), ir)
			defer mf.stop(errors.New("the load ended"))
			// Cancel (the main connection closes) also stops the channels.
			stopMF := context.AfterFunc(ctx, func() { mf.fail(errCancelled) })
			defer stopMF()
		}
		// While RAM streams in: the first vCPU restore and the first
		// device load in a process are slow, and the real ones are inside
		// the pause.
		if err := g.warmUpLoad(); err != nil {
			g.log.Warn("warm-up of the state load", "error", err)
		}
		if fresh && len(src.Populated) == len(m.Memory().Blocks()) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				populate(ctx, m.Memory().Blocks(), src.Populated)
			}()
			defer func() { cancel(); <-done }() // not past the load: RAM may go next
		}
	}
	counter := &countingReader{r: r}
	opts := vmstate.LoadOptions{Machine: g.cfg.MachineType, Blocks: m.Memory().Blocks(), Registry: reg,
		AllowMissingVMDesc: framed}
	if mf != nil {
		opts.MultifdFlush = mf.flush
	}
	// The load's tail, from the RAM END (the source's guest stopped) to
	// the end of the device sections, is part of the pause.
	var ramEnd time.Time
	opts.RAMEnded = func() { ramEnd = time.Now() }
	res, err := vmstate.Load(counter, opts)
	loadTail := time.Since(ramEnd)
	if mf != nil {
		// A channel's failure is the cause of the main stream's.
		if cerr := mf.error(); cerr != nil {
			err = cerr
		} else if err == nil {
			err = mf.finish()
		}
	}
	if err != nil {
		return reply(err)
	}
	var tm phaseTimer
	tm.start()
	st, err := host.state()
	if err != nil {
		return reply(err)
	}
	if err := m.RestoreCPUState(st); err != nil {
		return reply(err)
	}
	tm.mark("cpu")
	if err := activateDisks(disks(m)); err != nil {
		return reply(err)
	}
	tm.mark("disks")
	defer func() { g.log.Info("incoming switchover", "devices", loadTail, "phases", tm.String()) }()
	g.mu.Lock()
	g.ram.Transferred = res.Bytes
	g.ram.Normal = int64(res.Pages)
	g.ram.Duplicate = int64(res.ZeroPages)
	if mf != nil {
		g.ram.Normal += mf.pages.Load()
		g.ram.Duplicate += mf.zeros.Load()
		g.ram.Transferred += mf.pages.Load() * vmstate.PageSize
	}
	g.ram.NormalBytes = g.ram.Normal * vmstate.PageSize
	g.ram.Total = int64(m.Memory().Size())
	g.mu.Unlock()
	// Resume, then answer: the guest's pause ends at the resume, and the
	// answer's write (usually 20-40 µs, up to 0.9 ms when the wake-up of
	// the source preempts this thread) need not come first. An answer
	// that cannot be written never stopped the resume (see reply); a
	// resume that fails is now the answer, so the source takes its guest
	// back instead of counting on a destination that is not running.
	err = g.enterLoadedState(st.RunState)
	tm.mark("resume")
	if rerr := reply(err); rerr != nil {
		return rerr
	}
	tm.mark("reply")
	return nil
}

// countingReader counts bytes read (for query-migrate while loading).
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14): fault pages in
// writable without touching their contents.
const madvPopulateWrite = 23

// populate faults in, ahead of the stream, the pages the source's first
// pass will send: the kernel does it in one call per run for about 1 us a
// page, where the loader's first touch costs more and sits on its critical
// path. It stops at ctx's end or at the first refusal (an older kernel).
func populate(ctx context.Context, blocks []*guestmem.Block, runs [][][2]uint64) {
	const piece = 512 // pages per call, so that ctx is checked often
	for i, b := range blocks {
		for _, r := range runs[i] {
			first, n := r[0], r[1]
			if first >= b.Pages() || n > b.Pages()-first {
				return // not this machine's geometry: the check refused it already
			}
			for off := first; off < first+n; off += piece {
				if ctx.Err() != nil {
					return
				}
				cnt := min(piece, first+n-off)
				if err := unix.Madvise(b.Mem[off*vmstate.PageSize:(off+cnt)*vmstate.PageSize], madvPopulateWrite); err != nil {
					return
				}
			}
		}
	}
}
