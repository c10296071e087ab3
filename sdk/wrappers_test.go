//go:build !wasip1

package sdk_test

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
)

// image is a block backend over a file's bytes held in memory.
type image struct {
	fd      int // a real descriptor for fd_preserve
	mu      sync.Mutex
	data    []byte
	flushes int
}

func (m *image) Kind() abi.BackendKind { return abi.BackendBlock }

func (m *image) FD() int { return m.fd }

func (m *image) PreadSG(bufs [][]byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, b := range bufs {
		n += copy(b, m.data[off+int64(n):])
	}
	return n, nil
}

func (m *image) PwriteSG(bufs [][]byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, b := range bufs {
		n += copy(m.data[off+int64(n):], b)
	}
	return n, nil
}

func (m *image) Flush() error { m.mu.Lock(); m.flushes++; m.mu.Unlock(); return nil }

func (m *image) Discard(off, n int64) error { return m.WriteZeroes(off, n) }

func (m *image) WriteZeroes(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func (m *image) Size() (int64, error) { return int64(len(m.data)), nil }

// link is a net backend holding frames in memory.
type link struct {
	mu       sync.Mutex
	sent     [][]byte
	incoming [][]byte
}

func (l *link) Kind() abi.BackendKind { return abi.BackendNet }

func (l *link) SendSG(bufs [][]byte) (int, error) {
	var frame []byte
	for _, b := range bufs {
		frame = append(frame, b...)
	}
	l.mu.Lock()
	l.sent = append(l.sent, frame)
	l.mu.Unlock()
	return len(frame), nil
}

func (l *link) RecvSG(bufs [][]byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.incoming) == 0 {
		return 0, plugin.ErrWouldBlock
	}
	frame := l.incoming[0]
	l.incoming = l.incoming[1:]
	rest := frame
	for _, b := range bufs {
		rest = rest[copy(b, rest):]
	}
	return len(frame), nil
}

type wrapHost struct {
	exampleHost
	mem  *guestmem.Memory
	disk *image
	net  *link
}

func (h *wrapHost) Memory() *guestmem.Memory { return h.mem }

func (h *wrapHost) Backend(kind abi.BackendKind, name string) (plugin.Backend, error) {
	if name == "disk" && kind == abi.BackendBlock {
		return h.disk, nil
	}
	if name == "net" && kind == abi.BackendNet {
		return h.net, nil
	}
	return nil, plugin.ErrNoBackend
}

func buildWrapcheck(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	root, err := pluginbuild.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "wrapcheck.wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, "./sdk/internal/wrapcheck")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build wrapcheck: %v\n%s", err, b)
	}
	return out
}

