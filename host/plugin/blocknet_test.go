package plugin

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
)

// fileBlock is a BlockBackend over a real image file, enough to drive the
// host functions; the real block backend is written elsewhere.
type fileBlock struct{ f *os.File }

func (b *fileBlock) Kind() abi.BackendKind { return abi.BackendBlock }

func (b *fileBlock) PreadSG(bufs [][]byte, off int64) (int, error) {
	n := 0
	for _, buf := range bufs {
		k, err := b.f.ReadAt(buf, off+int64(n))
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (b *fileBlock) PwriteSG(bufs [][]byte, off int64) (int, error) {
	n := 0
	for _, buf := range bufs {
		k, err := b.f.WriteAt(buf, off+int64(n))
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (b *fileBlock) Flush() error { return b.f.Sync() }

func (b *fileBlock) Discard(off, n int64) error {
	return unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (b *fileBlock) WriteZeroes(off, n int64) error {
	_, err := b.f.WriteAt(make([]byte, n), off)
	return err
}

func (b *fileBlock) Size() (int64, error) {
	st, err := b.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// dgramNet is a NetBackend over one end of a unix datagram socket pair:
// one datagram is one frame.
type dgramNet struct{ fd int }

func (n *dgramNet) Kind() abi.BackendKind { return abi.BackendNet }

func (n *dgramNet) SendSG(bufs [][]byte) (int, error) {
	return unix.Writev(n.fd, bufs)
}

func (n *dgramNet) RecvSG(bufs [][]byte) (int, error) {
	k, err := unix.Readv(n.fd, bufs)
	if errors.Is(err, unix.EAGAIN) {
		return 0, ErrWouldBlock
	}
	return k, err
}

func TestBlockAndNetBackends(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	content := bytes.Repeat([]byte("0123456789abcdef"), 4096/16*4)
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])

	h := newTestHost(t, 1<<20)
	h.backends["disk"] = &fileBlock{f}
	h.backends["net"] = &dgramNet{fds[0]}
	rt, _ := newTestRuntime(t, Config{})
	inst := instantiate(t, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	if b := inst.Backends(); len(b) != 2 || b[0].Name != "disk" || b[1].Kind != abi.BackendNet {
		t.Fatalf("backends %+v", b)
	}
	ram := h.mem.Blocks()[0].Mem
	status := func() int64 { return int64(inst.MMIORead(1, 0x118, 8)) }
	call := func(off, v uint64) int64 {
		inst.MMIOWrite(1, off, 8, v)
		return status()
	}
	var dirty [4]uint64
	h.mem.Blocks()[0].TakeDirty(dirty[:])

	// pread_sg of 100 bytes at image offset 5 into [0x10000,+50) and [0x11000,+50).
	inst.MMIOWrite(1, 0x100, 8, 0x10000)
	inst.MMIOWrite(1, 0x108, 8, 100) // also a guest_read into scratch; sets Len
	if n := call(0x900, 5); n != 100 {
		t.Fatalf("pread_sg returned %d", n)
	}
	if !bytes.Equal(ram[0x10000:0x10032], content[5:55]) || !bytes.Equal(ram[0x11000:0x11032], content[55:105]) {
		t.Error("pread_sg scattered the wrong bytes")
	}
	h.mem.Blocks()[0].TakeDirty(dirty[:])
	if dirty[0] != 1<<16|1<<17 {
		t.Errorf("pread_sg dirtied %#x, want pages 16 and 17", dirty[0])
	}
	// pwrite_sg of the same ranges at offset 1000.
	copy(ram[0x10000:], "AAAAA")
	if n := call(0x908, 1000); n != 100 {
		t.Fatalf("pwrite_sg returned %d", n)
	}
	got := make([]byte, 5)
	f.ReadAt(got, 1000)
	if string(got) != "AAAAA" {
		t.Errorf("pwrite_sg wrote %q", got)
	}
	if st := call(0x910, 0); st != 0 {
		t.Errorf("flush %d", st)
	}
	if n := call(0x918, 0); n != int64(len(content)) {
		t.Errorf("size %d, want %d", n, len(content))
	}
	if st := call(0x928, 4096); st != 0 {
		t.Errorf("write_zeroes %d", st)
	}
	f.ReadAt(got, 0)
	if !bytes.Equal(got, make([]byte, 5)) {
		t.Errorf("write_zeroes left %q", got)
	}
	if st := call(0x920, 4096); st != 0 {
		t.Errorf("discard %d", st)
	}
	// An SG entry outside guest RAM is refused before any I/O.
	inst.MMIOWrite(1, 0x100, 8, 1<<20-8)
	if st := call(0x900, 0); st != int64(abi.ErrOutOfBounds) {
		t.Errorf("pread_sg outside RAM: %d", st)
	}

	// Net: send skips 10 bytes of the 100-byte list.
	inst.MMIOWrite(1, 0x100, 8, 0x10000)
	copy(ram[0x10000:0x10032], bytes.Repeat([]byte{'s'}, 50))
	copy(ram[0x11000:0x11032], bytes.Repeat([]byte{'t'}, 50))
	if n := call(0x930, 10); n != 90 {
		t.Fatalf("send_sg returned %d", n)
	}
	frame := make([]byte, 200)
	k, err := unix.Read(fds[1], frame)
	if err != nil || k != 90 || !bytes.Equal(frame[:90], append(bytes.Repeat([]byte{'s'}, 40), bytes.Repeat([]byte{'t'}, 50)...)) {
		t.Errorf("peer got %d bytes %q, %v", k, frame[:k], err)
	}
	// Nothing to receive: ErrAgain.
	if st := call(0x938, 0); st != int64(abi.ErrAgain) {
		t.Errorf("recv_sg with no frame: %d", st)
	}
	h.mem.Blocks()[0].TakeDirty(dirty[:])
	unix.Write(fds[1], []byte("frame-from-peer"))
	if n := call(0x938, 48); n != 15 {
		t.Fatalf("recv_sg returned %d", n)
	}
	if string(ram[0x10030:0x10032]) != "fr" || string(ram[0x11000:0x1100d]) != "ame-from-peer" {
		t.Errorf("recv_sg scattered %q %q", ram[0x10030:0x10032], ram[0x11000:0x1100d])
	}
	h.mem.Blocks()[0].TakeDirty(dirty[:])
	if dirty[0] != 1<<16|1<<17 {
		t.Errorf("recv_sg dirtied %#x", dirty[0])
	}
	if inst.Err() != nil {
		t.Fatal(inst.Err())
	}
}
