package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

func TestClient(t *testing.T) {
	srv, path := startServer(t, Config{Version: VersionInfo{Package: "wasmvmm test"}})
	srv.Register("add", Typed(func(_ context.Context, a struct {
		A int `json:"a"`
		B int `json:"b"`
	}) (any, error) {
		return a.A + a.B, nil
	}))
	srv.Register("no-device", NoArgs(func(context.Context) (any, error) {
		return nil, Errorf(ClassDeviceNotFound, "Device 'x' not found")
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if g := c.Greeting(); g.Version.Package != "wasmvmm test" || g.Version.QEMU != DefaultQEMUVersion || len(g.Capabilities) != 0 {
		t.Fatalf("greeting = %+v", g)
	}

	// Concurrent commands are matched to their responses by id.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 25; j++ {
				ret, err := c.Execute(ctx, "add", map[string]int{"a": i, "b": j})
				if err != nil {
					t.Errorf("add: %v", err)
					return
				}
				var sum int
				if err := json.Unmarshal(ret, &sum); err != nil || sum != i+j {
					t.Errorf("add(%d,%d) = %s", i, j, ret)
					return
				}
			}
		}()
	}
	wg.Wait()

	_, err = c.Execute(ctx, "no-device", nil)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Class != ClassDeviceNotFound || qerr.Desc != "Device 'x' not found" {
		t.Fatalf("no-device: %v", err)
	}
	_, err = c.Execute(ctx, "add", map[string]any{"a": 1})
	if !errors.As(err, &qerr) || qerr.Desc != "Parameter 'b' is missing" {
		t.Fatalf("add without b: %v", err)
	}

	srv.Emit("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
	select {
	case ev := <-c.Events():
		if ev.Name != "SHUTDOWN" || string(ev.Data) != `{"guest":false,"reason":"host-qmp-quit"}` ||
			time.Since(ev.Timestamp) > time.Minute || time.Since(ev.Timestamp) < 0 {
			t.Fatalf("event = %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}

	// The server going away ends Events and fails Execute.
	srv.Close()
	for range c.Events() {
	}
	if _, err := c.Execute(ctx, "add", map[string]int{"a": 1, "b": 2}); err == nil {
		t.Fatal("Execute after the server closed succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestClientHandshakeHonoursContext(t *testing.T) {
	// A listener that accepts and never greets.
	path := t.TempDir() + "/silent.sock"
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := Dial(ctx, path)
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded without a greeting")
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("Dial returned after %v, long past its context", waited)
	}
}