// TestHostWrappers runs every SDK host-call wrapper against the real host
// functions (guest RAM from guestmem, a block image, timers, migration
// registry) and checks both what the plugin saw and what the host holds.
func TestHostWrappers(t *testing.T) {
	path := buildWrapcheck(t)
	ctx := context.Background()
	rt, err := plugin.NewRuntime(ctx, plugin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	mod, err := rt.Load(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	block, err := guestmem.Alloc("ram", 0, 1<<20, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := guestmem.New(block)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	file, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	host := &wrapHost{exampleHost: exampleHost{clock: plugin.NewVMClock(true)}, mem: mem,
		disk: &image{fd: int(file.Fd()), data: make([]byte, 4096)}, net: &link{}}
	logs := &syncBuffer{}
	migration := plugin.NewMigrationRegistry()
	preserved := plugin.NewFDRegistry()
	inst, err := mod.Instantiate(ctx, plugin.InstanceConfig{Name: "wrap0", Host: host, Migration: migration, Preserved: preserved,
		Logger: hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(); err != nil {
		t.Fatalf("realize: %v\n%s", err, logs)
	}
	run := func(cmd uint64) (uint64, uint64) {
		inst.MMIOWrite(0, 0, 8, cmd)
		return inst.MMIORead(0, 0, 8), inst.MMIORead(0, 8, 8)
	}
	defer func() {
		if err := inst.Err(); err != nil {
			t.Errorf("instance failed: %v\n%s", err, logs)
		}
	}()

	if r, _ := run(1); r != 1 {
		t.Fatalf("GuestWrite/GuestRead: %#x", r)
	}
	got := make([]byte, 12)
	if _, err := mem.ReadAt(got, 0x1000); err != nil || string(got) != "hello, guest" {
		t.Fatalf("guest RAM at 0x1000: %q, %v", got, err)
	}
	if r, _ := run(2); r != 0xdeadbeef {
		t.Fatalf("GuestStore/GuestLoad: %#x", r)
	}
	if v := binary.LittleEndian.Uint32(block.Mem[0x2000:]); v != 0xdeadbeef {
		t.Fatalf("guest RAM at 0x2000: %#x", v)
	}
	if r, _ := run(3); r != ^uint64(0) {
		t.Fatalf("GuestLoad out of bounds: %#x", r)
	}
	if r, _ := run(4); int64(r) != int64(abi.ErrOutOfBounds) {
		t.Fatalf("GuestRead out of bounds: status %d", int64(r))
	}
	if n, ok := run(5); n != 8 || ok != 1 {
		t.Fatalf("SG: wrote %d, read back equal %d", n, ok)
	}
	if string(block.Mem[0x3000:0x3003]) != "abc" || string(block.Mem[0x4000:0x4005]) != "defgh" {
		t.Fatalf("SG scatter: %q %q", block.Mem[0x3000:0x3003], block.Mem[0x4000:0x4005])
	}

	// Block backend: write guest bytes to the image and read them back.
	copy(block.Mem[0x3000:], "DISKDATA")
	if n, _ := run(10); n != 8 {
		t.Fatalf("PwriteSG/PreadSG: %d", int64(n))
	}
	if string(host.disk.data[512:520]) != "DISKDATA" || string(block.Mem[0x4000:0x4008]) != "DISKDATA" {
		t.Fatalf("image %q, guest %q", host.disk.data[512:520], block.Mem[0x4000:0x4008])
	}
	if n, _ := run(11); n != 4096 {
		t.Fatalf("Size: %d", int64(n))
	}
	host.disk.data[0], host.disk.data[1030] = 1, 1
	if r, _ := run(12); r != 1 || host.disk.flushes != 1 || host.disk.data[0] != 0 || host.disk.data[1030] != 0 {
		t.Fatalf("Flush/Discard/WriteZeroes: %d, flushes %d", int64(r), host.disk.flushes)
	}

	// Net backend: frames gathered from and scattered to guest memory,
	// with the skipped header bytes.
	copy(block.Mem[0x3000:], "HDframe!")
	if n, _ := run(17); n != 6 || len(host.net.sent) != 1 || string(host.net.sent[0]) != "frame!" {
		t.Fatalf("SendSG: %d, sent %q", int64(n), host.net.sent)
	}
	if r, _ := run(18); int64(r) != int64(abi.ErrAgain) {
		t.Fatalf("RecvSG with nothing waiting: %d", int64(r))
	}
	host.net.mu.Lock()
	host.net.incoming = append(host.net.incoming, []byte("incoming"))
	host.net.mu.Unlock()
	if n, _ := run(18); n != 8 || string(block.Mem[0x5004:0x500c]) != "incoming" {
		t.Fatalf("RecvSG: %d, guest %q", int64(n), block.Mem[0x5000:0x5010])
	}

	// Interrupt pulse and fd preservation.
	if r, _ := run(15); r != 0 || host.raiseCount() != 1 || host.irq() {
		t.Fatalf("Pulse: status %d, raises %d, level %v", int64(r), host.raiseCount(), host.irq())
	}
	if r, _ := run(16); r != 0 {
		t.Fatalf("PreserveFD: status %d", int64(r))
	}
	if p := preserved.Preserved(); len(p) != 1 || p[0].Name != "disk-image" || p[0].ID != 7 || p[0].BackendName != "disk" {
		t.Fatalf("preserved: %+v", p)
	}
	if r, _ := run(16); int64(r) != int64(abi.ErrExists) {
		t.Fatalf("PreserveFD twice: status %d", int64(r))
	}

	// Timer: fires after its deadline on the VM clock.
	before, _ := run(13)
	if r, _ := run(6); r != 0 {
		t.Fatalf("Timer.Arm: status %d", int64(r))
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if v := inst.MMIORead(0, 8, 8); v == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("timer 3 did not fire")
		}
		time.Sleep(time.Millisecond)
	}
	if after, _ := run(13); after < before+1_000_000 {
		t.Fatalf("VM clock %d after the timer, armed at %d + 1 ms", after, before)
	}

	// Migration blockers and notifications.
	if r, _ := run(7); r != 0 {
		t.Fatalf("AddBlocker: status %d", int64(r))
	}
	bl := migration.Blockers(abi.ModeCPRTransfer)
	if len(bl) != 1 || bl[0].Reason != "wrapcheck cannot be transferred" || len(migration.Blockers(abi.ModeNormal)) != 0 {
		t.Fatalf("blockers: %+v", bl)
	}
	if r, _ := run(8); r != 0 || len(migration.Blockers(abi.ModeCPRTransfer)) != 0 {
		t.Fatalf("Blocker.Remove: status %d, blockers %+v", int64(r), migration.Blockers(abi.ModeCPRTransfer))
	}
	if r, _ := run(9); r != 0 {
		t.Fatalf("SubscribeMigration: status %d", int64(r))
	}
	if err := migration.Notify(abi.MigrationSetup, abi.ModeNormal); err != nil {
		t.Fatalf("notify setup: %v", err)
	}
	if v := inst.MMIORead(0, 8, 8); v != uint64(abi.MigrationSetup)<<8|uint64(abi.ModeNormal) {
		t.Fatalf("event seen: %#x", v)
	}
	run(14)
	if err := migration.Notify(abi.MigrationSetup, abi.ModeNormal); err == nil {
		t.Fatal("veto from MigrationEvent ignored")
	}
	if !strings.Contains(logs.String(), "wrapcheck vetoes") {
		t.Fatalf("veto reason not logged:\n%s", logs)
	}
}
