package plugin

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/guestmem"
)

func TestHostModuleCoversABI(t *testing.T) {
	for name := range abi.HostFunctions {
		if hostFuncs[name] == nil {
			t.Errorf("host function %s not implemented", name)
		}
	}
	for name := range hostFuncs {
		if _, ok := abi.HostFunctions[name]; !ok {
			t.Errorf("host function %s is not in the ABI", name)
		}
	}
}

func TestLoadSameModule(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	a, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Error("loading the same path and content twice gave two modules")
	}
	if maj, min := a.ABIVersion(); maj != 1 || min != 0 {
		t.Errorf("ABI version %d.%d, want 1.0", maj, min)
	}
	if a.Name() != "echo" || len(a.SHA256()) != 64 {
		t.Errorf("name %q hash %q", a.Name(), a.SHA256())
	}
}

func TestLoadRefused(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	for _, tc := range []struct{ plugin, want string }{
		{"abi2", "plugin abi2 was built for ABI 2.0; this host serves ABI 1.0"},
		{"frobnicate", "plugin frobnicate imports wasmvmm:host@1.frobnicate, which this host does not provide"},
		{"noreset", "plugin noreset lacks required export(s) dev_reset"},
		{"badsig", "plugin badsig imports wasmvmm:host@1.clock_ns with signature () -> (i32); this host provides () -> (i64)"},
	} {
		_, err := rt.Load(context.Background(), pluginPath(tc.plugin))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got error %v, want %q", tc.plugin, err, tc.want)
		}
	}
	// A refused module is not kept: loading it again refuses again.
	if _, err := rt.Load(context.Background(), pluginPath("abi2")); err == nil {
		t.Error("second load of abi2 succeeded")
	}
	if _, err := rt.Load(context.Background(), filepath.Join(t.TempDir(), "missing.wasm")); err == nil {
		t.Error("loading a missing file succeeded")
	}
}

func TestCacheDirPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	got, err := cacheDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(got)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("cache dir mode %v, want 0700", st.Mode().Perm())
	}
	t.Setenv("XDG_CACHE_HOME", filepath.Join(t.TempDir(), "xdg"))
	got, err = cacheDir("")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got, "xdg/wasmvmm/wazero") {
		t.Errorf("default cache dir %s", got)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := cacheDir(f); err == nil {
		t.Error("a file was accepted as cache directory")
	}
}

