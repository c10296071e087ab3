package plugin

import (
	"context"
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

var modes = []struct {
	name string
	mode deadlineMode
}{
	{"watchdog", deadlineWatchdog},
	{"percallctx", deadlinePerCallContext},
	{"nocheck", deadlineNone},
}

func benchInstance(b *testing.B, mode deadlineMode) *Instance {
	rt, _ := newTestRuntime(b, Config{deadlineMode: mode})
	h := newTestHost(b, 1<<20)
	inst := instantiate(b, rt, "echo", h)
	if err := inst.Realize(); err != nil {
		b.Fatal(err)
	}
	return inst
}

// BenchmarkMMIORead: one host->plugin dev_mmio_read call through the
// mmioDevice interface, per deadline mechanism, with the ratio to the
// native Go device measured in the same run.
func BenchmarkMMIORead(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			var dev mmioDevice = benchInstance(b, m.mode)
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
			var dev mmioDevice = benchInstance(b, m.mode)
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

// BenchmarkDeadlineOverhead reports what each deadline mechanism adds to
// one MMIO read call over code compiled without termination checks.
func BenchmarkDeadlineOverhead(b *testing.B) {
	base := benchInstance(b, deadlineNone)
	baseNs := nsPerOp(500_000, func() { sink += base.MMIORead(1, 8, 4) })
	for _, m := range modes[:2] {
		b.Run(m.name, func(b *testing.B) {
			inst := benchInstance(b, m.mode)
			b.ResetTimer()
			for b.Loop() {
				sink += inst.MMIORead(1, 8, 4)
			}
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(perOp-baseNs, "overhead-ns/call")
			b.ReportMetric(perOp/baseNs, "x-nocheck")
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
			inst := benchInstance(b, m.mode)
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

// BenchmarkLoad measures load + instantiate + realize of the echo plugin:
// cold (no compilation cache) and warm (a fresh Runtime whose cache
// directory holds the compiled code), each with a fresh Runtime per op.
// The ratio is warm against cold, measured in the same run.
func BenchmarkLoad(b *testing.B) {
	load := func(b *testing.B, cfg Config) {
		rt, err := NewRuntime(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer rt.Close(context.Background())
		m, err := rt.Load(context.Background(), pluginPath("echo"))
		if err != nil {
			b.Fatal(err)
		}
		inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "e", Host: newTestHost(b, 1<<16)})
		if err != nil {
			b.Fatal(err)
		}
		if err := inst.Realize(); err != nil {
			b.Fatal(err)
		}
	}
	var coldMs float64
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			load(b, Config{NoCache: true})
		}
		coldMs = float64(b.Elapsed().Milliseconds()) / float64(b.N)
		b.ReportMetric(coldMs, "ms/load")
	})
	b.Run("warm", func(b *testing.B) {
		dir := b.TempDir()
		load(b, Config{CacheDir: dir}) // fill the cache
		b.ResetTimer()
		for b.Loop() {
			load(b, Config{CacheDir: dir})
		}
		warm := float64(b.Elapsed().Microseconds()) / 1000 / float64(b.N)
		b.ReportMetric(warm, "ms/load")
		if coldMs > 0 {
			b.ReportMetric(warm/coldMs, "x-cold")
		}
	})
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
	entries, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	if len(entries) == 0 {
		t.Errorf("no compiled code stored under %s", dir)
	}
	if warm*3 > cold {
		t.Errorf("warm load %v not much faster than cold %v", warm, cold)
	}
	t.Logf("cold load %v, warm load %v", cold, warm)
}
