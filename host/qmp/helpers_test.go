package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startServer starts a server on a socket in a fresh temporary directory.
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	srv := NewServer(cfg)
	path := filepath.Join(t.TempDir(), "qmp.sock")
	if err := srv.Listen(path); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv, path
}

// rawClient speaks QMP by hand, to see exactly what the server sends.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, r: bufio.NewReaderSize(conn, 1<<16)}
}

// line reads one raw output line, checking the CRLF terminator and ASCII.
func (c *rawClient) line() []byte {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, b)
	}
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		c.t.Fatalf("line not terminated by CRLF: %q", b)
	}
	for _, ch := range b {
		if ch >= 0x80 {
			c.t.Fatalf("non-ASCII byte in output: %q", b)
		}
	}
	return b
}

// msg reads one message as a generic JSON object.
func (c *rawClient) msg() map[string]any {
	c.t.Helper()
	b := c.line()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		c.t.Fatalf("server sent invalid JSON %q: %v", b, err)
	}
	return m
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends s and returns the next message.
func (c *rawClient) cmd(s string) map[string]any {
	c.t.Helper()
	c.send(s)
	return c.msg()
}

// negotiate reads the greeting and completes qmp_capabilities.
func (c *rawClient) negotiate() {
	c.t.Helper()
	if g := c.msg(); g["QMP"] == nil {
		c.t.Fatalf("expected greeting, got %v", g)
	}
	r := c.cmd(`{"execute":"qmp_capabilities"}`)
	if !jsonEqual(r, `{"return":{}}`) {
		c.t.Fatalf("qmp_capabilities: %v", r)
	}
}

// wantError checks that m is an error response with the given class and desc
// (desc ending in "*" matches a prefix).
func wantError(t *testing.T, m map[string]any, class ErrorClass, desc string) {
	t.Helper()
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("expected error %s %q, got %v", class, desc, m)
	}
	if e["class"] != string(class) {
		t.Errorf("class = %v, want %s (desc %v)", e["class"], class, e["desc"])
	}
	got, _ := e["desc"].(string)
	if prefix, ok := strings.CutSuffix(desc, "*"); ok {
		if !strings.HasPrefix(got, prefix) {
			t.Errorf("desc = %q, want prefix %q", got, prefix)
		}
	} else if got != desc {
		t.Errorf("desc = %q, want %q", got, desc)
	}
	if _, ok := m["return"]; ok {
		t.Errorf("error response also has return: %v", m)
	}
}

// jsonEqual compares a decoded value with JSON text, semantically.
func jsonEqual(v any, want string) bool {
	a, err := json.Marshal(v)
	if err != nil {
		return false
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(want), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