func TestEchoLifecycle(t *testing.T) {
	h := newTestHost(t, 1<<20)
	rt := func() *Runtime { r, _ := newTestRuntime(t, Config{}); return r }()
	inst := instantiate(t, rt, "echo", h)
	info := inst.Info()
	if info.Name != "test-echo" || info.Version != "1.0.0" || len(info.Properties) != 8 {
		t.Fatalf("info %+v", info)
	}
	err := inst.Realize(
		PropertyValues{"width": int64(8), "port": "0x2f8"}, // compat layer
		PropertyValues{"label": "hello", "extra": true, "big": uint64(1 << 63), "width": "16"},
	)
	if err != nil {
		t.Fatal(err)
	}
	props := inst.Properties()
	for name, want := range map[string]string{"width": "16", "port": "760", "label": `"hello"`, "extra": "true", "enabled": "true", "irq": "4", "big": "9223372036854775808"} {
		if got := props[name].String(); got != want {
			t.Errorf("property %s = %s, want %s", name, got, want)
		}
	}
	if got, want := inst.Regions(), []Region{{abi.RegionPIO, 8}, {abi.RegionMMIO, 0x1000}}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("regions %v, want %v", got, want)
	}
	secs := inst.Sections()
	if len(secs) != 1 || secs[0].Name != "test-echo" || len(secs[0].Fields) != 4 || len(secs[0].Subsections) != 1 {
		t.Fatalf("sections %+v", secs)
	}
	if !inst.FieldExists(&secs[0].Fields[3]) || !inst.FieldExists(&secs[0].Fields[0]) {
		t.Error("extra_reg should exist with extra=true")
	}

	// Registers echo; the plugin sees the resolved width property.
	inst.MMIOWrite(1, 8, 8, 0x1122334455667788)
	if v := inst.MMIORead(1, 8, 8); v != 0x1122334455667788 {
		t.Errorf("reg 1 = %#x", v)
	}
	if v := inst.MMIORead(1, 8, 2); v != 0x7788 {
		t.Errorf("2-byte read = %#x, want masked 0x7788", v)
	}
	if v := inst.MMIORead(1, 0x500, 8); v != 16 {
		t.Errorf("width seen by plugin = %d", v)
	}
	inst.PIOWrite(0, 3, 1, 0x5a)
	if v := inst.PIORead(0, 3, 1); v != 0x5a {
		t.Errorf("pio = %#x", v)
	}

	// vmstate fields are read straight from plugin memory.
	f := secs[0].Fields[0]
	raw, err := inst.ReadMemory(f.Offset, f.Size*f.Count)
	if err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint64(raw[8:]) != 0x1122334455667788 {
		t.Errorf("regs field bytes %x", raw[:16])
	}
	binary.LittleEndian.PutUint64(raw[16:], 0xabcdef)
	if err := inst.WriteMemory(f.Offset, raw); err != nil {
		t.Fatal(err)
	}
	if v := inst.MMIORead(1, 16, 8); v != 0xabcdef {
		t.Errorf("reg 2 after WriteMemory = %#x", v)
	}
	if _, err := inst.ReadMemory(inst.MemorySize()-4, 8); err == nil {
		t.Error("ReadMemory past the end succeeded")
	}
	if err := inst.WriteMemory(^uint32(0), []byte{1, 2}); err == nil {
		t.Error("WriteMemory past the end succeeded")
	}

	// guest_read / guest_write / guest_store / guest_load / guest_read_sg.
	copy(h.mem.Blocks()[0].Mem[0x3000:], "guest says hi")
	inst.MMIOWrite(1, 0x100, 8, 0x3000)
	inst.MMIOWrite(1, 0x108, 8, 13)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != 0 {
		t.Fatalf("guest_read status %d", st)
	}
	if c := inst.MMIORead(1, 0x800, 1); c != 'g' {
		t.Errorf("scratch[0] = %q", rune(c))
	}
	var dirty [4]uint64
	h.mem.Blocks()[0].TakeDirty(dirty[:]) // clear
	inst.MMIOWrite(1, 0x100, 8, 0x5ff8)   // straddles pages 5 and 6
	inst.MMIOWrite(1, 0x110, 8, 16)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != 0 {
		t.Fatalf("guest_write status %d", st)
	}
	if !bytes.Equal(h.mem.Blocks()[0].Mem[0x5ff8:0x6008], []byte("guest says hi\x00\x00\x00")) {
		t.Errorf("guest_write wrote %q", h.mem.Blocks()[0].Mem[0x5ff8:0x6008])
	}
	h.mem.Blocks()[0].TakeDirty(dirty[:])
	if dirty[0] != 1<<5|1<<6 {
		t.Errorf("dirty bitmap %#x, want pages 5 and 6", dirty[0])
	}
	inst.MMIOWrite(1, 0x100, 8, 0x7000)
	inst.MMIOWrite(1, 0x128, 4, 0xfeedface)
	if v := binary.LittleEndian.Uint32(h.mem.Blocks()[0].Mem[0x7000:]); v != 0xfeedface {
		t.Errorf("guest_store wrote %#x", v)
	}
	if v := inst.MMIORead(1, 0x120, 4); v != 0xfeedface {
		t.Errorf("guest_load = %#x", v)
	}
	inst.MMIOWrite(1, 0x100, 8, 1<<40)
	if v := inst.MMIORead(1, 0x120, 2); v != 0xffff || inst.GuestErrors() != 1 {
		t.Errorf("guest_load outside RAM = %#x, errors %d", v, inst.GuestErrors())
	}
	inst.MMIOWrite(1, 0x100, 8, 0x3000)
	inst.MMIOWrite(1, 0x130, 8, 5)
	if n := inst.MMIORead(1, 0x118, 8); n != 5 || inst.MMIORead(1, 0x804, 1) != 't' {
		t.Errorf("guest_read_sg returned %d", int64(n))
	}

	// Interrupt and timer on the VM clock.
	inst.MMIOWrite(1, 0x200, 4, 1)
	if lvl, _ := h.irq(0); !lvl {
		t.Error("irq_set(0, 1) did not raise line 0")
	}
	inst.MMIOWrite(1, 0x200, 4, 0)
	inst.MMIOWrite(1, 0x300, 8, int64ToU(int64(5*time.Millisecond)))
	waitFor(t, "timer", func() bool { return inst.MMIORead(1, 0x308, 4) == 1 })
	if lvl, edges := h.irq(0); !lvl || edges != 2 {
		t.Errorf("after timer: irq %v edges %d", lvl, edges)
	}

	// A paused clock holds the timer.
	h.clock.Pause()
	inst.MMIOWrite(1, 0x300, 8, int64ToU(int64(time.Millisecond)))
	time.Sleep(20 * time.Millisecond)
	if v := inst.MMIORead(1, 0x308, 4); v != 1 {
		t.Errorf("timer fired while paused (count %d)", v)
	}
	h.clock.Resume()
	waitFor(t, "timer after resume", func() bool { return inst.MMIORead(1, 0x308, 4) == 2 })

	// Migration hooks.
	if err := inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	if v := inst.MMIORead(1, 0x510, 4); v != 1 {
		t.Errorf("pre_save count %d", v)
	}
	if err := inst.PostLoad(7); err != nil {
		t.Fatal(err)
	}
	if v := inst.MMIORead(1, 0x518, 4); v != 7 {
		t.Errorf("post_load version %d", v)
	}
	if !inst.SubsectionNeeded(1) || inst.SubsectionNeeded(2) {
		t.Error("subsection_needed")
	}
	if err := inst.Reset(); err != nil {
		t.Fatal(err)
	}
	if inst.MMIORead(1, 8, 8) != 0 || inst.MMIORead(1, 0x508, 4) != 1 {
		t.Error("reset did not clear registers")
	}
	inst.Idle()
	if inst.Err() != nil {
		t.Fatal(inst.Err())
	}
	_ = rt
}

