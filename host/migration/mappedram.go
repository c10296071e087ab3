package migration

import (
	"context"
	"errors"
	"fmt"
	"os"

	"wasmvmm/host/vmstate"
)

// errNotSeekable refuses the mapped-ram capability on a socket, in QEMU's
// words.
var errNotSeekable = errors.New("Migration requires seekable transport (e.g. file)")

// mappedRAMWorkers is how many goroutines read a mapped-ram snapshot's
// pages when the multifd capability is off (with it on, multifd-channels
// of them do, as QEMU's multifd threads do).
const mappedRAMWorkers = 2

// mappedSaveWorkers is how many goroutines scan guest RAM for non-zero
// pages and write them in a mapped-ram save.
const mappedSaveWorkers = 2

// ctxFile is the snapshot file of a mapped-ram save: pages go to it with
// WriteAt, which fails once ctx is done so that a cancelled save stops.
type ctxFile struct {
	ctx context.Context
	f   *os.File
}

func (c ctxFile) WriteAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, errCancelled
	}
	return c.f.WriteAt(p, off)
}

func (c ctxFile) Seek(off int64, whence int) (int64, error) { return c.f.Seek(off, whence) }

// writeMappedFile writes a stopped guest's snapshot in the mapped-ram
// layout (vmstate.NewMappedWriter): the stream through a buffer, the pages
// straight from guest memory to their offsets.
func (g *Migrator) writeMappedFile(ctx context.Context, ch Channel, reg *vmstate.Registry) error {
	m := g.cfg.Machine
	f, err := openSnapshotFile(ch)
	if err != nil {
		return err
	}
	defer f.Close()
	counter := &countingWriter{w: ctxWriter{ctx, f}}
	w, err := vmstate.NewMappedWriter(counter, ctxFile{ctx, f}, ch.Offset, g.cfg.MachineType)
	if err != nil {
		return err
	}
	w.MappedWorkers = mappedSaveWorkers
	stats, err := w.RAMMapped(m.Memory().Blocks())
	if err != nil {
		return err
	}
	// Nothing buffered; the pages went by pwrite, past the counter.
	noFlush := func() error { return nil }
	return g.endSnapshot(f, w, reg, stats, noFlush, func() int64 { return counter.n + int64(stats.Pages)*vmstate.PageSize })
}

// loadMappedRAM loads a mapped-ram snapshot: the stream is read and checked
// to its end first (headers, bitmaps, regions inside the file, devices),
// then the pages are read straight into guest memory by parallel preads,
// then the devices are applied.
func (g *Migrator) loadMappedRAM(f *os.File, offset int64, opt vmstate.LoadOptions) (*vmstate.LoadResult, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", f.Name(), errNotSeekable)
	}
	workers := mappedRAMWorkers
	if g.capabilities().Multifd {
		workers = int(g.Parameters().MultifdChannels)
	}
	opt.MappedRAM = &vmstate.MappedRAM{File: f, Base: offset, Size: st.Size(), Workers: workers}
	return vmstate.Load(f, opt)
}
