package plugin

import (
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// maxLogLine bounds one logged line of plugin output.
const maxLogLine = 4096

// logWriter turns a plugin's stdout or stderr into log lines and remembers
// the first line that reports a crash ("panic:", "fatal error:").
type logWriter struct {
	log    hclog.Logger
	stream string

	mu    sync.Mutex
	buf   []byte
	crash string
}

func newLogWriter(log hclog.Logger, stream string) *logWriter {
	return &logWriter{log: log, stream: stream}
}

// Write implements io.Writer.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range p {
		if c == '\n' || len(w.buf) >= maxLogLine {
			w.emit()
			if c == '\n' {
				continue
			}
		}
		w.buf = append(w.buf, c)
	}
	return len(p), nil
}

func (w *logWriter) emit() {
	line := strings.TrimRight(string(w.buf), "\r")
	w.buf = w.buf[:0]
	if line == "" {
		return
	}
	if w.crash == "" && (strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")) {
		w.crash = line
	}
	w.log.Info("plugin "+w.stream, "line", line)
}

// crashLine returns the first crash line seen (flushing a partial line).
func (w *logWriter) crashLine() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit()
	}
	return w.crash
}