func int64ToU(v int64) uint64 { return uint64(v) }

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

func TestMigrationRegistry(t *testing.T) {
	h := newTestHost(t, 1<<20)
	rt, _ := newTestRuntime(t, Config{})
	reg := NewMigrationRegistry()
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "dev0", Host: h, Migration: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.MMIOWrite(1, 0x710, 4, uint64(abi.ModeCPRTransfer))
	if got := reg.Blockers(abi.ModeCPRTransfer); len(got) != 1 || got[0].Reason != "test blocker" || got[0].Device != "dev0" {
		t.Errorf("cpr blockers %+v", got)
	}
	if got := reg.Blockers(abi.ModeNormal); len(got) != 0 {
		t.Errorf("normal blockers %+v", got)
	}
	inst.MMIOWrite(1, 0x710, 4, 0)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != 0 || len(reg.Blockers(abi.ModeAll)) != 0 {
		t.Errorf("remove blocker: status %d, left %v", st, reg.Blockers(abi.ModeAll))
	}
	if subs := reg.Subscribers(abi.MigrationSetup, abi.ModeNormal); len(subs) != 1 || subs[0].Instance != inst {
		t.Fatalf("subscribers %+v", subs)
	}
	if err := reg.Notify(abi.MigrationSetup, abi.ModeNormal); err != nil {
		t.Errorf("setup: %v", err)
	}
	inst.MMIOWrite(1, 6*8, 8, 0xdead) // the test device vetoes now
	if err := reg.Notify(abi.MigrationSetup, abi.ModeNormal); err == nil || !strings.Contains(err.Error(), "dev_migration_event returned failed") {
		t.Errorf("veto: %v", err)
	}
	if len(reg.Subscribers(abi.MigrationFailed, abi.ModeNormal)) != 0 {
		t.Error("subscribed to an event it did not ask for")
	}
	inst.Close()
	if len(reg.Subscribers(abi.MigrationSetup, abi.ModeNormal)) != 0 {
		t.Error("closed instance still subscribed")
	}
}

