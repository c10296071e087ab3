package cpr

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// memfd returns a memfd of size bytes holding tag at offset 0.
func memfd(t *testing.T, tag string) int {
	t.Helper()
	fd, err := unix.MemfdCreate("cpr-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, []byte(tag), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestSendReceiveOverUnixSocket: the descriptors that arrive are the same
// open files (same inode, same contents), names and ids intact, and the
// sender sees the hang-up once the receiver closes.
func TestSendReceiveOverUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpr.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var entries []Entry
	for i, name := range []string{"ram-low", "ram-high", "dev/net0/net/net", "dev/blk0/disk/disk"} {
		entries = append(entries, Entry{Name: name, ID: int32(i - 1), FD: memfd(t, name)})
	}
	type result struct {
		st  *State
		err error
	}
	res := make(chan result, 1)
	hup := make(chan struct{})
	go func() {
		st, c, err := ln.Receive(context.Background())
		if err == nil {
			<-hup
			c.Close()
		}
		res <- result{st, err}
	}()
	ctx := context.Background()
	c, err := Send(ctx, path, entries)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- WaitHangup(ctx, c) }()
	select {
	case err := <-waited:
		t.Fatalf("the sender saw a hang-up before the receiver closed: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(hup)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.st.Close()
	got := r.st.Entries()
	if len(got) != len(entries) {
		t.Fatalf("%d entries, want %d", len(got), len(entries))
	}
	for i, e := range entries {
		g := got[i]
		if g.Name != e.Name || g.ID != e.ID {
			t.Fatalf("entry %d: %s/%d, want %s/%d", i, g.Name, g.ID, e.Name, e.ID)
		}
		if g.FD == e.FD {
			t.Fatalf("entry %d: the same descriptor number came back; it was not passed", i)
		}
		if inode(t, g.FD) != inode(t, e.FD) {
			t.Fatalf("entry %d: a different file arrived", i)
		}
		buf := make([]byte, len(e.Name))
		if _, err := unix.Pread(g.FD, buf, 0); err != nil || string(buf) != e.Name {
			t.Fatalf("entry %d reads %q (%v)", i, buf, err)
		}
		if fl, _ := unix.FcntlInt(uintptr(g.FD), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
			t.Fatalf("entry %d: received descriptor is not close-on-exec", i)
		}
	}
	fd, ok := r.st.Take("dev/net0/net/net", 1)
	if !ok || fd != got[2].FD {
		t.Fatalf("Take: %d %v", fd, ok)
	}
	unix.Close(fd)
	if _, ok := r.st.Take("dev/net0/net/net", 1); ok {
		t.Fatal("an entry was taken twice")
	}
	if u := r.st.Untaken(); len(u) != 3 {
		t.Fatalf("untaken %v", u)
	}
}

// TestReceiveRefusesNonQCPR: a peer that sends something else is refused
// and no descriptor leaks.
func TestReceiveRefusesNonQCPR(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpr.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, _, err := ln.Receive(context.Background())
		errc <- err
	}()
	var d [8]byte
	copy(d[:], "QEVM\x00\x00\x00\x03")
	c, err := Send(context.Background(), path, nil) // valid empty state first? no: raw
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-errc; err != nil {
		t.Fatalf("an empty state was refused: %v", err)
	}
	ln, err = Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _, err := ln.Receive(context.Background())
		errc <- err
	}()
	raw, err := unixDial(path)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write(d[:])
	raw.CloseWrite()
	if err := <-errc; !errors.Is(err, ErrBadState) {
		t.Fatalf("a QEMU stream was taken for a cpr state: %v", err)
	}
	raw.Close()
}

// TestReceiveCancelled: a destination waiting for a source that never
// comes stops on cancel.
func TestReceiveCancelled(t *testing.T) {
	ln, err := Listen(filepath.Join(t.TempDir(), "cpr.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := ln.Receive(ctx)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Receive ignored the cancel")
	}
}

// bytesSource decodes from a byte slice; every marker byte comes with a
// fake descriptor (its offset), as a well-behaved kernel would deliver.
type bytesSource struct {
	r    *bytes.Reader
	fds  []int
	data []byte
}

