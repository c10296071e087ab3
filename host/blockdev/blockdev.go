// Package blockdev is the raw image block backend: a file of guest sectors
// that devices read and write with vectored I/O straight into guest memory
// (plugin.BlockBackend), and whose ownership is a lock.
//
// # Ownership
//
// The VMM that owns a disk holds an open-file-description lock on the whole
// image (F_OFD_SETLK): a write lock for a read-write disk, a read lock for a
// read-only one. A second owner is refused, whether it is another process or
// another open in this one (each open is its own description). Because
// F_OFD_GETLK reports no pid for such locks, the owner also records itself in
// a side file, <image>.wasmvmm-owner (pid, mode, description), and a refusal
// names it. The side file is a hint (written after the lock is taken,
// removed on release when it still names us); the lock is the truth.
//
// An image can be opened inactive (Options.Inactive): the file is open but
// unlocked and refuses writes. Activate takes the lock, Inactivate flushes
// and releases it while keeping the file open. Live migration hands a disk
// over this way: the incoming VMM opens inactive, the source inactivates at
// switchover, the destination activates. The lock belongs to the open file
// description, so a descriptor passed to another process (cpr-transfer, FD)
// carries the lock with it; Adopt wraps such a descriptor.
package blockdev

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
)

// OwnerSuffix is appended to an image's path to name its owner file.
const OwnerSuffix = ".wasmvmm-owner"

// Options say how to open an image.
type Options struct {
	// ReadOnly opens the image read-only and takes a read lock.
	ReadOnly bool
	// Inactive opens the image without taking the lock; writes are refused
	// until Activate.
	Inactive bool
	// Owner describes this user of the image in the owner file and in
	// messages to others (e.g. "wasmvmm vm web1 disk vda").
	Owner string
}

// ErrLocked is returned (wrapped, with the holder named) when another owner
// holds a conflicting lock.
var ErrLocked = errors.New("image is locked by another owner")

// ErrInactive is returned for writes to an inactive image.
var ErrInactive = errors.New("image is inactive (not owned by this VMM)")

// ErrReadOnly is returned for writes to a read-only image.
var ErrReadOnly = errors.New("image is read-only")

// Image is an open raw image. It implements plugin.BlockBackend and
// plugin.FDHolder. Its methods are safe for concurrent use.
type Image struct {
	path     string
	f        *os.File
	fd       int
	readOnly bool
	owner    string
	nonce    string

	mu     sync.RWMutex // held for reading during I/O, for writing by Activate/Inactivate/Close
	active bool
	closed bool
}

// Owner is what an owner file records.
type Owner struct {
	PID         int       `json:"pid"`
	Mode        string    `json:"mode"` // "read-write" or "read-only"
	Description string    `json:"description,omitempty"`
	Since       time.Time `json:"since"`
	Nonce       string    `json:"nonce"`
}

// Open opens the image at path and, unless opt.Inactive, takes ownership.
// A conflicting owner makes it fail with an error wrapping ErrLocked that
// names the holder.
func Open(path string, opt Options) (*Image, error) {
	flags := os.O_RDWR
	if opt.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open image %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open image %s: not a regular file", path)
	}
	im := newImage(path, f, opt)
	if !opt.Inactive {
		if err := im.Activate(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return im, nil
}

// Adopt wraps a descriptor received from another process (cpr-transfer)
// that already holds the image's lock when active is true: the lock moves
// with the open file description, so nothing is locked again. The Image
// takes ownership of fd.
func Adopt(fd int, path string, active bool, opt Options) (*Image, error) {
	acc, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("adopt image %s (fd %d): %w", path, fd, err)
	}
	ro := acc&unix.O_ACCMODE == unix.O_RDONLY
	if !ro && opt.ReadOnly {
		return nil, fmt.Errorf("adopt image %s (fd %d): descriptor is writable but the disk is read-only", path, fd)
	}
	if ro && !opt.ReadOnly {
		return nil, fmt.Errorf("adopt image %s (fd %d): descriptor is read-only but the disk is read-write", path, fd)
	}
	im := newImage(path, os.NewFile(uintptr(fd), path), opt)
	im.active = active
	return im, nil
}

func newImage(path string, f *os.File, opt Options) *Image {
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		binary.LittleEndian.PutUint64(nonce[:], uint64(time.Now().UnixNano()))
	}
	return &Image{
		path: path, f: f, fd: int(f.Fd()), readOnly: opt.ReadOnly, owner: opt.Owner,
		nonce: fmt.Sprintf("%x", nonce),
	}
}