func TestPropertyRefusals(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	h := newTestHost(t, 1<<20)
	for _, tc := range []struct {
		props PropertyValues
		want  string
	}{
		{PropertyValues{"colour": "red"}, `device type test-echo has no property "colour"; valid properties: big (u64), enabled (bool), extra (bool), irq (u32), label (string), mode (u8), port (u16), width (u8)`},
		{PropertyValues{"width": "wide"}, `device type test-echo: property "width": expected u8, got string "wide"`},
		{PropertyValues{"width": true}, `device type test-echo: property "width": expected u8, got bool true`},
		{PropertyValues{"label": int64(3)}, `device type test-echo: property "label": expected string, got int64 3`},
		{PropertyValues{"enabled": int64(1)}, `device type test-echo: property "enabled": expected bool, got int64 1`},
		{PropertyValues{"width": int64(256)}, `device type test-echo: property "width": value 256 is out of range for u8 (0..255)`},
		{PropertyValues{"port": int64(-1)}, `device type test-echo: property "port": value -1 is out of range for u16 (0..65535)`},
		{PropertyValues{"irq": "0x100000000"}, `device type test-echo: property "irq": value 4294967296 is out of range for u32 (0..4294967295)`},
	} {
		inst := instantiate(t, rt, "echo", h)
		err := inst.Realize(tc.props)
		if err == nil || err.Error() != "device echo0: "+tc.want {
			t.Errorf("%v: got %v\nwant device echo0: %s", tc.props, err, tc.want)
		}
		if v := inst.MMIORead(1, 8, 4); v != 0xffffffff {
			t.Errorf("refused instance answered %#x", v)
		}
		if err := inst.Realize(); err == nil {
			t.Error("a refused instance realized later")
		}
	}
}

func TestBadVMState(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	h := newTestHost(t, 1<<20)
	for mode, want := range []string{`overlaps field "a"`, `outside memory of`} {
		inst := instantiate(t, rt, "badvmstate", h)
		err := inst.Realize(PropertyValues{"mode": int64(mode)})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "dev_realize returned invalid argument: vmstate_register: vmstate bad") {
			t.Errorf("mode %d: got %v, want …%s…", mode, err, want)
		}
		if len(inst.Sections()) != 0 {
			t.Error("a refused section was kept")
		}
	}
}

