package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"

	"wasmvmm/host/plugin/meter"
)

// mmioDevice is the interface the machine calls for MMIO; both a native Go
// device and *Instance implement it, so the benchmarks compare like with
// like.
type mmioDevice interface {
	MMIORead(region int, off uint64, size int) uint64
	MMIOWrite(region int, off uint64, size int, v uint64)
}

// nativeEcho is the test device's register file in Go, behind the same
// lock discipline as an Instance.
type nativeEcho struct {
	mu   sync.Mutex
	regs [8]uint64
}

func (d *nativeEcho) MMIORead(region int, off uint64, size int) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 64 {
		return d.regs[off/8] & sizeMask(size)
	}
	return ^uint64(0)
}

func (d *nativeEcho) MMIOWrite(region int, off uint64, size int, v uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 64 {
		d.regs[off/8] = v
	}
}

var sink uint64

// nsPerOp times n runs of f.
func nsPerOp(n int, f func()) float64 {
	start := time.Now()
	for range n {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n)
}

func nativeReadNs() float64 {
	var dev mmioDevice = &nativeEcho{}
	return nsPerOp(2_000_000, func() { sink += dev.MMIORead(1, 8, 4) })
}

func nativeWriteNs() float64 {
	var dev mmioDevice = &nativeEcho{}
	return nsPerOp(2_000_000, func() { dev.MMIOWrite(1, 8, 4, 7) })
}

// modes are the ways of running a plugin the benchmarks compare.
var modes = []struct {
	name string
	cfg  Config
}{
	{"fuel", Config{}},                    // the default: metered by package meter
	{"nometer", Config{NoDeadline: true}}, // no way to stop a runaway plugin
	// wazero's termination checks (the mechanism the meter replaced),
	// without any deadline armed: its per-call goroutine alone.
	{"enginechecks", Config{NoDeadline: true, engineChecks: true}},
}

func benchInstance(b *testing.B, cfg Config) *Instance {
	rt, _ := newTestRuntime(b, cfg)
	h := newTestHost(b, 1<<20)
	inst := instantiate(b, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		b.Fatal(err)
	}
	return inst
}

// BenchmarkMMIORead: one host->plugin dev_mmio_read call through the
// mmioDevice interface, per mode, with the ratio to the native Go device
// measured in the same run.
func BenchmarkMMIORead(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			var dev mmioDevice = benchInstance(b, m.cfg)
			native := nativeReadNs()
			b.ResetTimer()
			for b.Loop() {
				sink += dev.MMIORead(1, 8, 4)
			}
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(native, "native-ns/op")
			b.ReportMetric(perOp/native, "x-native")
		})
	}
}

// BenchmarkMMIOWrite is BenchmarkMMIORead for dev_mmio_write.
func BenchmarkMMIOWrite(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			var dev mmioDevice = benchInstance(b, m.cfg)
			native := nativeWriteNs()
			b.ResetTimer()
			for b.Loop() {
				dev.MMIOWrite(1, 8, 4, 7)
			}
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(native, "native-ns/op")
			b.ReportMetric(perOp/native, "x-native")
		})
	}
}

// interleaved times a and b in alternating chunks of n calls each per
// benchmark op, so that a shared host's changing load hits both alike, and
// returns the mean ns per call of each.
func interleaved(b *testing.B, n int, fa, fb func()) (nsA, nsB float64) {
	var ta, tb time.Duration
	for b.Loop() {
		t0 := time.Now()
		for range n {
			fa()
		}
		t1 := time.Now()
		for range n {
			fb()
		}
		ta += t1.Sub(t0)
		tb += time.Since(t1)
	}
	calls := float64(b.N) * float64(n)
	return float64(ta.Nanoseconds()) / calls, float64(tb.Nanoseconds()) / calls
}

// BenchmarkStopOverhead reports what each way of being able to stop a
// plugin adds to one MMIO read over unmetered code, measured interleaved
// with the unmetered instance (one op: 1000 calls of each).
func BenchmarkStopOverhead(b *testing.B) {
	base := benchInstance(b, modes[1].cfg)
	for _, m := range []int{0, 2} {
		b.Run(modes[m].name, func(b *testing.B) {
			inst := benchInstance(b, modes[m].cfg)
			ns, baseNs := interleaved(b, 1000,
				func() { sink += inst.MMIORead(1, 8, 4) },
				func() { sink += base.MMIORead(1, 8, 4) })
			b.ReportMetric(ns, "ns/call")
			b.ReportMetric(baseNs, "nometer-ns/call")
			b.ReportMetric(ns-baseNs, "overhead-ns/call")
		})
	}
}

