package qmp

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	doqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// TestDigitalOceanClient drives the server with go-qemu's QMP client, which
// we did not write: handshake, raw commands, generated typed commands, errors
// and events.
func TestDigitalOceanClient(t *testing.T) {
	srv, path := startServer(t, Config{Version: VersionInfo{
		QEMU: VersionTriple{Major: 7, Minor: 2, Micro: 0}, Package: "wasmvmm 0.1.0"}})

	var mu sync.Mutex
	running := true
	srv.Register("query-status", NoArgs(func(context.Context) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		status := "paused"
		if running {
			status = "running"
		}
		return map[string]any{"running": running, "singlestep": false, "status": status}, nil
	}))
	srv.Register("stop", NoArgs(func(context.Context) (any, error) {
		mu.Lock()
		running = false
		mu.Unlock()
		// Like QEMU, the event is emitted while the command runs.
		return nil, srv.Emit("STOP", nil)
	}))
	type migrateArgs struct {
		URI    string `json:"uri"`
		Blk    *bool  `json:"blk"`
		Inc    *bool  `json:"inc"`
		Detach *bool  `json:"detach"`
	}
	var gotURI string
	srv.Register("migrate", Typed(func(_ context.Context, a migrateArgs) (any, error) {
		mu.Lock()
		gotURI = a.URI
		mu.Unlock()
		return nil, nil
	}))

	mon, err := doqmp.NewSocketMonitor("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatalf("go-qemu Connect: %v", err)
	}
	defer mon.Disconnect()
	if mon.Version == nil || mon.Version.String() != "7.2.0" || mon.Version.Package != "wasmvmm 0.1.0" {
		t.Fatalf("go-qemu saw version %+v", mon.Version)
	}
	if len(mon.Capabilities) != 0 {
		t.Errorf("capabilities = %v, want none", mon.Capabilities)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := mon.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// go-qemu's reader blocks on the events channel; drain it concurrently.
	received := make(chan doqmp.Event, 16)
	go func() {
		for ev := range events {
			received <- ev
		}
	}()

	out, err := mon.Run([]byte(`{"execute":"query-version"}`))
	if err != nil {
		t.Fatalf("Run query-version: %v", err)
	}
	var v struct{ Return VersionInfo }
	if err := json.Unmarshal(out, &v); err != nil || v.Return.Package != "wasmvmm 0.1.0" {
		t.Fatalf("query-version = %s (%v)", out, err)
	}

	rm := raw.NewMonitor(mon)
	ver, err := rm.QueryVersion()
	if err != nil || ver.Qemu.Major != 7 || ver.Qemu.Minor != 2 {
		t.Fatalf("raw QueryVersion = %+v, %v", ver, err)
	}
	cmds, err := rm.QueryCommands()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cmds {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, ","); got != "migrate,qmp_capabilities,query-commands,query-status,query-version,stop" {
		t.Fatalf("raw QueryCommands = %s", got)
	}
	st, err := rm.QueryStatus()
	if err != nil || !st.Running || st.Status != raw.RunStateRunning {
		t.Fatalf("raw QueryStatus = %+v, %v", st, err)
	}
	if err := rm.Stop(); err != nil {
		t.Fatalf("raw Stop: %v", err)
	}
	select {
	case ev := <-received:
		if ev.Event != "STOP" || ev.Timestamp.Seconds < time.Now().Unix()-60 {
			t.Fatalf("event = %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no STOP event")
	}
	st, err = rm.QueryStatus()
	if err != nil || st.Running || st.Status != raw.RunStatePaused {
		t.Fatalf("raw QueryStatus after stop = %+v, %v", st, err)
	}
	if err := rm.Migrate("unix:/tmp/dest.sock", nil, nil, nil); err != nil {
		t.Fatalf("raw Migrate: %v", err)
	}
	mu.Lock()
	if gotURI != "unix:/tmp/dest.sock" {
		t.Errorf("migrate handler got uri %q", gotURI)
	}
	mu.Unlock()

	// Errors come back through go-qemu as the QMP desc.
	if _, err := mon.Run([]byte(`{"execute":"no-such"}`)); err == nil || err.Error() != "The command no-such has not been found" {
		t.Errorf("unknown command via go-qemu: %v", err)
	}
	if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":5}}`)); err == nil ||
		err.Error() != "Invalid parameter type for 'uri', expected: string" {
		t.Errorf("bad argument via go-qemu: %v", err)
	}

	// Server-initiated events with data.
	if err := srv.Emit("RESUME", map[string]string{"why": "test"}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-received:
		if ev.Event != "RESUME" || ev.Data["why"] != "test" {
			t.Fatalf("event = %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no RESUME event")
	}
}
