package qmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGreetingAndNegotiation(t *testing.T) {
	_, path := startServer(t, Config{Version: VersionInfo{
		QEMU: VersionTriple{Major: 9, Minor: 1, Micro: 0}, Package: "wasmvmm 0.1.0"}})
	c := dialRaw(t, path)
	g := c.msg()
	if !jsonEqual(g, `{"QMP":{"version":{"qemu":{"major":9,"minor":1,"micro":0},"package":"wasmvmm 0.1.0"},"capabilities":[]}}`) {
		t.Fatalf("greeting = %v", g)
	}

	// Before negotiation: known, unknown and built-in commands are refused
	// with QEMU's wording, and the id is echoed.
	for _, cmd := range []string{"query-version", "no-such-command", "query-commands"} {
		r := c.cmd(fmt.Sprintf(`{"execute":%q,"id":"pre"}`, cmd))
		wantError(t, r, ClassCommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'")
		if r["id"] != "pre" {
			t.Errorf("id not echoed: %v", r)
		}
	}
	// Request-shape errors are still GenericError in negotiation mode.
	wantError(t, c.cmd(`{"arguments":{}}`), ClassGenericError, "QMP input lacks member 'execute'")

	// Unavailable and unknown capabilities.
	wantError(t, c.cmd(`{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}`),
		ClassGenericError, "Capability oob not available")
	wantError(t, c.cmd(`{"execute":"qmp_capabilities","arguments":{"enable":["xyz"]}}`),
		ClassGenericError, "Parameter 'null' does not accept value 'xyz'") // sic, as QEMU 7.2 says
	wantError(t, c.cmd(`{"execute":"qmp_capabilities","arguments":{"bogus":1}}`),
		ClassGenericError, "Parameter 'bogus' is unexpected")

	r := c.cmd(`{"execute":"qmp_capabilities","id":1}`)
	if !jsonEqual(r, `{"return":{},"id":1}`) {
		t.Fatalf("qmp_capabilities = %v", r)
	}
	// Command mode: queries work, negotiation is over.
	r = c.cmd(`{"execute":"query-version"}`)
	if !jsonEqual(r, `{"return":{"qemu":{"major":9,"minor":1,"micro":0},"package":"wasmvmm 0.1.0"}}`) {
		t.Fatalf("query-version = %v", r)
	}
	wantError(t, c.cmd(`{"execute":"qmp_capabilities"}`), ClassCommandNotFound,
		"Capabilities negotiation is already complete, command ignored")
}

func TestQueryVersionDefaults(t *testing.T) {
	_, path := startServer(t, Config{})
	c := dialRaw(t, path)
	c.negotiate()
	r := c.cmd(`{"execute":"query-version","id":"v"}`)
	want := fmt.Sprintf(`{"return":{"qemu":{"major":%d,"minor":%d,"micro":%d},"package":"wasmvmm"},"id":"v"}`,
		DefaultQEMUVersion.Major, DefaultQEMUVersion.Minor, DefaultQEMUVersion.Micro)
	if !jsonEqual(r, want) {
		t.Fatalf("query-version = %v, want %s", r, want)
	}
	wantError(t, c.cmd(`{"execute":"query-version","arguments":{"x":1}}`), ClassGenericError,
		"Parameter 'x' is unexpected")
}

func TestQueryCommands(t *testing.T) {
	srv, path := startServer(t, Config{})
	for _, name := range []string{"stop", "cont", "query-status"} {
		if err := srv.Register(name, NoArgs(func(context.Context) (any, error) { return nil, nil })); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Register("stop", NoArgs(func(context.Context) (any, error) { return nil, nil })); err == nil {
		t.Error("duplicate Register succeeded")
	}
	if err := srv.Register("query-version", NoArgs(func(context.Context) (any, error) { return nil, nil })); err == nil {
		t.Error("Register over a built-in succeeded")
	}
	if err := srv.Register("", NoArgs(func(context.Context) (any, error) { return nil, nil })); err == nil {
		t.Error("Register with empty name succeeded")
	}
	c := dialRaw(t, path)
	c.negotiate()
	r := c.cmd(`{"execute":"query-commands"}`)
	want := `{"return":[{"name":"cont"},{"name":"qmp_capabilities"},{"name":"query-commands"},` +
		`{"name":"query-status"},{"name":"query-version"},{"name":"stop"}]}`
	if !jsonEqual(r, want) {
		t.Fatalf("query-commands = %v, want %s", r, want)
	}
	// A command registered while a client is connected is visible at once.
	if err := srv.Register("system_reset", NoArgs(func(context.Context) (any, error) { return nil, nil })); err != nil {
		t.Fatal(err)
	}
	if r := c.cmd(`{"execute":"system_reset"}`); !jsonEqual(r, `{"return":{}}`) {
		t.Fatalf("system_reset = %v", r)
	}
}

func TestUnknownCommand(t *testing.T) {
	_, path := startServer(t, Config{})
	c := dialRaw(t, path)
	c.negotiate()
	r := c.cmd(`{"execute":"frobnicate","id":7}`)
	wantError(t, r, ClassCommandNotFound, "The command frobnicate has not been found")
	if !jsonEqual(r["id"], `7`) {
		t.Errorf("id = %v", r["id"])
	}
}

func TestIDEcho(t *testing.T) {
	_, path := startServer(t, Config{})
	c := dialRaw(t, path)
	c.negotiate()
	for _, id := range []string{`1`, `-3.5e2`, `"abc"`, `{"a":[1,2,{"b":null}]}`, `[]`, `true`, `null`, `"h\u00e9"`} {
		r := c.cmd(`{"id":` + id + `,"execute":"query-version"}`)
		if _, ok := r["return"]; !ok {
			t.Errorf("id %s: no return: %v", id, r)
		}
		got, ok := r["id"]
		if !ok || !jsonEqual(got, id) {
			t.Errorf("id %s echoed as %v (present %v)", id, got, ok)
		}
		// Errors echo the id too.
		r = c.cmd(`{"id":` + id + `,"execute":"nope"}`)
		if got, ok := r["id"]; !ok || !jsonEqual(got, id) {
			t.Errorf("id %s echoed in error as %v", id, got)
		}
	}
	// No id in, no id out.
	r := c.cmd(`{"execute":"query-version"}`)
	if _, ok := r["id"]; ok {
		t.Errorf("response has an id nobody sent: %v", r)
	}
	// Shape errors after the id was read still carry it, as in QEMU.
	r = c.cmd(`{"execute":42,"id":"shape"}`)
	wantError(t, r, ClassGenericError, "QMP input member 'execute' must be a string")
	if r["id"] != "shape" {
		t.Errorf("id = %v", r["id"])
	}
}

func TestMalformedJSON(t *testing.T) {
	_, path := startServer(t, Config{})
	c := dialRaw(t, path)
	c.negotiate()
	cases := []struct {
		in    string
		class ErrorClass
		desc  string
	}{
		{`{ "execute": }`, ClassGenericError, "JSON parse error, *"},
		{`{"execute" "x"}`, ClassGenericError, "JSON parse error, *"},
		{`{"execute":"query-version",}`, ClassGenericError, "JSON parse error, *"},
		{`{"execute":"query-version"]`, ClassGenericError, "JSON parse error, *"},
		{`}`, ClassGenericError, "JSON parse error, *"},
		{`[1, 2]`, ClassGenericError, "QMP input must be a JSON object"},
		{`"just a string"`, ClassGenericError, "QMP input must be a JSON object"},
		{`42 `, ClassGenericError, "QMP input must be a JSON object"},
		{`nul `, ClassGenericError, "JSON parse error, *"},
		{`{"execute":["x"]}`, ClassGenericError, "QMP input member 'execute' must be a string"},
		{`{"execute":"query-version","arguments":[]}`, ClassGenericError, "QMP input member 'arguments' must be an object"},
		{`{"execute":"query-version","arguments":null}`, ClassGenericError, "QMP input member 'arguments' must be an object"},
		{`{"execute":"query-version","extra":1}`, ClassGenericError, "QMP input member 'extra' is unexpected"},
		{`{"exec-oob":"query-version","id":1}`, ClassGenericError, "QMP input member 'exec-oob' is unexpected"},
		{`{"id":1}`, ClassGenericError, "QMP input lacks member 'execute'"},
		{"{\"execute\":\"query-\xff", ClassGenericError, "JSON parse error, stray byte 0xff"},
		{"{\"execute\":\"q\xc3\x28\"}", ClassGenericError, "JSON parse error, invalid UTF-8 sequence"},
	}
	for _, tc := range cases {
		r := c.cmd(tc.in)
		t.Run(tc.in, func(t *testing.T) { wantError(t, r, tc.class, tc.desc) })
		// The connection survives each error.
		if r := c.cmd(`{"execute":"query-version","id":"after"}`); r["id"] != "after" || r["return"] == nil {
			t.Fatalf("after %q: %v", tc.in, r)
		}
	}

	// A control character resets a half-sent message (the spec's recovery
	// procedure); the next message parses normally.
	r := c.cmd("{\"execute\": \"query-ver\x1b")
	wantError(t, r, ClassGenericError, "JSON parse error, stray byte 0x1b")
	if r := c.cmd(`{"execute":"query-version","id":2}`); r["return"] == nil {
		t.Fatalf("after reset: %v", r)
	}
}

func TestPipelinedAndSplitMessages(t *testing.T) {
	_, path := startServer(t, Config{})
	c := dialRaw(t, path)
	c.negotiate()
	// Several messages in one write, no separators, and one split across
	// writes in the middle of a string with an escaped quote.
	c.send(`{"execute":"query-version","id":1}{"execute":"nope","id":2}` + "\n\t " + `{"execute":"query-version","id":"a\"`)
	time.Sleep(20 * time.Millisecond)
	c.send(`b"}`)
	for i, want := range []string{`1`, `2`, `"a\"b"`} {
		r := c.msg()
		if !jsonEqual(r["id"], want) {
			t.Fatalf("response %d: id %v, want %s (%v)", i, r["id"], want, r)
		}
	}
}

type typedArgs struct {
	Name   string `json:"name"`
	Count  int32  `json:"count"`
	Flag   *bool  `json:"flag"`
	Nested struct {
		URI string `json:"uri"`
	} `json:"nested,omitempty"`
	List []uint8 `json:"list,omitempty"`
}

func TestArgumentErrors(t *testing.T) {
	srv, path := startServer(t, Config{})
	err := srv.Register("typed", Typed(func(_ context.Context, a typedArgs) (any, error) {
		return a, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, path)
	c.negotiate()
	cases := []struct{ args, desc string }{
		{`{}`, "Parameter 'name' is missing"},
		{`{"name":1,"count":1}`, "Invalid parameter type for 'name', expected: string"},
		{`{"name":"a"}`, "Parameter 'count' is missing"},
		{`{"name":"a","count":"1"}`, "Invalid parameter type for 'count', expected: integer"},
		{`{"name":"a","count":1.5}`, "Invalid parameter type for 'count', expected: integer"},
		{`{"name":"a","count":2147483648}`, "Parameter 'count' expects int32"},
		{`{"name":"a","count":1,"flag":"yes"}`, "Invalid parameter type for 'flag', expected: boolean"},
		{`{"name":"a","count":1,"flag":null}`, "Invalid parameter type for 'flag', expected: boolean"},
		{`{"name":"a","count":1,"nested":[]}`, "Invalid parameter type for 'nested', expected: object"},
		{`{"name":"a","count":1,"nested":{}}`, "Parameter 'nested.uri' is missing"},
		{`{"name":"a","count":1,"nested":{"uri":"x","y":1}}`, "Parameter 'nested.y' is unexpected"},
		{`{"name":"a","count":1,"list":{}}`, "Invalid parameter type for 'list', expected: array"},
		{`{"name":"a","count":1,"list":[1,256]}`, "Parameter 'list[1]' expects uint8"},
		{`{"name":"a","count":1,"list":[-1]}`, "Parameter 'list[0]' expects uint64"},
		{`{"name":"a","count":1,"zzz":true}`, "Parameter 'zzz' is unexpected"},
	}
	for _, tc := range cases {
		r := c.cmd(`{"execute":"typed","arguments":` + tc.args + `}`)
		t.Run(tc.args, func(t *testing.T) { wantError(t, r, ClassGenericError, tc.desc) })
	}
	r := c.cmd(`{"execute":"typed","arguments":{"name":"vm","count":-5,"flag":true,"nested":{"uri":"unix:/x"},"list":[0,255]}}`)
	if !jsonEqual(r, `{"return":{"name":"vm","count":-5,"flag":true,"nested":{"uri":"unix:/x"},"list":"AP8="}}`) {
		t.Fatalf("typed = %v", r)
	}
}

func TestOversizedMessage(t *testing.T) {
	srv, path := startServer(t, Config{})
	var calls atomic.Int32
	srv.Register("echo", Typed(func(_ context.Context, a struct {
		S string `json:"s"`
	}) (any, error) {
		calls.Add(1)
		return len(a.S), nil
	}))
	c := dialRaw(t, path)
	c.negotiate()

	// Just under the limit is fine.
	prefix := `{"execute":"echo","arguments":{"s":"`
	suffix := `"}}`
	fits := prefix + strings.Repeat("x", DefaultMaxMessageSize-len(prefix)-len(suffix)) + suffix
	if r := c.cmd(fits); !jsonEqual(r["return"], fmt.Sprint(DefaultMaxMessageSize-len(prefix)-len(suffix))) {
		t.Fatalf("message of exactly the limit: %v", r)
	}

	// Over the limit: one error, the rest of the message is skipped, the
	// connection goes on.
	big := prefix + strings.Repeat("y", 3*DefaultMaxMessageSize) + suffix
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
		c.conn.Write([]byte(big + `{"execute":"query-version","id":"next"}`))
	}()
	wantError(t, c.msg(), ClassGenericError, "JSON token size limit exceeded*")
	if r := c.msg(); r["id"] != "next" || r["return"] == nil {
		t.Fatalf("after oversized message: %v", r)
	}
	<-done
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}

	// Nesting beyond the limit is refused the same way.
	deep := strings.Repeat("[", MaxNesting+1) + strings.Repeat("]", MaxNesting+1)
	wantError(t, c.cmd(deep), ClassGenericError, "JSON nesting depth limit exceeded")
	if r := c.cmd(`{"execute":"query-version","id":3}`); r["return"] == nil {
		t.Fatalf("after deep message: %v", r)
	}
}

func TestSmallMessageLimit(t *testing.T) {
	_, path := startServer(t, Config{MaxMessageSize: 64})
	c := dialRaw(t, path)
	c.negotiate()
	wantError(t, c.cmd(`{"execute":"query-version","id":"`+strings.Repeat("z", 100)+`"}`),
		ClassGenericError, "JSON token size limit exceeded: message larger than 64 bytes")
	if r := c.cmd(`{"execute":"query-version"}`); r["return"] == nil {
		t.Fatalf("after oversized message: %v", r)
	}
}

func TestSeveralClientsReceiveEvents(t *testing.T) {
	srv, path := startServer(t, Config{})
	const n = 4
	clients := make([]*rawClient, n)
	for i := range clients {
		clients[i] = dialRaw(t, path)
		clients[i].negotiate()
	}
	pending := dialRaw(t, path) // never negotiates: must get no events
	pending.msg()               // greeting

	// All clients run commands concurrently.
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				c.send(fmt.Sprintf(`{"execute":"query-version","id":"%d-%d"}`, i, j))
			}
		}()
	}
	wg.Wait()
	for i, c := range clients {
		for j := 0; j < 20; j++ {
			if r := c.msg(); r["id"] != fmt.Sprintf("%d-%d", i, j) {
				t.Fatalf("client %d response %d: %v", i, j, r)
			}
		}
	}

	before := time.Now()
	if err := srv.Emit("STOP", nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Emit("RESUME", map[string]any{"reason": "test", "n": 1}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	for i, c := range clients {
		stop := c.msg()
		if stop["event"] != "STOP" {
			t.Fatalf("client %d: first event %v", i, stop)
		}
		if _, has := stop["data"]; has {
			t.Errorf("STOP without data carries a data member: %v", stop)
		}
		ts := stop["timestamp"].(map[string]any)
		sec, _ := ts["seconds"].(interface{ Int64() (int64, error) }).Int64()
		usec, _ := ts["microseconds"].(interface{ Int64() (int64, error) }).Int64()
		when := time.Unix(sec, usec*1000)
		if usec < 0 || usec >= 1e6 || when.Before(before.Truncate(time.Microsecond)) || when.After(after) {
			t.Errorf("client %d: timestamp %v not within [%v, %v]", i, when, before, after)
		}
		resume := c.msg()
		if resume["event"] != "RESUME" || !jsonEqual(resume["data"], `{"reason":"test","n":1}`) {
			t.Fatalf("client %d: second event %v", i, resume)
		}
	}
	// The client still negotiating got nothing: its next message is the
	// answer to its next command.
	wantError(t, pending.cmd(`{"execute":"query-version"}`), ClassCommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'")
	if got := srv.ClientCount(); got != n+1 {
		t.Errorf("ClientCount = %d, want %d", got, n+1)
	}
}

func TestSlowClientIsDropped(t *testing.T) {
	srv, path := startServer(t, Config{QueueLength: 4})
	slow := dialRaw(t, path)
	slow.negotiate() // then never reads again
	fast := dialRaw(t, path)
	fast.negotiate()

	payload := map[string]string{"blob": strings.Repeat("e", 64<<10)}
	start := time.Now()
	var got int
	for i := 0; i < 200; i++ {
		if err := srv.Emit("BIG", payload); err != nil {
			t.Fatal(err)
		}
		// The fast client keeps up.
		if m := fast.msg(); m["event"] != "BIG" {
			t.Fatalf("fast client got %v", m)
		}
		got++
	}
	elapsed := time.Since(start)
	deadline := time.Now().Add(5 * time.Second)
	for srv.ClientCount() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.ClientCount(); n != 1 {
		t.Fatalf("ClientCount = %d after the slow client overflowed, want 1", n)
	}
	t.Logf("200 events of 64 KiB to 2 clients (one dropped) in %v", elapsed)
	// The slow client's socket is closed by the server: reading drains what
	// was sent, then reaches EOF.
	slow.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1<<20)
	for {
		_, err := slow.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("slow client was not disconnected")
			}
			break
		}
	}
}