// BenchmarkFuelSet is the cost of arming the budget before a call: one
// api.MutableGlobal.Set on the instance's fuel global.
func BenchmarkFuelSet(b *testing.B) {
	inst := benchInstance(b, Config{})
	for b.Loop() {
		inst.fuel.Set(12345)
	}
}

// BenchmarkFuelLoop runs loops inside the plugin (100,000 iterations per
// call) with and without the meter, interleaved: "loop" is a loop over a
// Go array (one memory increment per iteration), "call" calls a small Go
// function per iteration. The difference of ns/iteration is the fuel
// check's cost.
func BenchmarkFuelLoop(b *testing.B) {
	const iters = 100_000
	for _, kind := range []struct {
		name string
		reg  uint64
	}{{"loop", 0x610}, {"call", 0x618}} {
		b.Run(kind.name, func(b *testing.B) {
			metered := benchInstance(b, modes[0].cfg)
			plain := benchInstance(b, modes[1].cfg)
			ns, plainNs := interleaved(b, 1,
				func() { metered.MMIOWrite(1, kind.reg, 8, iters) },
				func() { plain.MMIOWrite(1, kind.reg, 8, iters) })
			if err := errors.Join(metered.Err(), plain.Err()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(ns/iters, "fuel-ns/iteration")
			b.ReportMetric(plainNs/iters, "nometer-ns/iteration")
			b.ReportMetric((ns-plainNs)/iters, "check-ns/iteration")
		})
	}
}

// BenchmarkHostCall: the plugin calls clock_ns 1000 times per export call;
// the metric is the cost of one plugin->host call, compared with a native
// Go loop calling the same Clock through its interface.
func BenchmarkHostCall(b *testing.B) {
	const calls = 1000
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			inst := benchInstance(b, m.cfg)
			var clock Clock = NewVMClock(true)
			native := nsPerOp(1_000_000, func() { sink += uint64(clock.Now()) })
			b.ResetTimer()
			for b.Loop() {
				inst.MMIOWrite(1, 0x600, 8, calls)
			}
			perCall := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / calls
			b.ReportMetric(perCall, "ns/hostcall")
			b.ReportMetric(native, "native-ns/call")
			b.ReportMetric(perCall/native, "x-native")
		})
	}
}

// BenchmarkLoad measures load + instantiate + realize of a plugin: cold
// (no caches) and warm (a fresh Runtime whose cache directory holds the
// instrumented module and the compiled code), each with a fresh Runtime
// per op, for the echo test plugin and, when present, the real plugins
// under bin/plugins (go run ./host/cmd/wasmvmm build-plugins). The warm
// runs also report their phases: NewRuntime + Load (wazero's
// CompileModule, on a cache hit: decode, validate, read the compiled code)
// and Instantiate + Realize; "nometer" is the warm path without the meter
// (no instrumented copy to read).
func BenchmarkLoad(b *testing.B) {
	type phases struct{ load, inst time.Duration }
	load := func(b *testing.B, path string, cfg Config, ph *phases) {
		start := time.Now()
		rt, err := NewRuntime(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer rt.Close(context.Background())
		m, err := rt.Load(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		loaded := time.Now()
		inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "e", Host: newTestHost(b, 1<<16)})
		if err != nil {
			b.Fatal(err)
		}
		// Realize may fail for a real plugin without its backends; the
		// figure is still the time to get there.
		_ = inst.Realize()
		ph.load += loaded.Sub(start)
		ph.inst += time.Since(loaded)
	}
	plugins := []string{pluginPath("echo")}
	real, _ := filepath.Glob("../../bin/plugins/*.wasm")
	plugins = append(plugins, real...)
	for _, path := range plugins {
		name := strings.TrimSuffix(filepath.Base(path), ".wasm")
		var coldMs float64
		b.Run(name+"/cold", func(b *testing.B) {
			var ph phases
			for b.Loop() {
				load(b, path, Config{NoCache: true}, &ph)
			}
			coldMs = float64(b.Elapsed().Milliseconds()) / float64(b.N)
			b.ReportMetric(coldMs, "ms/load")
		})
		for _, mode := range []struct {
			name string
			cfg  Config
		}{{"warm", Config{}}, {"warm-nometer", Config{NoDeadline: true}}} {
			b.Run(name+"/"+mode.name, func(b *testing.B) {
				cfg := mode.cfg
				cfg.CacheDir = b.TempDir()
				var ph phases
				load(b, path, cfg, &ph) // fill the caches
				ph = phases{}
				b.ResetTimer()
				for b.Loop() {
					load(b, path, cfg, &ph)
				}
				warm := float64(b.Elapsed().Microseconds()) / 1000 / float64(b.N)
				b.ReportMetric(warm, "ms/load")
				b.ReportMetric(float64(ph.load.Microseconds())/1000/float64(b.N), "ms-compile")
				b.ReportMetric(float64(ph.inst.Microseconds())/1000/float64(b.N), "ms-instantiate")
				if coldMs > 0 {
					b.ReportMetric(warm/coldMs, "x-cold")
				}
			})
		}
	}
}

