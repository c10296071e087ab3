package machine

import (
	"sync"
	"time"
)

// Clock is the VM clock: nanoseconds of guest-visible time that stand still
// while the VM is paused, like QEMU_CLOCK_VIRTUAL. Device timers run on it:
// a timer whose deadline passes while the VM is paused fires after Start.
type Clock struct {
	mu      sync.Mutex
	running bool
	base    int64     // clock value at the last Start or Stop
	since   time.Time // wall time of the last Start
	timers  map[*clockTimer]struct{}
}

type clockTimer struct {
	deadline int64
	f        func()
	t        *time.Timer
}

// NewClock returns a stopped clock at zero.
func NewClock() *Clock { return &Clock{timers: map[*clockTimer]struct{}{}} }

// Now returns the clock's value in nanoseconds.
func (c *Clock) Now() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked()
}

func (c *Clock) nowLocked() int64 {
	if c.running {
		return c.base + int64(time.Since(c.since))
	}
	return c.base
}

// Set moves a stopped clock to v (used when loading a migrated VM).
func (c *Clock) Set(v int64) {
	c.mu.Lock()
	c.base = v
	c.mu.Unlock()
}

// Start runs the clock and arms pending timers.
func (c *Clock) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return
	}
	c.running, c.since = true, time.Now()
	for t := range c.timers {
		c.armLocked(t)
	}
}

// Stop freezes the clock; pending timers wait for the next Start.
func (c *Clock) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return
	}
	c.base = c.nowLocked()
	c.running = false
	for t := range c.timers {
		if t.t != nil {
			t.t.Stop()
			t.t = nil
		}
	}
}

// AfterFunc calls f on its own goroutine once the clock reaches deadline.
// The returned stop function cancels it and reports whether it was pending.
func (c *Clock) AfterFunc(deadline int64, f func()) (stop func() bool) {
	t := &clockTimer{deadline: deadline, f: f}
	c.mu.Lock()
	c.timers[t] = struct{}{}
	if c.running {
		c.armLocked(t)
	}
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, pending := c.timers[t]
		delete(c.timers, t)
		if t.t != nil {
			t.t.Stop()
			t.t = nil
		}
		return pending
	}
}

func (c *Clock) armLocked(t *clockTimer) {
	d := time.Duration(t.deadline - c.nowLocked())
	t.t = time.AfterFunc(max(d, 0), func() {
		c.mu.Lock()
		_, pending := c.timers[t]
		if !pending || !c.running || c.nowLocked() < t.deadline {
			if pending && c.running {
				c.armLocked(t) // woke early (clock was restarted): re-arm
			}
			c.mu.Unlock()
			return
		}
		delete(c.timers, t)
		c.mu.Unlock()
		t.f()
	})
}
