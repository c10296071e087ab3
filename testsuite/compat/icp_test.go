package compattest

import (
	"context"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/compat"
)

// icpSections lists the icp/server sections a machine registers, as
// "instance:first field", sorted.
func icpSections(t *testing.T, m *compat.Machine) []string {
	t.Helper()
	reg, err := m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range reg.Devices() {
		if d.Name == "icp/server" {
			out = append(out, string(rune('0'+d.InstanceID))+":"+d.Schema.Fields[0].Name)
		}
	}
	sort.Strings(out)
	return out
}

// TestICPShim: pseries-2.9 sends and accepts QEMU <= 2.9's dummy
// icp/server sections for the servers without a CPU, 2.10 does not; the
// golden 2.9 stream (dummies included) loads into this build's 2.9 and the
// dummies' content is discarded; without the shim the same stream is
// refused; a real ICP on a server that had a dummy takes its place without
// a duplicate registration.
func TestICPShim(t *testing.T) {
	ctx := context.Background()
	p29, p210 := machineType(t, "pseries-2.9"), machineType(t, "pseries-2.10")
	r1 := release(t, "r1")

	m29 := newMachine(t, p29, compat.MachineOptions{Set: r1})
	if got, want := strings.Join(icpSections(t, m29), " "), "0:xirr 1:xirr 2:unused 3:unused"; got != want {
		t.Errorf("pseries-2.9 registers %s, want %s", got, want)
	}
	m210 := newMachine(t, p210, compat.MachineOptions{Set: r1})
	if got, want := strings.Join(icpSections(t, m210), " "), "0:xirr 1:xirr"; got != want {
		t.Errorf("pseries-2.10 registers %s, want %s", got, want)
	}

	golden := goldenPath("pseries-2.9", "r1")
	dst := newMachine(t, p29, compat.MachineOptions{Set: r1, Incoming: true})
	if err := compat.LoadFile(ctx, dst, golden); err != nil {
		t.Fatalf("the 2.9 golden stream does not load into pseries-2.9: %v", err)
	}
	st, err := compat.DeviceState(dst)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"icp/server#2/xirr", "icp/server#3/xirr"} {
		if _, ok := st[k]; ok {
			t.Errorf("%s exists: the dummy's content was kept", k)
		}
	}
	// Server 0 had an IPI pending at priority 5, server 1 accepted one at
	// priority 6 (compat.Drive).
	if got := st["icp/server#0/xirr"]; len(got) != 4 || got[0] != 2 || got[3] != 0xff {
		t.Errorf("server 0 xirr % x, want CPPR ff, XISR 2", got)
	}
	if got := st["icp/server#1/xirr"]; len(got) != 4 || got[3] != 6 || got[0] != 0 {
		t.Errorf("server 1 xirr % x, want CPPR 6, XISR 0", got)
	}

	// Without the shim (the user turns the compat property off), the
	// legacy sections are unknown and the stream is refused.
	noShim := newMachine(t, p29, compat.MachineOptions{Set: r1, Incoming: true, Properties: map[string]map[string]any{
		"icp2": {"pre_2_10_dummy": false}, "icp3": {"pre_2_10_dummy": false}}})
	err = compat.LoadFile(ctx, noShim, golden)
	if err == nil || !strings.Contains(err.Error(), "icp/server") {
		t.Fatalf("2.9 stream without the shim: %v; want a refusal naming icp/server", err)
	}
	t.Logf("without the shim: %v", err)

	// A CPU on server 2 (QEMU's CPU hotplug: the dummy of the server is
	// unregistered before the real ICP registers): the real ICP takes the
	// dummy's place without a duplicate registration, and a machine so
	// configured migrates to one configured alike, server 2's state
	// included.
	cpu2 := map[string]map[string]any{"icp2": {"cpu": true}}
	plugged := newMachine(t, p29, compat.MachineOptions{Set: r1, Properties: cpu2})
	if got, want := strings.Join(icpSections(t, plugged), " "), "0:xirr 1:xirr 2:xirr 3:unused"; got != want {
		t.Errorf("pseries-2.9 with a CPU on server 2 registers %s, want %s", got, want)
	}
	if err := compat.Drive(plugged); err != nil {
		t.Fatal(err)
	}
	to := newMachine(t, p29, compat.MachineOptions{Set: r1, Properties: cpu2, Incoming: true})
	if err := compat.Migrate(ctx, plugged, to, filepath.Join(t.TempDir(), "m.sock"), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	a, err := compat.DeviceState(plugged)
	if err != nil {
		t.Fatal(err)
	}
	b, err := compat.DeviceState(to)
	if err != nil {
		t.Fatal(err)
	}
	if d := compat.DiffState(a, b, 5); len(d) > 0 {
		t.Fatalf("state differs after migration: %v", d)
	}
	if got := b["icp/server#2/xirr"]; len(got) != 4 || got[3] != 7 {
		t.Fatalf("server 2 xirr after migration % x, want CPPR 7 (accepted IPI at priority 7)", got)
	}
}

