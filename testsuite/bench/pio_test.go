package bench

import (
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"wasmvmm/host/machine"
	"wasmvmm/testsuite/harness"
)

// nativeUART answers the test guest's serial output natively: THR writes
// go to a buffer, LSR reads say "transmitter empty". It stands where the
// UART plugin stands, for the comparison.
type nativeUART struct {
	mu  sync.Mutex
	out *harness.SyncBuffer
	scr uint64
}

func (u *nativeUART) Read(region int, off uint64, size int) uint64 {
	switch off {
	case 5:
		return 0x60
	case 7:
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.scr
	}
	return 0
}

func (u *nativeUART) Write(region int, off uint64, size int, v uint64) {
	switch off {
	case 0:
		u.out.Write([]byte{byte(v)})
	case 7:
		u.mu.Lock()
		u.scr = v
		u.mu.Unlock()
	}
}

var nsPerOut = regexp.MustCompile(`pio-bench ns_per_out=(\d+)\r?\n`)

// pioRun boots the guest's pio-bench workload (ring-0 `out` to the UART's
// scratch register, each one a VM exit handled by the device) and returns the
// guest-measured nanoseconds per exit.
func pioRun(b *testing.B, native bool, count int) float64 {
	o := harness.MachineOptions{Cmdline: fmt.Sprintf("workload=pio-bench pio_port=0x3ff pio_count=%d", count)}
	out := &harness.SyncBuffer{}
	if native {
		u := &nativeUART{out: out}
		o.Devices = func(m *machine.Machine) ([]machine.Device, error) {
			return nil, m.PIO.Add(0x3f8, 8, "native-uart", u, 0)
		}
	}
	ip := harness.NewMachine(b, o)
	if !native {
		out = ip.Console
	}
	if err := ip.M.Start(false); err != nil {
		b.Fatal(err)
	}
	// The whole line: the marker can arrive before its number.
	harness.WaitFor(b, out, "pio-bench ns_per_out=", 60*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	m := nsPerOut.FindStringSubmatch(out.String())
	for m == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		m = nsPerOut.FindStringSubmatch(out.String())
	}
	ip.M.Close()
	if m == nil {
		b.Fatalf("no complete pio-bench line:\n%s", out.String())
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkPIOExitPluginVsNative: a guest port write handled by the UART
// plugin against the same write handled by a native Go handler, measured by
// the guest in the same run. Goal: ratio <= 1.1.
func BenchmarkPIOExitPluginVsNative(b *testing.B) {
	harness.RequireKVM(b)
	var plugin, native float64
	for i := 0; i < b.N; i++ {
		native += pioRun(b, true, 20000)
		plugin += pioRun(b, false, 20000)
	}
	b.ReportMetric(plugin/float64(b.N), "plugin-ns/exit")
	b.ReportMetric(native/float64(b.N), "native-ns/exit")
	b.ReportMetric(plugin/native, "ratio")
}
