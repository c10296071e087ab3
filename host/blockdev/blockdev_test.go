package blockdev

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func newImageFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestReadWriteVectored(t *testing.T) {
	p := newImageFile(t, 1<<20)
	im, err := Open(p, Options{Owner: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if sz, err := im.Size(); err != nil || sz != 1<<20 {
		t.Fatalf("size %d %v", sz, err)
	}
	// 1500 buffers of odd sizes: more than IOV_MAX, so several pwritev calls.
	var bufs [][]byte
	var all []byte
	for i := 0; i < 1500; i++ {
		b := pattern(1+i%37, byte(i))
		bufs = append(bufs, b)
		all = append(all, b...)
	}
	n, err := im.PwriteSG(bufs, 4096)
	if err != nil || n != len(all) {
		t.Fatalf("pwritev %d %v, want %d", n, err, len(all))
	}
	file, _ := os.ReadFile(p)
	if !bytes.Equal(file[4096:4096+len(all)], all) {
		t.Fatal("file does not hold the written bytes")
	}
	back := make([][]byte, len(bufs))
	for i, b := range bufs {
		back[i] = make([]byte, len(b))
	}
	n, err = im.PreadSG(back, 4096)
	if err != nil || n != len(all) || !bytes.Equal(bytes.Join(back, nil), all) {
		t.Fatalf("preadv %d %v", n, err)
	}
	// Reading across the end is short.
	n, err = im.PreadSG([][]byte{make([]byte, 100), make([]byte, 100)}, 1<<20-150)
	if err != nil || n != 150 {
		t.Errorf("read across the end: %d %v", n, err)
	}
	if err := im.Flush(); err != nil {
		t.Error(err)
	}
}

func allocatedBytes(t *testing.T, p string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestDiscardAndWriteZeroes(t *testing.T) {
	p := newImageFile(t, 4<<20)
	im, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	data := pattern(4<<20, 1)
	if _, err := im.PwriteSG([][]byte{data}, 0); err != nil {
		t.Fatal(err)
	}
	im.Flush()
	before := allocatedBytes(t, p)
	if err := im.Discard(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if after := allocatedBytes(t, p); after > before-(1<<20) {
		t.Errorf("discard of 1 MiB: allocation %d -> %d", before, after)
	}
	if err := im.WriteZeroes(3<<20, 65536); err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(p)
	want := append([]byte(nil), data...)
	clear(want[1<<20 : 2<<20])
	clear(want[3<<20 : 3<<20+65536])
	if len(file) != 4<<20 || !bytes.Equal(file, want) {
		t.Error("image contents after discard and write-zeroes differ")
	}
}

func TestReadOnlyAndInactiveRefuseWrites(t *testing.T) {
	p := newImageFile(t, 1<<16)
	ro, err := Open(p, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := [][]byte{make([]byte, 512)}
	if _, err := ro.PwriteSG(buf, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write to read-only: %v", err)
	}
	if err := ro.Discard(0, 512); !errors.Is(err, ErrReadOnly) {
		t.Errorf("discard on read-only: %v", err)
	}
	if _, err := ro.PreadSG(buf, 0); err != nil {
		t.Errorf("read from read-only: %v", err)
	}
	ro.Close()
	in, err := Open(p, Options{Inactive: true})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.Active() {
		t.Fatal("inactive open is active")
	}
	if _, err := in.PwriteSG(buf, 0); !errors.Is(err, ErrInactive) {
		t.Errorf("write while inactive: %v", err)
	}
	if err := in.WriteZeroes(0, 512); !errors.Is(err, ErrInactive) {
		t.Errorf("write zeroes while inactive: %v", err)
	}
	if _, err := in.PreadSG(buf, 0); err != nil {
		t.Errorf("read while inactive: %v", err)
	}
	if err := in.Activate(); err != nil {
		t.Fatal(err)
	}
	if _, err := in.PwriteSG(buf, 0); err != nil {
		t.Errorf("write once active: %v", err)
	}
}

func TestLockRefusesSecondOwnerInProcess(t *testing.T) {
	p := newImageFile(t, 1<<16)
	a, err := Open(p, Options{Owner: "vm alpha disk vda"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(p, Options{Owner: "vm beta"})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second read-write open: %v", err)
	}
	me := fmt.Sprintf("pid %d", os.Getpid())
	for _, want := range []string{"locked for writing", me, "vm alpha disk vda", "read-write owner"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	if _, err := Open(p, Options{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-only open while a writer owns it: %v", err)
	}
	// An inactive open succeeds and cannot activate while a owns it.
	b, err := Open(p, Options{Inactive: true, Owner: "vm beta (incoming)"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Activate(); !errors.Is(err, ErrLocked) {
		t.Fatalf("activate while owned: %v", err)
	}
	// Hand-over: a inactivates, b activates, a cannot take it back.
	if err := a.Inactivate(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p + OwnerSuffix); !os.IsNotExist(err) {
		t.Errorf("owner file left after inactivate: %v", err)
	}
	if err := b.Activate(); err != nil {
		t.Fatal(err)
	}
	if o, err := ReadOwner(p); err != nil || o.PID != os.Getpid() || o.Description != "vm beta (incoming)" {
		t.Errorf("owner file %+v %v", o, err)
	}
	if err := a.Activate(); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "vm beta (incoming)") {
		t.Errorf("re-activate after hand-over: %v", err)
	}
	a.Close()
}

func TestReadOnlySharing(t *testing.T) {
	p := newImageFile(t, 1<<16)
	r1, err := Open(p, Options{ReadOnly: true, Owner: "reader one"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(p, Options{ReadOnly: true, Owner: "reader two"})
	if err != nil {
		t.Fatalf("two readers: %v", err)
	}
	_, err = Open(p, Options{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked for reading") {
		t.Fatalf("writer while readers hold it: %v", err)
	}
	r1.Close()
	r2.Close()
	w, err := Open(p, Options{})
	if err != nil {
		t.Fatalf("writer after readers left: %v", err)
	}
	w.Close()
}

func TestAdoptCarriesTheLock(t *testing.T) {
	p := newImageFile(t, 1<<16)
	a, err := Open(p, Options{Owner: "old process"})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(a.FD()) // what SCM_RIGHTS gives the new process: the same description
	if err != nil {
		t.Fatal(err)
	}
	b, err := Adopt(fd, p, true, Options{Owner: "new process"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Adopt(fd, p, true, Options{ReadOnly: true}); err == nil {
		t.Error("a writable descriptor adopted as read-only")
	}
	a.f.Close() // the old process exits without unlocking
	if _, err := Open(p, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock lost with the old descriptor: %v", err)
	}
	if _, err := b.PwriteSG([][]byte{[]byte("x")}, 0); err != nil {
		t.Errorf("adopted image not writable: %v", err)
	}
	b.Close()
	c, err := Open(p, Options{})
	if err != nil {
		t.Fatalf("open after the adopter closed: %v", err)
	}
	c.Close()
}

// The child half of TestLockAcrossProcesses: hold the image, say so, wait
// for stdin to close.
func TestMain(m *testing.M) {
	if p := os.Getenv("BLOCKDEV_TEST_HOLD"); p != "" {
		im, err := Open(p, Options{Owner: "child holder", ReadOnly: os.Getenv("BLOCKDEV_TEST_RO") == "1"})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		bufio.NewReader(os.Stdin).ReadString('\n')
		im.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func startHolder(t *testing.T, p string, ro bool) (*exec.Cmd, func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BLOCKDEV_TEST_HOLD="+p)
	if ro {
		cmd.Env = append(cmd.Env, "BLOCKDEV_TEST_RO=1")
	}
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q", line)
	}
	return cmd, func() { stdin.Close(); cmd.Wait() }
}

func TestLockAcrossProcesses(t *testing.T) {
	p := newImageFile(t, 1<<16)
	cmd, release := startHolder(t, p, false)
	_, err := Open(p, Options{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) || !strings.Contains(err.Error(), "child holder") {
		t.Fatalf("open while a child owns the image: %v", err)
	}
	t.Log(err)
	if _, err := Open(p, Options{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-only open while a child writes: %v", err)
	}
	release()
	im, err := Open(p, Options{})
	if err != nil {
		t.Fatalf("open after the child released: %v", err)
	}
	im.Close()

	// A killed holder leaves a stale owner file but no lock.
	cmd, _ = startHolder(t, p, true)
	if _, err := Open(p, Options{}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked for reading") {
		t.Fatalf("open while a child reads: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := ReadOwner(p); err != nil {
		t.Fatalf("the killed child's owner file: %v", err)
	}
	im, err = Open(p, Options{Owner: "after the crash"})
	if err != nil {
		t.Fatalf("open after the holder was killed: %v", err)
	}
	if o, _ := ReadOwner(p); o == nil || o.PID != os.Getpid() {
		t.Errorf("owner file not taken over: %+v", o)
	}
	im.Close()
}
