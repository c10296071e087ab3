package virtio

// logInterval is the least VM time between two messages of one key.
const logInterval = 10_000_000_000 // 10 s

// rateLimiter lets the first message of each key through, then at most one
// per logInterval, and counts those it held back.
type rateLimiter struct {
	now  func() int64
	keys map[string]*limitEntry
}

type limitEntry struct {
	last       int64
	suppressed uint64
}

func (r *rateLimiter) allow(key string) (ok bool, suppressed uint64) {
	if r.keys == nil {
		r.keys = map[string]*limitEntry{}
	}
	var now int64
	if r.now != nil {
		now = max(r.now(), 0)
	}
	e := r.keys[key]
	if e == nil {
		r.keys[key] = &limitEntry{last: now}
		return true, 0
	}
	if now-e.last < logInterval {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return true, n
}