func (b *bytesSource) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	off := len(b.data) - b.r.Len() - n
	for i := 0; i < n; i++ {
		if p[i] == fdMarker {
			b.fds = append(b.fds, off+i)
		}
	}
	return n, err
}

func (b *bytesSource) TakeFD() (int, bool) {
	if len(b.fds) == 0 {
		return -1, false
	}
	fd := b.fds[0]
	b.fds = b.fds[1:]
	return fd, true
}

// bufSink records an encoding; descriptors become marker bytes.
type bufSink struct{ bytes.Buffer }

func (b *bufSink) WriteFD(int) error { return b.WriteByte(fdMarker) }

func encoded(t testing.TB, entries []Entry) []byte {
	var s bufSink
	if err := encode(&s, entries); err != nil {
		t.Fatal(err)
	}
	return s.Bytes()
}

// TestEncodingIsQEMUs pins the bytes of a one-entry state.
func TestEncodingIsQEMUs(t *testing.T) {
	got := encoded(t, []Entry{{Name: "tap", ID: -2, FD: 9}})
	want := []byte("QCPR\x00\x00\x00\x01\x01\x00\x00\x00\x04tap\x00\xff\xff\xff\xfe \x00")
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding\n got %q\nwant %q", got, want)
	}
	if binary.BigEndian.Uint32(got) != Magic {
		t.Fatal("magic")
	}
}

func TestDecodeErrors(t *testing.T) {
	good := encoded(t, []Entry{{Name: "a", ID: 1, FD: 3}})
	cases := map[string][]byte{
		"empty":          nil,
		"bad magic":      append([]byte("QEVM"), good[4:]...),
		"bad version":    append(append([]byte{}, good[:4]...), append([]byte{0, 0, 0, 2}, good[8:]...)...),
		"truncated":      good[:len(good)-1],
		"bad list byte":  append(append([]byte{}, good[:8]...), 7),
		"name too long":  append(append([]byte{}, good[:9]...), 0x7f, 0, 0, 0),
		"no NUL":         []byte("QCPR\x00\x00\x00\x01\x01\x00\x00\x00\x02ab\x00\x00\x00\x01 \x00"),
		"no descriptor":  []byte("QCPR\x00\x00\x00\x01\x01\x00\x00\x00\x02a\x00\x00\x00\x00\x01x\x00"),
		"zero-len name":  []byte("QCPR\x00\x00\x00\x01\x01\x00\x00\x00\x00"),
		"one-byte name":  []byte("QCPR\x00\x00\x00\x01\x01\x00\x00\x00\x01\x00\x00\x00\x00\x01 \x00"),
		"missing end":    good[:len(good)-1],
		"garbage marker": []byte("QCPR\x00\x00\x00\x01\xff"),
	}
	for name, b := range cases {
		if _, err := decode(&bytesSource{r: bytes.NewReader(b), data: b}); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: decoded without ErrBadState (%v)", name, err)
		}
	}
	es, err := decode(&bytesSource{r: bytes.NewReader(good), data: good})
	if err != nil || len(es) != 1 || es[0].Name != "a" || es[0].ID != 1 {
		t.Fatalf("good state: %v %v", es, err)
	}
}

// FuzzDecode: no input panics, and whatever decodes re-encodes to the
// same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(encoded(f, nil))
	f.Add(encoded(f, []Entry{{Name: "ram-low", ID: 0, FD: 5}, {Name: "dev/net0/net/net", ID: 7, FD: 6}}))
	f.Add([]byte("QCPR\x00\x00\x00\x01\x01\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		src := &bytesSource{r: bytes.NewReader(b), data: b}
		es, err := decode(src)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error without ErrBadState: %v", err)
			}
			return
		}
		back := encoded(t, es)
		if !bytes.Equal(back, b[:len(back)]) {
			t.Fatalf("re-encoding differs:\n in %q\nout %q", b, back)
		}
	})
}

func unixDial(path string) (*net.UnixConn, error) {
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
}
