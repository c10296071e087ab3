package plugin

// heldTimer is a timer that fired while events were held.
type heldTimer struct {
	id  uint32
	gen uint64
}

// HoldEvents stops asynchronous calls into the device (backend readiness
// and timers) until ReleaseEvents; calls the host makes itself (MMIO, PIO,
// pre-save, post-load) still run. When it returns, no such call is in
// progress. cpr-transfer holds a device from the moment the guest stops
// until the migration ends, so a device whose RAM is shared with the
// destination never writes guest memory after its state was saved.
func (i *Instance) HoldEvents() {
	i.mu.Lock()
	i.held = true
	i.mu.Unlock()
}

// ReleaseEvents lets asynchronous calls run again and delivers what came
// meanwhile: readiness of every watched backend, and timers that fired.
func (i *Instance) ReleaseEvents() {
	i.mu.Lock()
	if !i.held {
		i.mu.Unlock()
		return
	}
	i.held = false
	timers := i.heldTimers
	i.heldTimers = nil
	slots := append([]*backendSlot(nil), i.backends...)
	i.mu.Unlock()
	for _, t := range timers {
		go i.fireTimer(t.id, t.gen)
	}
	for _, s := range slots {
		if s.watched.Load() != 0 {
			i.scheduleReady(s)
		}
	}
}