func TestSocketFile(t *testing.T) {
	srv := NewServer(Config{})
	dir := t.TempDir()
	path := filepath.Join(dir, "qmp.sock")
	if err := srv.Listen(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
	}
	// No leftover private directory.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(entries))
	}
	// A second server refuses a live socket.
	other := NewServer(Config{})
	if err := other.Listen(path); err == nil || !strings.Contains(err.Error(), "already accepting") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	other.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still present after Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "important.img")
	if err := os.WriteFile(path, []byte("do not clobber"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{})
	defer srv.Close()
	err := srv.Listen(path)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "do not clobber" {
		t.Fatalf("file changed: %q", b)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the file stays: a stale socket, as after a crash
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	_, _ = startServerAt(t, path)
	c := dialRaw(t, path)
	c.negotiate()
}

func startServerAt(t *testing.T, path string) (*Server, string) {
	t.Helper()
	srv := NewServer(Config{})
	if err := srv.Listen(path); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, path
}

func TestHandlerPanicAndErrorClasses(t *testing.T) {
	srv, path := startServer(t, Config{})
	srv.Register("boom", NoArgs(func(context.Context) (any, error) {
		var list []int
		return list[len(list)], nil // index out of range

	}))
	srv.Register("no-device", NoArgs(func(context.Context) (any, error) {
		return nil, fmt.Errorf("looking up: %w", Errorf(ClassDeviceNotFound, "Device 'nic9' not found"))
	}))
	srv.Register("no-kvm-cap", NoArgs(func(context.Context) (any, error) {
		return nil, Errorf(ClassKVMMissingCap, "KVM missing capability")
	}))
	srv.Register("plain-error", NoArgs(func(context.Context) (any, error) {
		return nil, errors.New("disk is on fire")
	}))
	srv.Register("bad-result", NoArgs(func(context.Context) (any, error) {
		return func() {}, nil
	}))
	c := dialRaw(t, path)
	c.negotiate()
	wantError(t, c.cmd(`{"execute":"boom","id":1}`), ClassGenericError, "command boom failed: internal error: *")
	wantError(t, c.cmd(`{"execute":"no-device"}`), ClassDeviceNotFound, "Device 'nic9' not found")
	wantError(t, c.cmd(`{"execute":"no-kvm-cap"}`), ClassKVMMissingCap, "KVM missing capability")
	wantError(t, c.cmd(`{"execute":"plain-error"}`), ClassGenericError, "disk is on fire")
	wantError(t, c.cmd(`{"execute":"bad-result"}`), ClassGenericError, "internal error: encoding the result of bad-result*")
	if r := c.cmd(`{"execute":"query-version"}`); r["return"] == nil {
		t.Fatalf("server unusable after a panic: %v", r)
	}
}

func TestQuitClosesAfterReply(t *testing.T) {
	srv, path := startServer(t, Config{})
	closed := make(chan struct{})
	srv.Register("quit", NoArgs(func(ctx context.Context) (any, error) {
		if !AfterReply(ctx, func() {
			srv.Close()
			close(closed)
		}) {
			return nil, errors.New("AfterReply refused a handler context")
		}
		return nil, nil
	}))
	other := dialRaw(t, path)
	other.negotiate()
	c := dialRaw(t, path)
	c.negotiate()
	if r := c.cmd(`{"execute":"quit","id":"bye"}`); !jsonEqual(r, `{"return":{},"id":"bye"}`) {
		t.Fatalf("quit = %v", r)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("server not closed after quit")
	}
	for _, cl := range []*rawClient{c, other} {
		cl.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := cl.conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection still open after quit (read %d bytes)", n)
		}
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still present after quit: %v", err)
	}
	if AfterReply(context.Background(), func() {}) {
		t.Error("AfterReply accepted a context that is not a handler's")
	}
}

