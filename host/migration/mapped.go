package migration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// errFileChanged is the error of a load whose mapped snapshot file was
// truncated under it.
var errFileChanged = errors.New("the snapshot file shrank while it was being read")

// loadMapped restores the stream that starts at offset in f by mapping the
// file read-only and loading from the mapping: page data is copied once,
// from the page cache to guest RAM, where reading through a buffer copies
// it twice. A file that cannot be mapped (a pipe or a special file) is
// reported with ok false so the caller reads it instead.
func loadMapped(f *os.File, offset int64, opt vmstate.LoadOptions) (res *vmstate.LoadResult, ok bool, err error) {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() <= offset {
		return nil, false, nil
	}
	pageSize := int64(os.Getpagesize())
	base := offset &^ (pageSize - 1)
	length := st.Size() - base
	if length != int64(int(length)) {
		return nil, false, nil
	}
	data, err := unix.Mmap(int(f.Fd()), base, int(length), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, false, nil
	}
	defer unix.Munmap(data)
	_ = unix.Madvise(data, unix.MADV_SEQUENTIAL)
	res, err = loadMapping(data[offset-base:], opt)
	return res, true, err
}

// loadMapping loads a stream from a file mapping while populateAhead
// prepares guest RAM on another CPU. A file truncated while mapped raises
// SIGBUS at the next access to the lost pages; that fault becomes this
// load's error (errFileChanged) instead of killing the process.
func loadMapping(stream []byte, opt vmstate.LoadOptions) (res *vmstate.LoadResult, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fe, isFault := r.(interface{ Addr() uintptr })
			if !isFault {
				panic(r)
			}
			res, err = nil, fmt.Errorf("%w (fault at %#x)", errFileChanged, fe.Addr())
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		populateAhead(ctx, stream, opt)
	}()
	defer func() { cancel(); <-done }()
	return vmstate.LoadBytes(stream, opt)
}

// populateAhead walks the stream's RAM records ahead of the loader, on
// another CPU, and faults in writable the guest pages they will fill
// (MADV_POPULATE_WRITE, a run at a time), so that the loader's copy does
// not stop at a first-touch fault per page (per huge page with THP). Its
// reading of the records also maps the file's pages for the loader. It
// stops at ctx's end, after the RAM section, or at anything it cannot
// parse (the loader reports that), and never fails the load: an older
// kernel without MADV_POPULATE_WRITE only loses the speed-up.
func populateAhead(ctx context.Context, stream []byte, opt vmstate.LoadOptions) {
	debug.SetPanicOnFault(true)
	defer func() {
		// A fault in a file that shrank: the loader reports it.
		if r := recover(); r != nil {
			if _, isFault := r.(interface{ Addr() uintptr }); !isFault {
				panic(r)
			}
		}
	}()
	var (
		cur        *guestmem.Block
		first, end uint64
		refused    bool
	)
	flush := func() {
		if cur != nil && end > first && !refused {
			if err := unix.Madvise(cur.Mem[first:end], madvPopulateWrite); err != nil {
				refused = true
			}
		}
		cur = nil
	}
	const maxRun = 2 << 20 // populate at most a huge page per call, to stay just ahead
	_ = vmstate.ScanRAM(stream, opt, func(b *guestmem.Block, addr uint64) bool {
		if refused || ctx.Err() != nil {
			return false
		}
		if b == cur && addr == end && end-first < maxRun {
			end += vmstate.PageSize
			return true
		}
		flush()
		cur, first, end = b, addr, addr+vmstate.PageSize
		return true
	})
	flush()
}
