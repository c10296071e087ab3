package migration

import (
	"context"
	"io"
	"net"
	"time"
)

// rateLimiter paces a byte stream to a rate read at each call (so
// migrate-set-parameters max-bandwidth takes effect at once); a rate of 0
// or less is unlimited. It is a token bucket with a burst of burstWindow
// worth of bytes, and it never catches up on time lost while idle.
type rateLimiter struct {
	rate  func() int64
	last  int64
	t0    time.Time
	sent  int64
	slept time.Duration // total time spent waiting, for the raw bandwidth
	off   bool          // switchover: send at full speed
}

const burstWindow = 20 * time.Millisecond

// wait accounts n bytes and sleeps until they are due.
func (l *rateLimiter) wait(ctx context.Context, n int) error {
	r := l.rate()
	now := time.Now()
	if l.off || r <= 0 {
		l.last = r
		return nil
	}
	if r != l.last || l.t0.IsZero() {
		l.last, l.t0, l.sent = r, now, 0
	}
	l.sent += int64(n)
	due := l.t0.Add(time.Duration(float64(l.sent) / float64(r) * float64(time.Second)))
	if lag := now.Sub(due); lag > burstWindow {
		// Idle for a while: restart the schedule rather than burst.
		l.t0, l.sent = now.Add(-burstWindow), int64(float64(r)*burstWindow.Seconds())
		return nil
	}
	if d := due.Sub(now); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return errCancelled
		}
		// The time actually slept: a timer fires late (by 0.1-1 ms on a
		// busy host, per 256 KiB slice), and counting only what was asked
		// made the raw bandwidth look a sixth of the link's at 128 MiB/s,
		// so the downtime estimate kept a converging guest iterating.
		l.slept += time.Since(now)
	}
	return nil
}

// streamWriter is the outgoing side's writer stack below the vmstate
// Writer's buffer: cancellation, pacing, byte counting and a deadline per
// write so that a peer that stops reading (a cut network) fails the
// migration instead of hanging it.
type streamWriter struct {
	ctx     context.Context
	conn    net.Conn
	lim     *rateLimiter
	timeout func() time.Duration
	n       int64
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, errCancelled
	}
	written := 0
	for written < len(p) {
		// Pace in slices so a large buffer does not burst.
		chunk := min(len(p)-written, 256<<10)
		if err := s.lim.wait(s.ctx, chunk); err != nil {
			return written, err
		}
		if d := s.timeout(); d > 0 {
			s.conn.SetWriteDeadline(time.Now().Add(d))
		}
		n, err := s.conn.Write(p[written : written+chunk])
		written += n
		s.n += int64(n)
		if err != nil {
			if s.ctx.Err() != nil {
				return written, errCancelled
			}
			return written, err
		}
	}
	return written, nil
}

// deadlineReader sets a read deadline before each read, for the incoming
// side: a source that went silent (a cut network) fails the load.
type deadlineReader struct {
	conn    net.Conn
	timeout time.Duration
}

func (d deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		d.conn.SetReadDeadline(time.Now().Add(d.timeout))
	}
	return d.conn.Read(p)
}

var _ io.Reader = deadlineReader{}
