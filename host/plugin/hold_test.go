package plugin

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
)

// TestHoldEventsDefersBackendReadiness: while held, input that arrives is
// not delivered to the device; on release it is, completely.
func TestHoldEventsDefersBackendReadiness(t *testing.T) {
	h := newTestHost(t, 1<<20)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	console := backend.NewIO("console", inR, nil)
	defer console.Close()
	h.backends["console"] = console
	rt, _ := newTestRuntime(t, Config{})
	m, err := rt.Load(context.Background(), pluginPath("echo"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), InstanceConfig{Name: "uart", Host: h})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(); err != nil {
		t.Fatal(err)
	}
	inst.HoldEvents()
	input := []byte("held input\n")
	if _, err := inW.Write(input); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if ev := inst.MMIORead(1, 0x520, 4); ev != 0 {
		t.Fatalf("the device was called while its events were held (events %#x)", ev)
	}
	inst.ReleaseEvents()
	waitFor(t, "held input delivered", func() bool { return inst.MMIORead(1, 0x520, 4)&uint64(abi.EventReadable) != 0 })
	var got []byte
	waitFor(t, "all input", func() bool {
		if c := inst.MMIORead(1, 0x708, 8); c != ^uint64(0) {
			got = append(got, byte(c))
		}
		return len(got) == len(input)
	})
	if !bytes.Equal(got, input) {
		t.Fatalf("read %q", got)
	}
	inst.ReleaseEvents() // twice is harmless
}