func TestOutOfBounds(t *testing.T) {
	// Guest RAM is the middle page of three; the outer ones must stay
	// untouched whatever the plugin asks.
	backing := make([]byte, 3*guestmem.PageSize)
	for k := range backing {
		backing[k] = 0xAA
	}
	blk := &guestmem.Block{Name: "ram", GPA: 0x10000, Mem: backing[guestmem.PageSize : 2*guestmem.PageSize : 2*guestmem.PageSize], FD: -1}
	mem, err := guestmem.New(blk)
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{mem: mem, clock: NewVMClock(true), irqs: map[int]bool{}, backends: map[string]Backend{}}
	rt, _ := newTestRuntime(t, Config{})
	inst := instantiate(t, rt, "oob", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	end := uint64(0x10000 + guestmem.PageSize)
	inst.MMIOWrite(1, 0, 8, end)
	oob := int64(abi.ErrOutOfBounds)
	want := []int64{oob, oob, oob, oob, oob, int64(abi.ErrInvalid), oob, 0}
	for k, w := range want {
		if got := int64(inst.MMIORead(1, uint64(8*k), 8)); got != w {
			t.Errorf("call %d returned %d, want %d", k, got, w)
		}
	}
	if inst.Err() != nil {
		t.Fatalf("instance failed: %v", inst.Err())
	}
	for k := 0; k < guestmem.PageSize; k++ {
		if backing[k] != 0xAA || backing[2*guestmem.PageSize+k] != 0xAA {
			t.Fatalf("host memory outside guest RAM changed at %#x", k)
		}
	}
	if !bytes.Equal(backing[2*guestmem.PageSize-16:2*guestmem.PageSize], bytes.Repeat([]byte{0x55}, 16)) {
		t.Error("the in-bounds write at the end of RAM did not land")
	}
	for k := guestmem.PageSize; k < 2*guestmem.PageSize-16; k++ {
		if backing[k] != 0xAA {
			t.Fatalf("a refused write changed guest RAM at %#x", k)
		}
	}
}

func TestFailures(t *testing.T) {
	// A generous budget for the plugins that fail by themselves, a small
	// one on another runtime for the endless loop.
	rt, logs := newTestRuntime(t, Config{CallDeadline: 10 * time.Second, MemoryLimitPages: 256})
	loopRT, _ := newTestRuntime(t, Config{CallFuel: 60_000_000})
	h := newTestHost(t, 1<<20)

	trap := instantiate(t, rt, "trap", h)
	if err := trap.Realize(); err != nil {
		t.Fatal(err)
	}
	if v := trap.MMIORead(1, 0, 4); v != 0xffffffff {
		t.Errorf("trapping read = %#x", v)
	}
	if err := trap.Err(); err == nil || !strings.Contains(err.Error(), `device trap0: trap in dev_mmio_read: wasm error: unreachable after the plugin reported "panic: runtime error: invalid memory address or nil pointer dereference"`) {
		t.Errorf("trap: %v", err)
	}
	if v := trap.MMIORead(1, 8, 2); v != 0xffff {
		t.Errorf("read after failure = %#x", v)
	}
	trap.MMIOWrite(1, 8, 8, 1)
	if err := trap.PreSave(); err == nil {
		t.Error("PreSave on a failed instance succeeded")
	}

	exit := instantiate(t, rt, "trap", h)
	if err := exit.Realize(); err != nil {
		t.Fatal(err)
	}
	exit.MMIOWrite(1, 0, 4, 1)
	if err := exit.Err(); err == nil || err.Error() != "device trap0: plugin exited with code 3 in dev_mmio_write" {
		t.Errorf("proc_exit: %v", err)
	}
	panicky := instantiate(t, rt, "trap", h)
	if err := panicky.Realize(); err != nil {
		t.Fatal(err)
	}
	if v := panicky.PIORead(0, 0, 2); v != 0xffff {
		t.Errorf("panicking pio read = %#x", v)
	}
	if err := panicky.Err(); err == nil || !strings.Contains(err.Error(), `trap in dev_pio_read: wasm error: unreachable after the plugin reported "panic: device on fire`) {
		t.Errorf("panic: %v", err)
	}

	loop := instantiate(t, loopRT, "loop", h)
	if err := loop.Realize(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	loop.PIOWrite(0, 0, 1, 1)
	took := time.Since(start)
	if took > 5*time.Second {
		t.Errorf("endless call stopped after %v (budget: 60M iterations, about 40ms)", took)
	}
	t.Logf("endless loop stopped after %v", took)
	if err := loop.Err(); err == nil || err.Error() != "device loop0: dev_pio_write ran past its per-call budget of 60000000 loop iterations (about 40ms of plugin CPU)" {
		t.Errorf("loop: %v", err)
	}
	if v := loop.PIORead(0, 0, 1); v != 0xff {
		t.Errorf("loop read after failure = %#x", v)
	}

	hog := instantiate(t, rt, "hog", h)
	if err := hog.Realize(); err != nil {
		t.Fatal(err)
	}
	hog.MMIOWrite(1, 0, 4, 1)
	if err := hog.Err(); err == nil || !strings.Contains(err.Error(), `device hog0: trap in dev_mmio_write: wasm error: unreachable after the plugin reported "fatal error: out of memory"`) {
		t.Errorf("hog: %v", err)
	}

	for _, name := range []string{"trap0", "hog0"} {
		if n := logs.count("device=" + name); n == 0 {
			t.Errorf("nothing logged for %s", name)
		}
	}
	if n := logs.count("device failed"); n != 4 {
		t.Errorf("%d failure log lines, want 4 (one per failed instance of this runtime)", n)
	}

	// The runtime and other instances go on.
	_, echo := realizeEchoIn(t, rt, h)
	echo.MMIOWrite(1, 0, 8, 42)
	if v := echo.MMIORead(1, 0, 8); v != 42 {
		t.Errorf("echo after failures = %d", v)
	}
}

func realizeEchoIn(t *testing.T, rt *Runtime, h *testHost) (*Runtime, *Instance) {
	inst := instantiate(t, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	return rt, inst
}

func TestCharBackendReady(t *testing.T) {
	h := newTestHost(t, 1<<20)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	defer outR.Close()
	console := backend.NewIO("console", inR, outW)
	defer console.Close()
	h.backends["console"] = console
	fdb, err := backend.NewFile("console-file", filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer fdb.Close()
	preserved := NewFDRegistry()
	rt, _ := newTestRuntime(t, Config{})
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "uart", Host: h, Preserved: preserved})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	if b := inst.Backends(); len(b) != 1 || b[0].Name != "console" || b[0].Kind != abi.BackendChar {
		t.Fatalf("backends %+v", b)
	}
	// 300 bytes through a device buffer of 64: the device stops reading
	// when full and watches again when the guest makes room.
	input := bytes.Repeat([]byte("hi! 0123456789\n"), 20)
	if _, err := inW.Write(input); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "input delivered", func() bool { return inst.MMIORead(1, 0x520, 4)&uint64(abi.EventReadable) != 0 })
	var got []byte
	waitFor(t, "all input", func() bool {
		if c := inst.MMIORead(1, 0x708, 8); c != ^uint64(0) {
			got = append(got, byte(c))
		}
		return len(got) == len(input)
	})
	if !bytes.Equal(got, input) {
		t.Errorf("read %q", got)
	}
	inst.MMIOWrite(1, 0x700, 1, 'X')
	buf := make([]byte, 1)
	outR.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := outR.Read(buf); err != nil || buf[0] != 'X' {
		t.Errorf("backend output %q, %v", buf, err)
	}
	// A pipe backend has no fd to preserve.
	inst.MMIOWrite(1, 0x720, 4, 7)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != int64(abi.ErrUnsupported) {
		t.Errorf("fd_preserve of a pipe backend: %d", st)
	}
	if len(preserved.Preserved()) != 0 {
		t.Error("recorded a refused fd")
	}
}

func TestFDPreserve(t *testing.T) {
	h := newTestHost(t, 1<<20)
	fb, err := backend.NewFile("console", filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	h.backends["console"] = fb
	preserved := NewFDRegistry()
	rt, _ := newTestRuntime(t, Config{})
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "uart", Host: h, Preserved: preserved})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.MMIOWrite(1, 0x720, 4, 7)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != 0 {
		t.Fatalf("fd_preserve status %d", st)
	}
	inst.MMIOWrite(1, 0x720, 4, 7)
	if st := int64(inst.MMIORead(1, 0x118, 8)); st != int64(abi.ErrExists) {
		t.Errorf("second fd_preserve status %d", st)
	}
	p := preserved.Preserved()
	if len(p) != 1 || p[0].Name != "console-fd" || p[0].ID != 7 || p[0].Device != "uart" || p[0].BackendName != "console" || p[0].Backend != Backend(fb) {
		t.Errorf("preserved %+v", p)
	}
}

