package e2e

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
	"wasmvmm/testsuite/dirtycheck"
	"wasmvmm/testsuite/harness"
)

// liveDest is an in-process destination waiting on a unix socket.
type liveDest struct {
	ip  *harness.InProcess
	g   *migration.Migrator
	ch  migration.Channel
	res <-chan error
}

// newLiveDest builds an incoming machine listening on a unix socket.
func newLiveDest(t *testing.T, o harness.MachineOptions, autostart bool) *liveDest {
	t.Helper()
	o.NoBoot, o.Incoming = true, true
	ip := harness.NewMachine(t, o)
	ip.M.SetAutostart(autostart)
	if err := ip.M.StartIncoming(); err != nil {
		t.Fatal(err)
	}
	d := &liveDest{ip: ip, g: migrator(ip)}
	d.ch = migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "mig.sock")}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	res, err := d.g.ListenIncoming(ctx, d.ch)
	if err != nil {
		t.Fatal(err)
	}
	d.res = res
	return d
}

// wait returns the destination's outcome.
func (d *liveDest) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-d.res:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("destination still loading after 60s")
	}
	return nil
}

// sameRAM compares two machines' RAM byte for byte.
func sameRAM(t *testing.T, a, b *machine.Machine) {
	t.Helper()
	ab, bb := a.Memory().Blocks(), b.Memory().Blocks()
	if len(ab) != len(bb) {
		t.Fatalf("%d RAM blocks vs %d", len(ab), len(bb))
	}
	for i := range ab {
		if !bytes.Equal(ab[i].Mem, bb[i].Mem) {
			for off := 0; off < len(ab[i].Mem); off += 4096 {
				if !bytes.Equal(ab[i].Mem[off:off+4096], bb[i].Mem[off:off+4096]) {
					t.Fatalf("RAM block %s differs first at page %#x", ab[i].Name, ab[i].GPA+uint64(off))
				}
			}
		}
	}
}

func TestLiveMigrationOfTheDirtierIsExact(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier + " dirty_rate_mb=64"})
	if err := src.M.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, src, 1)
	dst := newLiveDest(t, harness.MachineOptions{}, false)
	g := migrator(src)
	if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "events", State: true}}); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(dst.ch); err != nil {
		t.Fatal(err)
	}
	info := waitStatus(t, g)
	if info.Status != migration.StatusCompleted {
		t.Fatalf("migration %s: %s", info.Status, info.ErrorDesc)
	}
	if err := dst.wait(t); err != nil {
		t.Fatal(err)
	}
	if st, _ := src.M.State(); st != machine.StatePostMigrate {
		t.Fatalf("source after migration: %s", st)
	}
	if st, _ := dst.ip.M.State(); st != machine.StatePaused {
		t.Fatalf("destination with autostart off: %s, want paused", st)
	}
	sameRAM(t, src.M, dst.ip.M)
	pat, err := dirtycheck.Check(dst.ip.M.Memory(), dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatalf("destination pattern: %v", err)
	}
	t.Logf("query-migrate: status %s total %dms downtime %dms setup %dms, ram %+v; pattern %+v",
		info.Status, *info.TotalTime, *info.Downtime, *info.SetupTime, *info.RAM, pat)
	last := passes(src.Console.String())
	if err := dst.ip.M.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for passes(dst.ip.Console.String()) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("destination guest does not continue: %q", dst.ip.Console.String())
		}
		time.Sleep(time.Millisecond)
	}
	stream := src.Console.String() + dst.ip.Console.String()
	if want := fmt.Sprintf("\nDIRTY pass=%d\n", last+1); !strings.Contains(stream, want) {
		t.Fatalf("the pass numbering does not continue (%q missing)", want)
	}
}