// rssBytes reads the resident set size from /proc/self/smaps_rollup.
func rssBytes(tb testing.TB) int64 {
	data, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Rss:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb * 1024
		}
	}
	tb.Fatal("no Rss in smaps_rollup")
	return 0
}

// BenchmarkInstanceRSS measures the resident memory each extra realized
// instance of an already compiled module adds (20 instances), against the
// same number of native devices, and against the 4 MiB goal.
func BenchmarkInstanceRSS(b *testing.B) {
	const n = 20
	rt, _ := newTestRuntime(b, Config{})
	h := newTestHost(b, 1<<16)
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		b.Fatal(err)
	}
	warm, err := m.Instantiate(context.Background(), InstanceConfig{Name: "warm", Host: h})
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	settle := func() int64 {
		runtime.GC()
		debug.FreeOSMemory()
		return rssBytes(b)
	}
	var perInst, perNative float64
	var pages uint32
	for b.Loop() {
		before := settle()
		natives := make([]*nativeEcho, n)
		for k := range natives {
			natives[k] = &nativeEcho{}
		}
		mid := settle()
		insts := make([]*Instance, n)
		for k := range insts {
			inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: fmt.Sprintf("i%d", k), Host: h})
			if err != nil {
				b.Fatal(err)
			}
			if err := inst.Realize(); err != nil {
				b.Fatal(err)
			}
			inst.MMIOWrite(1, 0, 8, 1)
			insts[k] = inst
		}
		after := settle()
		pages = insts[0].MemorySize() / 65536
		perNative = float64(mid-before) / n
		perInst = float64(after-mid) / n
		runtime.KeepAlive(natives)
		for _, inst := range insts {
			inst.Close()
		}
	}
	b.ReportMetric(perInst/(1<<20), "MiB/instance")
	b.ReportMetric(float64(pages), "wasm-pages/instance")
	b.ReportMetric(perNative, "native-B/device")
	b.ReportMetric(perInst/(4<<20), "x-goal4MiB")
}