func TestHotPathAllocations(t *testing.T) {
	// Metered calls allocate nothing on either side (wazero's own
	// termination checks allocated for their per-call watcher goroutine).
	rt, _ := newTestRuntime(t, Config{})
	inst := instantiate(t, rt, "echo", newTestHost(t, 1<<16))
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(){
		"MMIORead":  func() { inst.MMIORead(1, 8, 4) },
		"MMIOWrite": func() { inst.MMIOWrite(1, 8, 4, 1) },
		"PIORead":   func() { inst.PIORead(0, 1, 1) },
		"PIOWrite":  func() { inst.PIOWrite(0, 1, 1, 1) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s allocates %.1f times per call", name, n)
		}
	}
}

func TestRuntimeCloseClosesInstances(t *testing.T) {
	rt, err := NewRuntime(context.Background(), Config{CacheDir: cacheRoot})
	if err != nil {
		t.Fatal(err)
	}
	h := newTestHost(t, 1<<16)
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "e", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.MMIOWrite(1, 0x300, 8, uint64(time.Hour)) // a pending timer
	if err := rt.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := inst.MMIORead(1, 0, 4); v != 0xffffffff {
		t.Errorf("read after runtime close = %#x", v)
	}
	if inst.Err() != nil {
		t.Errorf("a closed (not failed) instance reports %v", inst.Err())
	}
	if _, err := rt.Load(context.Background(), pluginPath("echo")); err == nil {
		t.Error("load after close succeeded")
	}
}