// Path returns the image's path.
func (im *Image) Path() string { return im.path }

// ReadOnly reports whether the image is read-only.
func (im *Image) ReadOnly() bool { return im.readOnly }

// Kind implements plugin.Backend.
func (im *Image) Kind() abi.BackendKind { return abi.BackendBlock }

// FD implements plugin.FDHolder: the image's descriptor, for cpr-transfer.
func (im *Image) FD() int { return im.fd }

// Active reports whether this Image owns the image (holds its lock).
func (im *Image) Active() bool {
	im.mu.RLock()
	defer im.mu.RUnlock()
	return im.active
}

func (im *Image) lockType() int16 {
	if im.readOnly {
		return unix.F_RDLCK
	}
	return unix.F_WRLCK
}

// Activate takes ownership: the write (or, read-only, read) lock on the
// whole image and the owner file. It does nothing if already active.
func (im *Image) Activate() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return fmt.Errorf("activate image %s: closed", im.path)
	}
	if im.active {
		return nil
	}
	lk := unix.Flock_t{Type: im.lockType(), Whence: io.SeekStart}
	if err := unix.FcntlFlock(uintptr(im.fd), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("image %s: %w: %s", im.path, ErrLocked, im.describeHolder())
		}
		return fmt.Errorf("lock image %s: %w", im.path, err)
	}
	im.active = true
	im.writeOwner()
	return nil
}

// Inactivate gives up ownership, keeping the file open: completed writes
// are made durable, then the lock is released and the owner file removed if
// it still names this Image. Writes fail with ErrInactive until Activate.
func (im *Image) Inactivate() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed || !im.active {
		return nil
	}
	var errs []error
	if !im.readOnly {
		if err := unix.Fdatasync(im.fd); err != nil {
			errs = append(errs, fmt.Errorf("inactivate image %s: fdatasync: %w", im.path, err))
		}
	}
	im.removeOwner()
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(uintptr(im.fd), unix.F_OFD_SETLK, &lk); err != nil {
		errs = append(errs, fmt.Errorf("inactivate image %s: unlock: %w", im.path, err))
	}
	im.active = false
	return errors.Join(errs...)
}

// Close releases ownership and closes the file.
func (im *Image) Close() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return nil
	}
	im.closed = true
	if im.active {
		im.removeOwner()
		im.active = false
	}
	if err := im.f.Close(); err != nil { // drops the OFD lock
		return fmt.Errorf("close image %s: %w", im.path, err)
	}
	return nil
}

func (im *Image) writeOwner() {
	mode := "read-write"
	if im.readOnly {
		mode = "read-only"
	}
	b, _ := json.Marshal(Owner{PID: os.Getpid(), Mode: mode, Description: im.owner, Since: time.Now().UTC(), Nonce: im.nonce})
	tmp := im.path + OwnerSuffix + fmt.Sprintf(".%d.tmp", os.Getpid())
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return // best effort: the lock is what counts
	}
	if err := os.Rename(tmp, im.path+OwnerSuffix); err != nil {
		os.Remove(tmp)
	}
}

func (im *Image) removeOwner() {
	if o, err := ReadOwner(im.path); err == nil && o.Nonce == im.nonce {
		os.Remove(im.path + OwnerSuffix)
	}
}

// ReadOwner reads the owner file of the image at path.
func ReadOwner(path string) (*Owner, error) {
	b, err := os.ReadFile(path + OwnerSuffix)
	if err != nil {
		return nil, err
	}
	var o Owner
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("owner file %s: %w", path+OwnerSuffix, err)
	}
	return &o, nil
}

// describeHolder says who holds a lock that conflicts with ours.
func (im *Image) describeHolder() string {
	lk := unix.Flock_t{Type: im.lockType(), Whence: io.SeekStart}
	kind := "locked"
	if err := unix.FcntlFlock(uintptr(im.fd), unix.F_OFD_GETLK, &lk); err == nil {
		switch lk.Type {
		case unix.F_WRLCK:
			kind = "locked for writing"
		case unix.F_RDLCK:
			kind = "locked for reading"
		}
	}
	o, err := ReadOwner(im.path)
	if err != nil {
		return kind + " by an unknown process (no owner file " + im.path + OwnerSuffix + ")"
	}
	s := fmt.Sprintf("%s by pid %d", kind, o.PID)
	if o.Description != "" {
		s += " (" + o.Description + ")"
	}
	s += fmt.Sprintf(", %s owner since %s", o.Mode, o.Since.Format(time.RFC3339))
	if unix.Kill(o.PID, 0) == unix.ESRCH {
		s += "; that process no longer runs, so the owner file is stale and the holder is unknown"
	}
	return s
}