// TestCacheDirIsUsed checks the warm path really hits the on-disk cache:
// a second Runtime on the same directory loads much faster than the first.
func TestCacheDirIsUsed(t *testing.T) {
	dir := t.TempDir()
	timeLoad := func() time.Duration {
		start := time.Now()
		rt, err := NewRuntime(context.Background(), Config{CacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close(context.Background())
		if _, err := rt.Load(context.Background(), pluginPath("echo")); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	cold := timeLoad()
	warm := timeLoad()
	entries, _ := filepath.Glob(filepath.Join(dir, "wazero-*", "*"))
	if len(entries) == 0 {
		t.Errorf("no compiled code stored under %s", dir)
	}
	hash, err := hashFile(pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, fmt.Sprintf("meter-v%d", meter.Version), hash+".wasm"))
	if err != nil {
		t.Errorf("no instrumented module cached: %v", err)
	} else if st.Mode().Perm() != 0o600 {
		t.Errorf("instrumented module cached with mode %v, want 0600", st.Mode().Perm())
	}
	if warm*3 > cold {
		t.Errorf("warm load %v not much faster than cold %v", warm, cold)
	}
	t.Logf("cold load %v, warm load %v", cold, warm)
}

// TestFuelUsage logs the fuel the setup calls and typical device calls of
// the test plugin burn, and checks the budgets leave a wide margin.
func TestFuelUsage(t *testing.T) {
	rt, _ := newTestRuntime(t, Config{})
	h := newTestHost(t, 1<<20)
	inst := instantiate(t, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	used := func(f func()) uint64 {
		f()
		return inst.budget(inst.current) - inst.fuel.Get()
	}
	realize := used(func() {}) // dev_realize was the last call
	read := used(func() { inst.MMIORead(1, 8, 4) })
	write := used(func() { inst.MMIOWrite(1, 8, 4, 1) })
	loop := used(func() { inst.MMIOWrite(1, 0x610, 8, 1000) })

	// _initialize and dev_describe on a module instance of their own.
	ctx := context.Background()
	wmod, err := rt.rt.InstantiateModule(ctx, inst.mod.compiled, wazero.NewModuleConfig().WithName("fuel-usage").WithStartFunctions())
	if err != nil {
		t.Fatal(err)
	}
	defer wmod.Close(ctx)
	fuel := wmod.ExportedGlobal("wasmvmm_fuel").(interface{ Set(uint64) })
	getFuel := wmod.ExportedGlobal("wasmvmm_fuel")
	fuel.Set(1 << 40)
	if _, err := wmod.ExportedFunction("_initialize").Call(&callCtx{Context: ctx, inst: inst}); err != nil {
		t.Fatal(err)
	}
	initFuel := 1<<40 - getFuel.Get()
	t.Logf("fuel used: _initialize %d, dev_realize %d, dev_mmio_read %d, dev_mmio_write %d, 1000-iteration loop %d; budgets: setup %d, call %d",
		initFuel, realize, read, write, loop, rt.cfg.SetupFuel, rt.cfg.CallFuel)
	if loop < 1000 || loop > 1100 {
		t.Errorf("a 1000-iteration loop used %d fuel", loop)
	}
	if initFuel*1000 > rt.cfg.SetupFuel || realize*1000 > rt.cfg.SetupFuel || write*1000 > rt.cfg.CallFuel {
		t.Errorf("budgets too tight for the test plugin")
	}
}

// BenchmarkFuelBurn times the endless loop plugin (`for { n++ }`, the
// tightest loop Go compiles) burning a budget of 2e8 until the meter stops
// it: ns/fuel is what LoopIterationsPerSecond is derived from, and
// s/default-budget how long the default budget lets such a loop run.
func BenchmarkFuelBurn(b *testing.B) {
	const budget = 200_000_000
	rt, _ := newTestRuntime(b, Config{CallFuel: budget})
	h := newTestHost(b, 1<<16)
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		inst := instantiate(b, rt, "loop", h)
		if err := inst.Realize(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		inst.PIOWrite(0, 0, 1, 1)
		total += time.Since(start)
		if inst.Err() == nil {
			b.Fatal("the endless loop returned")
		}
	}
	nsPerFuel := float64(total.Nanoseconds()) / float64(b.N) / budget
	b.ReportMetric(nsPerFuel, "ns/fuel")
	b.ReportMetric(nsPerFuel*float64(DefaultCallDeadline.Seconds()*LoopIterationsPerSecond)/1e9, "s/default-budget")
}

// TestStaleMeterCache: a cached "instrumented" module without the fuel
// global (here: the plugin itself) is refused at instantiation with a
// message that points at the cache, never run unmetered.
func TestStaleMeterCache(t *testing.T) {
	dir := t.TempDir()
	wasm, err := os.ReadFile(pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	hash, err := hashFile(pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(filepath.Join(dir, fmt.Sprintf("meter-v%d", meter.Version), hash+".wasm"), wasm); err != nil {
		t.Fatal(err)
	}
	rt, _ := newTestRuntime(t, Config{CacheDir: dir})
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Instantiate(context.Background(), InstanceConfig{Name: "e", Host: newTestHost(t, 1<<16)})
	if err == nil || !strings.Contains(err.Error(), "lacks its fuel global wasmvmm_fuel (stale cache?)") {
		t.Fatalf("instantiate from a stale cache: %v", err)
	}
}