func TestConcurrentCalls(t *testing.T) {
	h := newTestHost(t, 1<<20)
	rt, _ := newTestRuntime(t, Config{})
	inst := instantiate(t, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	const workers, writes = 4, 500
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for k := range writes {
				inst.MMIOWrite(1, uint64(8*w), 8, uint64(k))
				inst.MMIORead(1, uint64(8*w), 8)
				if k%50 == 0 {
					inst.MMIOWrite(1, 0x300, 8, uint64(time.Microsecond)) // timers race with calls
				}
			}
		}()
	}
	for range workers {
		<-done
	}
	var counter *abi.Field
	for k, f := range inst.Sections()[0].Fields {
		if f.Name == "counter" {
			counter = &inst.Sections()[0].Fields[k]
		}
	}
	raw, err := inst.ReadMemory(counter.Offset, 4)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint32(raw); n != workers*writes {
		t.Errorf("counter %d, want %d", n, workers*writes)
	}
	waitFor(t, "timers", func() bool { return inst.MMIORead(1, 0x308, 4) > 0 })
	if inst.Err() != nil {
		t.Fatal(inst.Err())
	}
}

// TestSetupAndCallBudgets: _initialize, dev_describe and dev_realize run
// under SetupFuel, the device's calls under CallFuel.
func TestSetupAndCallBudgets(t *testing.T) {
	h := newTestHost(t, 1<<20)
	small, _ := newTestRuntime(t, Config{SetupFuel: 100, CallFuel: 1 << 30})
	m, err := small.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Instantiate(context.Background(), InstanceConfig{Name: "e", Host: h})
	if err == nil || !strings.Contains(err.Error(), "device e: _initialize ran past its per-call budget of 100 loop iterations") {
		t.Fatalf("instantiate with a setup budget of 100: %v", err)
	}

	rt, _ := newTestRuntime(t, Config{SetupFuel: 1_000_000, CallFuel: 500})
	if rt.CallFuel() != 500 {
		t.Errorf("CallFuel() = %d", rt.CallFuel())
	}
	inst := instantiate(t, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.MMIOWrite(1, 0x610, 8, 400) // a 400-iteration loop fits
	if err := inst.Err(); err != nil {
		t.Fatal(err)
	}
	inst.MMIOWrite(1, 0x610, 8, 600)
	if err := inst.Err(); err == nil || !strings.Contains(err.Error(), "device echo0: dev_mmio_write ran past its per-call budget of 500 loop iterations (about 333ns of plugin CPU)") {
		t.Errorf("600 iterations with a budget of 500: %v", err)
	}

	nometer, _ := newTestRuntime(t, Config{NoDeadline: true})
	if nometer.CallFuel() != 0 {
		t.Errorf("CallFuel() of an unmetered runtime = %d", nometer.CallFuel())
	}
}

// TestConcurrentLoadsShareOneModule: loads of the same file at once get one
// compiled module that keeps working (a second compilation of the same bytes
// shares wazero's engine entry; closing it freed the code the first ran).
func TestConcurrentLoadsShareOneModule(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	var wg sync.WaitGroup
	mods := make([]*Module, 8)
	errs := make([]error, 8)
	for i := range mods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			mods[i], errs[i] = rt.Load(context.Background(), pluginPath("echo"))
		}(i)
	}
	wg.Wait()
	for i := range mods {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if mods[i] != mods[0] {
			t.Fatalf("load %d got another module", i)
		}
	}
	inst := instantiate(t, rt, "echo", newTestHost(t, 1<<20))
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.MMIORead(1, 0, 4)
	if err := inst.Err(); err != nil {
		t.Fatal(err)
	}
}