// Size implements plugin.BlockBackend.
func (im *Image) Size() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(im.fd, &st); err != nil {
		return 0, fmt.Errorf("image %s: fstat: %w", im.path, err)
	}
	return st.Size, nil
}

// PreadSG implements plugin.BlockBackend: it reads from off into the
// buffers (slices of guest memory; the host marks them dirty) with
// preadv, and returns the bytes read (short only at the end of the image).
func (im *Image) PreadSG(bufs [][]byte, off int64) (int, error) {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return 0, fmt.Errorf("image %s: closed", im.path)
	}
	return vectored(bufs, off, func(iov [][]byte, at int64) (int, error) { return unix.Preadv(im.fd, iov, at) }, true)
}

// PwriteSG implements plugin.BlockBackend with pwritev. Writes need an
// active read-write image.
func (im *Image) PwriteSG(bufs [][]byte, off int64) (int, error) {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if err := im.writable(); err != nil {
		return 0, err
	}
	return vectored(bufs, off, func(iov [][]byte, at int64) (int, error) { return unix.Pwritev(im.fd, iov, at) }, false)
}

func (im *Image) writable() error {
	switch {
	case im.closed:
		return fmt.Errorf("image %s: closed", im.path)
	case im.readOnly:
		return fmt.Errorf("image %s: %w", im.path, ErrReadOnly)
	case !im.active:
		return fmt.Errorf("image %s: %w", im.path, ErrInactive)
	}
	return nil
}

// maxIOV is the most buffers one preadv/pwritev takes (IOV_MAX).
const maxIOV = 1024

// vectored runs op until every buffer is transferred, the file ends
// (reads) or op fails; it returns the bytes transferred.
func vectored(bufs [][]byte, off int64, op func([][]byte, int64) (int, error), read bool) (int, error) {
	total := 0
	var cur []byte // remainder of a partially transferred buffer
	for len(bufs) > 0 || len(cur) > 0 {
		var iov [][]byte
		if len(cur) > 0 {
			iov = append(make([][]byte, 0, 1+min(len(bufs), maxIOV-1)), cur)
			iov = append(iov, bufs[:min(len(bufs), maxIOV-1)]...)
		} else {
			iov = bufs[:min(len(bufs), maxIOV)]
		}
		n, err := op(iov, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return total, err
		}
		if n == 0 {
			if read {
				return total, nil // end of image
			}
			return total, io.ErrShortWrite
		}
		total += n
		off += int64(n)
		// Consume n bytes of cur then bufs.
		if len(cur) > 0 {
			k := min(n, len(cur))
			cur, n = cur[k:], n-k
		}
		for n > 0 && len(bufs) > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
				continue
			}
			cur, bufs, n = bufs[0][n:], bufs[1:], 0
		}
	}
	return total, nil
}

// Flush implements plugin.BlockBackend: fdatasync.
func (im *Image) Flush() error {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return fmt.Errorf("image %s: closed", im.path)
	}
	if err := unix.Fdatasync(im.fd); err != nil {
		return fmt.Errorf("image %s: fdatasync: %w", im.path, err)
	}
	return nil
}

// Discard implements plugin.BlockBackend: it punches a hole (the range then
// reads as zeroes). A file system without hole punching reports
// errors.ErrUnsupported.
func (im *Image) Discard(off, n int64) error {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if err := im.writable(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(im.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("image %s: discard: %w", im.path, errors.ErrUnsupported)
	}
	if err != nil {
		return fmt.Errorf("image %s: discard [%d, +%d): %w", im.path, off, n, err)
	}
	return nil
}

// zeroChunk bounds the buffer of the write fallback of WriteZeroes.
const zeroChunk = 1 << 20

// WriteZeroes implements plugin.BlockBackend: FALLOC_FL_ZERO_RANGE, or
// where the file system lacks it a punched hole re-allocated, or as a last
// resort written zeroes. The range stays allocated and reads as zeroes.
func (im *Image) WriteZeroes(off, n int64) error {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if err := im.writable(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(im.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("image %s: write zeroes [%d, +%d): %w", im.path, off, n, err)
	}
	if unix.Fallocate(im.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil &&
		unix.Fallocate(im.fd, unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	zeroes := make([]byte, min(n, zeroChunk))
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		w, err := unix.Pwrite(im.fd, zeroes[:k], off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("image %s: write zeroes at %d: %w", im.path, off, err)
		}
		off, n = off+int64(w), n-int64(w)
	}
	return nil
}