// TestICPRegisters drives one presenter through the XICS sequences of
// QEMU's hw/intc/xics.c: IPI through MFRR, accept, EOI with resend, a CPPR
// change that rejects the pending interrupt.
func TestICPRegisters(t *testing.T) {
	m := newMachine(t, machineType(t, "pseries-2.10"), compat.MachineOptions{Set: release(t, "r1")})
	dev, err := m.Device("icp0")
	if err != nil {
		t.Fatal(err)
	}
	base := dev.Spec().MMIO[0]
	wr := func(off uint64, size int, v uint64) {
		t.Helper()
		if !m.M.MMIO.Write(base+off, size, v) {
			t.Fatalf("write %#x", off)
		}
	}
	rd := func(off uint64, size int) uint64 {
		t.Helper()
		v, ok := m.M.MMIO.Read(base+off, size)
		if !ok {
			t.Fatalf("read %#x", off)
		}
		return v
	}
	poll := func() uint64 { t.Helper(); return rd(0x4, 4) }
	if got := poll(); got != 0 {
		t.Fatalf("reset XIRR %#x, want 0", got)
	}
	if got := rd(0xc, 1); got != 0xff {
		t.Fatalf("reset MFRR %#x, want ff", got)
	}
	wr(0xc, 1, 0x05) // MFRR 5 with CPPR 0: masked, nothing presented
	if got := poll(); got != 0 {
		t.Fatalf("IPI presented through CPPR 0: XIRR %#x", got)
	}
	wr(0x0, 1, 0xff) // CPPR ff: the IPI comes through
	if got := poll(); got != 0xff000002 {
		t.Fatalf("after CPPR ff: XIRR %#x, want ff000002", got)
	}
	if got := rd(0x0, 4); got != 0xff000002 { // accept
		t.Fatalf("accept returned %#x", got)
	}
	if got := poll(); got != 0x05000000 {
		t.Fatalf("after accept: XIRR %#x, want 05000000 (CPPR = the pending priority)", got)
	}
	wr(0x0, 4, 0xff000002) // EOI: CPPR back to ff, MFRR still 5 < ff: the IPI again
	if got := poll(); got != 0xff000002 {
		t.Fatalf("after EOI: XIRR %#x, want ff000002 (resend)", got)
	}
	wr(0x0, 1, 0x03) // CPPR 3 is more favoured than the pending 5: rejected
	if got := poll(); got != 0x03000000 {
		t.Fatalf("after CPPR 3: XIRR %#x, want 03000000", got)
	}
	wr(0xc, 1, 0x01) // MFRR 1 < CPPR 3: presented
	if got := poll(); got != 0x03000002 {
		t.Fatalf("after MFRR 1: XIRR %#x, want 03000002", got)
	}
	if got := rd(0x0, 1); got != 0x03 {
		t.Fatalf("CPPR read %#x, want 03", got)
	}
	unused, err := m.Device("icp2")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.M.MMIO.Read(unused.Spec().MMIO[0]+0x4, 4); v != 0xffffffff {
		t.Fatalf("an unused server's XIRR reads %#x, want all ones", v)
	}
}
