package migration

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"golang.org/x/sys/unix"

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

// loadMapping loads a stream from a file mapping, its pages copied into
// guest RAM on several CPUs. A file truncated while mapped raises
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
	// The pages are copied into guest RAM on several goroutines, each
	// faulting in its own pages: 0.64-0.68 of a plain read's speed against
	// 0.41-0.47 with one copier and a goroutine faulting guest pages in
	// ahead of it (BenchmarkSnapshot, 1 GiB, 2 CPUs; that goroutine beside
	// the workers only slowed them, to 0.44-0.48, and is gone).
	opt.CopyWorkers = copyWorkers()
	res, err = vmstate.LoadBytes(stream, opt)
	if errors.Is(err, vmstate.ErrPageDataFault) {
		// A copy worker met the fault.
		return nil, fmt.Errorf("%w: %w", errFileChanged, err)
	}
	return res, err
}

// copyWorkers is how many goroutines copy a snapshot's pages into guest
// RAM (vmstate.LoadOptions.CopyWorkers): two per CPU, as a worker waits in
// page faults (three or four did better than two on 2 CPUs), at most 4.
func copyWorkers() int { return min(2*runtime.NumCPU(), 4) }
