package plugin

import (
	"sync"
	"time"
)

// VMClock is a Clock that advances with the host's monotonic clock while
// the VM runs and stands still while it is paused. Timers fire only while
// it runs: pausing holds them, resuming re-arms them for the VM time that
// remains. It is safe for concurrent use.
type VMClock struct {
	mu      sync.Mutex
	base    int64     // VM time when last resumed (or the paused time)
	resumed time.Time // host time of the last resume; meaningful while running
	running bool
	timers  map[*vmTimer]struct{}
}

type vmTimer struct {
	deadline int64
	f        func()
	t        *time.Timer
}

// NewVMClock returns a clock at VM time 0, running if running is true.
func NewVMClock(running bool) *VMClock {
	c := &VMClock{timers: map[*vmTimer]struct{}{}}
	if running {
		c.running, c.resumed = true, time.Now()
	}
	return c
}

// Now returns the VM time in nanoseconds.
func (c *VMClock) Now() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked()
}

func (c *VMClock) nowLocked() int64 {
	if !c.running {
		return c.base
	}
	return c.base + int64(time.Since(c.resumed))
}

// Running reports whether the clock advances.
func (c *VMClock) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// Pause stops the clock and holds every timer.
func (c *VMClock) Pause() {
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

// Resume starts the clock and re-arms the held timers.
func (c *VMClock) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return
	}
	c.running, c.resumed = true, time.Now()
	for t := range c.timers {
		c.armLocked(t)
	}
}

// Set sets the VM time of a paused clock (an incoming migration restores
// the source's clock). It does nothing while the clock runs.
func (c *VMClock) Set(ns int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		c.base = ns
	}
}

// AfterFunc implements Clock.
func (c *VMClock) AfterFunc(deadlineNS int64, f func()) (stop func() bool) {
	t := &vmTimer{deadline: deadlineNS, f: f}
	c.mu.Lock()
	c.timers[t] = struct{}{}
	if c.running {
		c.armLocked(t)
	}
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.timers[t]; !ok {
			return false
		}
		delete(c.timers, t)
		if t.t != nil {
			t.t.Stop()
		}
		return true
	}
}

func (c *VMClock) armLocked(t *vmTimer) {
	d := time.Duration(t.deadline - c.nowLocked())
	t.t = time.AfterFunc(max(d, 0), func() { c.fire(t) })
}

func (c *VMClock) fire(t *vmTimer) {
	c.mu.Lock()
	if _, ok := c.timers[t]; !ok || !c.running {
		c.mu.Unlock()
		return
	}
	if c.nowLocked() < t.deadline { // raced with a pause and resume
		c.armLocked(t)
		c.mu.Unlock()
		return
	}
	delete(c.timers, t)
	c.mu.Unlock()
	t.f()
}
