package machine

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
)

// The flat-out dirtier (1 MiB, a marker every pass) makes progress in
// proportion to the time its vCPU runs, so the run fraction a throttle
// leaves is its pass rate throttled over its pass rate free, both measured
// on the same machine in the same run.

const throttleCmdline = "workload=dirtier dirty_start=16M dirty_end=17M"

// throttleFreeWindow is how long an unthrottled rate is measured.
const throttleFreeWindow = 300 * time.Millisecond

// throttleCycles returns the length of one run+sleep cycle at pct and how
// many cycles a measurement takes (at least 250 ms, at least 2 cycles).
func throttleCycles(pct int) (time.Duration, int) {
	cycle := throttleSlice * 100 / time.Duration(100-pct)
	n := max(int((250*time.Millisecond+cycle-1)/cycle), 2)
	return cycle, n
}

// passRate measures the dirtier's passes per second over d.
func passRate(sink *thrSink, d time.Duration) float64 {
	a := passCount(sink.String())
	t0 := time.Now()
	time.Sleep(d)
	b := passCount(sink.String())
	return float64(b-a) / time.Since(t0).Seconds()
}

// throttledRate throttles the machine at pct for a whole number of cycles
// and returns the passes per second over them. Throttling starts with a run
// slice, so the count is read in the middle of the last cycle's sleep (its
// k run slices are in, the next is not) and divided by k cycles.
func throttledRate(m *Machine, sink *thrSink, pct int) float64 {
	cycle, k := throttleCycles(pct)
	sleep := cycle - throttleSlice
	a := passCount(sink.String())
	t0 := time.Now()
	m.SetThrottle(pct)
	time.Sleep(time.Until(t0.Add(time.Duration(k)*cycle - sleep/2)))
	b := passCount(sink.String())
	m.SetThrottle(0)
	return float64(b-a) / (time.Duration(k) * cycle).Seconds()
}

// throttleRun is one measurement: the passes per second free (before,
// between and after the throttled windows) and throttled at each
// percentage. The run fraction compares a throttled rate with the median
// free rate: a busy host slows some free windows, and now and then one runs
// alone on a CPU.
type throttleRun struct {
	free      []float64 // passes/s, before, between and after
	throttled []float64 // passes/s, one per percentage
}

func measureThrottle(m *Machine, sink *thrSink, pcts []int) throttleRun {
	var r throttleRun
	r.free = append(r.free, passRate(sink, throttleFreeWindow))
	for _, pct := range pcts {
		r.throttled = append(r.throttled, throttledRate(m, sink, pct))
		r.free = append(r.free, passRate(sink, throttleFreeWindow))
	}
	return r
}

func (r throttleRun) medianFree() float64 {
	f := slices.Clone(r.free)
	slices.Sort(f)
	if n := len(f); n%2 == 0 {
		return (f[n/2-1] + f[n/2]) / 2
	}
	return f[len(f)/2]
}

func (r throttleRun) fraction(i int) float64 { return r.throttled[i] / r.medianFree() }

// spread is the ratio of the fastest free window to the slowest.
func (r throttleRun) spread() float64 {
	return slices.Max(r.free) / max(slices.Min(r.free), 1)
}

// throttleBounds are the run fractions a throttle at pct must stay within
// on a busy 2-CPU host: above a third of the requested (100-pct)%, and from
// 50% on below twice it and below three quarters of the way from it to 1.
// Below 50% there is no upper bound: on a contended host a vCPU that sleeps
// now and then gets a larger share of a CPU while it runs than one that
// never sleeps (measured with two busy loops on the 2 CPUs: 20% left 0.55
// to 1.05 of the free rate), so a light throttle's effect is within the
// noise; BenchmarkThrottle reports it precisely on a quiet host.
func throttleBounds(pct int) (lo, hi float64) {
	want := float64(100-pct) / 100
	if pct < 50 {
		return want / 3, math.Inf(1)
	}
	return want / 3, math.Min(2*want, want+(1-want)*3/4)
}

