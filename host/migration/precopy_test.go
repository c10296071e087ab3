package migration

import (
	"testing"
	"time"
)

// TestSyncDeadline checks when a pass syncs the dirty log: after
// syncPeriod unless max-bandwidth binds, and then as soon as the rest,
// shrinking at max-bandwidth less the guest's dirty rate, is due to fit
// max-bandwidth × downtime-limit (never sooner than minSyncPeriod).
func TestSyncDeadline(t *testing.T) {
	g := New(Config{})
	bw, limit := int64(100<<20), int64(300) // threshold: 30 MiB
	if err := g.SetParameters(ParameterUpdate{MaxBandwidth: &bw, DowntimeLimit: &limit}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, c := range []struct {
		name      string
		limited   bool
		burst     bool
		remaining int64   // bytes still dirty
		dirtyRate float64 // bytes/s
		want      time.Duration
	}{
		{"link-bound", false, false, 80 << 20, 0, syncPeriod},
		{"full-speed pass", true, true, 80 << 20, 0, syncPeriod},
		// 50 MiB over the threshold, shrinking at 100 MiB/s: half a second.
		{"idle guest", true, false, 80 << 20, 0, 500 * time.Millisecond},
		// Shrinking at 100-50 MiB/s: a second, capped at syncPeriod.
		{"dirtying guest", true, false, 80 << 20, 50 << 20, syncPeriod},
		{"dirtying a little", true, false, 40 << 20, 50 << 20, 200 * time.Millisecond},
		{"just over", true, false, 31 << 20, 0, minSyncPeriod},
		{"already fits", true, false, 20 << 20, 0, syncPeriod},
		{"dirtying faster than the cap", true, false, 80 << 20, 200 << 20, syncPeriod},
	} {
		p := &precopy{g: g, limited: c.limited, dirtyRate: c.dirtyRate}
		if got := p.syncDeadline(start, c.burst, c.remaining).Sub(start); got != c.want {
			t.Errorf("%s: sync after %v, want %v", c.name, got, c.want)
		}
	}
}
