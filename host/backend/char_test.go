package backend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"wasmvmm/abi"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func readAll(t *testing.T, c *Char, n int) []byte {
	t.Helper()
	var got []byte
	buf := make([]byte, 4096)
	waitFor(t, "input", func() bool {
		k, err := c.TryRead(buf)
		if err != nil && !errors.Is(err, ErrWouldBlock) {
			t.Fatal(err)
		}
		got = append(got, buf[:k]...)
		return len(got) >= n
	})
	return got
}

func TestIOPipe(t *testing.T) {
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	c := NewIO("console", inR, outW)
	var notified atomic.Int32
	c.Watch(func() { notified.Add(1) })
	if c.Kind() != abi.BackendChar || c.FD() != -1 {
		t.Errorf("kind %v fd %d", c.Kind(), c.FD())
	}
	if n, err := c.TryRead(make([]byte, 4)); n != 0 || !errors.Is(err, ErrWouldBlock) {
		t.Errorf("empty read: %d, %v", n, err)
	}
	var wb interface{ WouldBlock() bool }
	if !errors.As(ErrWouldBlock, &wb) || !wb.WouldBlock() {
		t.Error("ErrWouldBlock does not say so")
	}
	if c.Ready() != abi.EventWritable {
		t.Errorf("ready %v with no input", c.Ready())
	}
	inW.Write([]byte("hello"))
	waitFor(t, "readable", func() bool { return c.Ready()&abi.EventReadable != 0 })
	if notified.Load() == 0 {
		t.Error("watcher not notified of input")
	}
	if got := readAll(t, c, 5); string(got) != "hello" {
		t.Errorf("read %q", got)
	}
	if n, err := c.Write([]byte("world")); n != 5 || err != nil {
		t.Errorf("write: %d, %v", n, err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(outR, buf); err != nil || string(buf) != "world" {
		t.Errorf("output %q, %v", buf, err)
	}
	inW.Close()
	waitFor(t, "hangup", func() bool { return c.Ready()&abi.EventHangup != 0 })
	done := make(chan error)
	go func() { done <- c.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not stop the goroutines")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("write after close succeeded")
	}
}

func TestInputBackpressure(t *testing.T) {
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := NewIO("console", inR, nil)
	defer c.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), (BufferSize+BufferSize/2)/16)
	go func() { inW.Write(data); inW.Close() }()
	waitFor(t, "full buffer", func() bool { return c.Buffered() == BufferSize })
	time.Sleep(20 * time.Millisecond)
	if n := c.Buffered(); n != BufferSize {
		t.Fatalf("buffered %d, bound %d", n, BufferSize)
	}
	if got := readAll(t, c, len(data)); !bytes.Equal(got, data) {
		t.Errorf("read %d bytes, want %d in order", len(got), len(data))
	}
}

func TestOutputBound(t *testing.T) {
	// A writer that never drains: Write accepts what fits, then refuses.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := NewIO("slow", nil, w)
	defer c.Close()
	total := 0
	chunk := make([]byte, 4096)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := c.Write(chunk)
		total += n
		if errors.Is(err, ErrWouldBlock) {
			break
		}
	}
	if c.Ready()&abi.EventWritable != 0 {
		t.Error("writable with a full output buffer")
	}
	// The pipe (64 KiB) plus the buffer bound what was accepted.
	if total > BufferSize+1<<20 {
		t.Errorf("accepted %d bytes without bound", total)
	}
	var notified atomic.Int32
	c.Watch(func() { notified.Add(1) })
	io.ReadFull(r, make([]byte, 64<<10))
	waitFor(t, "writable again", func() bool { return c.Ready()&abi.EventWritable != 0 })
	waitFor(t, "drain notification", func() bool { return notified.Load() > 0 })
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	os.WriteFile(path, []byte("old\n"), 0o600)
	c, err := NewFile("log", path)
	if err != nil {
		t.Fatal(err)
	}
	if c.FD() < 0 {
		t.Error("file backend has no fd")
	}
	if _, err := c.TryRead(make([]byte, 1)); !errors.Is(err, ErrWouldBlock) {
		t.Errorf("file backend input: %v", err)
	}
	c.Write([]byte("new\n"))
	waitFor(t, "file written", func() bool {
		b, _ := os.ReadFile(path)
		return string(b) == "old\nnew\n"
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFile("bad", filepath.Join(t.TempDir(), "no", "dir")); err == nil {
		t.Error("file in a missing directory opened")
	}
}

func TestSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.sock")
	c, err := NewSocket("console", path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", st, err)
	}
	if c.FD() < 0 {
		t.Error("socket backend has no fd")
	}
	// No client: output is discarded.
	if n, err := c.Write([]byte("lost")); n != 4 || err != nil {
		t.Errorf("write without client: %d, %v", n, err)
	}
	for round := range 2 { // the second round checks reconnection
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("abc"))
		if got := readAll(t, c, 3); string(got) != "abc" {
			t.Errorf("round %d: read %q", round, got)
		}
		// A second client is refused while the first is connected.
		other, err := net.Dial("unix", path)
		if err == nil {
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := other.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("second client: %v", err)
			}
			other.Close()
		}
		c.Write([]byte("xyz"))
		buf := make([]byte, 3)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "xyz" {
			t.Errorf("round %d: client got %q, %v", round, buf, err)
		}
		conn.Close()
		waitFor(t, "disconnect", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.sink == nil
		})
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
	// A stale socket is replaced; a regular file is not.
	c2, err := NewSocket("again", path)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	plain := filepath.Join(t.TempDir(), "file")
	os.WriteFile(plain, nil, 0o600)
	if _, err := NewSocket("bad", plain); err == nil {
		t.Error("a regular file was replaced by a socket")
	}
}

func TestStdioClose(t *testing.T) {
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	defer inR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	defer outW.Close()
	c := NewStdio("stdio", inR, outW)
	inW.Write([]byte("k"))
	if got := readAll(t, c, 1); string(got) != "k" {
		t.Errorf("read %q", got)
	}
	done := make(chan error)
	go func() { done <- c.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt the blocked read")
	}
	// The files stay open: they belong to the caller.
	if _, err := outW.Write([]byte("still open")); err != nil {
		t.Errorf("stdout closed by the backend: %v", err)
	}
	inW.Write([]byte("m"))
	inR.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := inR.Read(make([]byte, 1)); err != nil {
		t.Errorf("stdin unusable after Close: %v", err)
	}
}

// slowWriter takes its time, like a terminal or a busy disk.
type slowWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestCloseWritesQueuedOutput: output queued just before Close (a guest's
// last line before power-off) reaches the sink.
func TestCloseWritesQueuedOutput(t *testing.T) {
	w := &slowWriter{}
	c := NewIO("t", nil, w)
	for i := 0; i < 5; i++ {
		if _, err := c.Write([]byte(fmt.Sprintf("line %d\n", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if got := w.buf.String(); got != "line 0\nline 1\nline 2\nline 3\nline 4\n" {
		t.Fatalf("after Close the sink has %q", got)
	}
}