// TestThrottleSlowsTheGuest: at 20, 50, 90 and 99 percent the flat-out
// dirtier makes about (100-pct)% of its free progress (within
// throttleBounds), and turning the throttle off gives it back.
func TestThrottleSlowsTheGuest(t *testing.T) {
	m, sink := newTestMachine(t, throttleCmdline, 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "DIRTY pass=1\n", 20*time.Second)
	m.SetThrottle(150)
	if m.Throttle() != 99 {
		t.Fatalf("throttle 150%% set %d, want 99", m.Throttle())
	}
	m.SetThrottle(0)
	if m.Throttle() != 0 {
		t.Fatalf("throttle off reads %d", m.Throttle())
	}
	pcts := []int{20, 50, 90, 99}
	// The free windows bracket the throttled ones; if they disagree by more
	// than 3x, the host's load changed under the measurement (seen with
	// other jobs on the 2 CPUs: free 250 to 3559 passes/s in one run) and
	// no fraction means anything: measure again, up to three times, and
	// judge the steadiest run.
	var r throttleRun
	for attempt := 1; attempt <= 3; attempt++ {
		run := measureThrottle(m, sink, pcts)
		if attempt == 1 || run.spread() < r.spread() {
			r = run
		}
		if r.spread() <= 3 {
			break
		}
		t.Logf("attempt %d: free passes/s %.0f vary %.1fx: the host's load changed; measuring again", attempt, run.free, run.spread())
	}
	t.Logf("free passes/s: %.0f (median %.0f)", r.free, r.medianFree())
	for i, pct := range pcts {
		got := r.fraction(i)
		lo, hi := throttleBounds(pct)
		t.Logf("throttle %d%%: %.0f passes/s, run fraction %.4f (want %.2f, achieved/requested %.3f)",
			pct, r.throttled[i], got, float64(100-pct)/100, got/(float64(100-pct)/100))
		if got < lo || got > hi {
			t.Errorf("throttle %d%%: run fraction %.4f outside [%.4f, %.4f] (free %.0f, throttled %.0f passes/s)",
				pct, got, lo, hi, r.free, r.throttled[i])
		}
	}
	// Off again: the last free window runs well above the 90% rate.
	if last := r.free[len(r.free)-1]; last < 3*r.throttled[2] {
		t.Errorf("after the throttle is off the dirtier runs at %.0f passes/s, at 90%% it ran %.0f",
			last, r.throttled[2])
	}
}

// TestThrottlePauseWakesSleepingVCPU: a vCPU sleeping off a 99% throttle
// (about a second per slice) parks at once when the machine pauses, and
// the throttle wakes it when turned off.
func TestThrottlePauseWakesSleepingVCPU(t *testing.T) {
	m, sink := newTestMachine(t, throttleCmdline, 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "DIRTY pass=1\n", 20*time.Second)
	m.SetThrottle(99)
	time.Sleep(3 * throttleSlice) // past the first slice: asleep for ~1 s
	t0 := time.Now()
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Errorf("pause took %v with the vCPU sleeping off a 99%% throttle", d)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * throttleSlice)
	n := passCount(sink.String())
	m.SetThrottle(0)
	waitPasses(t, sink, n+50) // within 20 s; asleep it would take ~1 s per slice
	if d := time.Since(t0); d > 900*time.Millisecond {
		t.Errorf("the dirtier took %v to make 50 passes after the throttle went off", d)
	}
}

// BenchmarkThrottle reports, at each percentage, the run fraction the
// throttle leaves the flat-out dirtier (throttled progress over free
// progress in the same run) and its ratio to the requested (100-pct)%.
// Run: go test -run '^$' -bench Throttle -benchtime 3x ./host/machine/
func BenchmarkThrottle(b *testing.B) {
	for _, pct := range []int{20, 50, 90, 99} {
		b.Run(fmt.Sprintf("pct=%d", pct), func(b *testing.B) {
			m, sink := newTestMachine(b, throttleCmdline, 64<<20)
			if err := m.Start(false); err != nil {
				b.Fatal(err)
			}
			sink.waitFor(b, "DIRTY pass=1\n", 20*time.Second)
			want := float64(100-pct) / 100
			sum := 0.0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sum += measureThrottle(m, sink, []int{pct}).fraction(0)
			}
			b.StopTimer()
			frac := sum / float64(b.N)
			b.ReportMetric(frac, "run-fraction")
			b.ReportMetric(frac/want, "achieved/requested")
		})
	}
}