func TestNonASCIIOutputIsEscaped(t *testing.T) {
	srv, path := startServer(t, Config{})
	const text = "h\u00e9llo \u2713 \U0001F600"
	srv.Register("greet", NoArgs(func(context.Context) (any, error) { return text, nil }))
	c := dialRaw(t, path)
	c.negotiate()
	c.send(`{"execute":"greet"}`)
	line := c.line() // checks ASCII
	if !strings.Contains(string(line), `\ud83d\ude00`) {
		t.Errorf("astral character not escaped as a surrogate pair: %s", line)
	}
	var r struct{ Return string }
	if err := jsonUnmarshal(line, &r); err != nil || r.Return != text {
		t.Fatalf("decoded %q (%v), want %q", r.Return, err, text)
	}
}

func TestHandlersAreSerialized(t *testing.T) {
	srv, path := startServer(t, Config{})
	var mu sync.Mutex
	active, maxActive := 0, 0
	srv.Register("work", NoArgs(func(context.Context) (any, error) {
		mu.Lock()
		active++
		maxActive = max(maxActive, active)
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		active--
		mu.Unlock()
		return nil, nil
	}))
	var wg sync.WaitGroup
	clients := make([]*rawClient, 4)
	for i := range clients {
		clients[i] = dialRaw(t, path)
		clients[i].negotiate()
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				c.send(`{"execute":"work"}`)
			}
		}()
	}
	wg.Wait()
	for _, c := range clients {
		for j := 0; j < 10; j++ {
			if r := c.msg(); r["return"] == nil {
				t.Fatalf("work: %v", r)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxActive != 1 {
		t.Errorf("%d handlers ran at once, want 1", maxActive)
	}
}

func TestCloseWithConnectedClients(t *testing.T) {
	srv := NewServer(Config{})
	path := filepath.Join(t.TempDir(), "q.sock")
	if err := srv.Listen(path); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv.Register("slow", NoArgs(func(ctx context.Context) (any, error) {
		close(started)
		<-ctx.Done() // released by Close
		return nil, ctx.Err()
	}))
	c := dialRaw(t, path)
	c.negotiate()
	idle := dialRaw(t, path)
	idle.negotiate()
	c.send(`{"execute":"slow"}`)
	<-started
	done := make(chan error)
	go func() { done <- srv.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
	if err := srv.Listen(path); err == nil {
		t.Error("Listen after Close succeeded")
	}
	if err := srv.Emit("STOP", nil); err != nil {
		t.Errorf("Emit after Close: %v", err)
	}
}
