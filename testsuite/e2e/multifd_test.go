package e2e

import (
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
	"wasmvmm/testsuite/dirtycheck"
	"wasmvmm/testsuite/harness"
)

// newMultifdDest is newLiveDest with the multifd capability set (it must
// be set before the destination listens).
func newMultifdDest(t *testing.T, multifd bool) *liveDest {
	t.Helper()
	return newLiveDestWith(t, harness.MachineOptions{}, false, func(g *migration.Migrator) {
		if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "multifd", State: multifd}}); err != nil {
			t.Fatal(err)
		}
	})
}

// multifdSource starts the dirtying guest and a migrator with multifd set
// as asked (channels 0: off).
func multifdSource(t *testing.T, args string, channels int64) (*harness.InProcess, *migration.Migrator) {
	t.Helper()
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier + args})
	if err := src.M.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, src, 1)
	g, _ := liveMigrator(t, src)
	if channels > 0 {
		if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "multifd", State: true}}); err != nil {
			t.Fatal(err)
		}
		if err := g.SetParameters(migration.ParameterUpdate{MultifdChannels: &channels}); err != nil {
			t.Fatal(err)
		}
	}
	return src, g
}

// TestLiveMigrationMultifdIsExact migrates the dirtying guest with 2 and 4
// parallel RAM channels, in one fast migration and in many rate-limited
// passes (pages resent in later passes, possibly on other channels), and
// compares every byte of RAM with the stopped source.
func TestLiveMigrationMultifdIsExact(t *testing.T) {
	for _, tc := range []struct {
		name      string
		channels  int64
		args      string
		bw, limit int64
	}{
		{"2ch-64MiBps", 2, " dirty_rate_mb=64", 0, 0},
		{"4ch-64MiBps", 4, " dirty_rate_mb=64", 0, 0},
		{"4ch-many-passes", 4, " dirty_rate_mb=4", 8 << 20, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, g := multifdSource(t, tc.args, tc.channels)
			if tc.bw > 0 {
				g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &tc.bw})
			}
			if tc.limit > 0 {
				g.SetParameters(migration.ParameterUpdate{DowntimeLimit: &tc.limit})
			}
			dst := newMultifdDest(t, true)
			info := migrateTo(t, g, dst)
			if info.Status != migration.StatusCompleted {
				t.Fatalf("migration %s: %s", info.Status, info.ErrorDesc)
			}
			if err := dst.wait(t); err != nil {
				t.Fatal(err)
			}
			if st, _ := src.M.State(); st != machine.StatePostMigrate {
				t.Fatalf("source after migration: %s", st)
			}
			sameRAM(t, src.M, dst.ip.M)
			pat, err := dirtycheck.Check(dst.ip.M.Memory(), dirtyStart, dirtyEnd)
			if err != nil {
				t.Fatalf("destination pattern: %v", err)
			}
			dinfo := dst.g.Query()
			t.Logf("total %dms downtime %dms, passes %d, ram %+v; destination ram %+v; pattern %+v",
				*info.TotalTime, *info.Downtime, info.RAM.DirtySyncCount, *info.RAM, *dinfo.RAM, pat)
			if dinfo.RAM.Normal == 0 {
				t.Fatalf("the destination counted no pages: %+v", *dinfo.RAM)
			}
			if err := dst.ip.M.Resume(); err != nil {
				t.Fatal(err)
			}
			waitPasses(t, dst.ip, 1)
		})
	}
}

// TestLiveMigrationMultifdRefused: a capability mismatch is refused in the
// pre-flight, before any RAM moves, and an fd channel at migrate time; the
// source keeps running.
func TestLiveMigrationMultifdRefused(t *testing.T) {
	for _, tc := range []struct {
		name          string
		srcOn, dstOn  bool
		want, dstWant string
	}{
		{"on-source-only", true, false, "multifd is on on the source and off here", "multifd is on on the source and off here"},
		{"on-destination-only", false, true, "multifd is on here and off on the source", "multifd is on here and off on the source"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ch int64
			if tc.srcOn {
				ch = 2
			}
			src, g := multifdSource(t, " dirty_rate_mb=16", ch)
			dst := newMultifdDest(t, tc.dstOn)
			info := migrateTo(t, g, dst)
			if info.Status != migration.StatusFailed || !strings.Contains(info.ErrorDesc, tc.want) {
				t.Fatalf("migration %s: %q, want failed with %q", info.Status, info.ErrorDesc, tc.want)
			}
			if info.RAM != nil && info.RAM.Normal != 0 {
				t.Fatalf("pages moved before the refusal: %+v", *info.RAM)
			}
			if err := dst.wait(t); err == nil || !strings.Contains(err.Error(), tc.dstWant) {
				t.Fatalf("destination: %v, want %q", err, tc.dstWant)
			}
			checkSourceBack(t, src, machine.StateRunning, "")
		})
	}
	t.Run("fd-channel", func(t *testing.T) {
		src, g := multifdSource(t, "", 2)
		err := g.Start(migration.Channel{Type: "main", Transport: "fd", FD: "99"})
		if err == nil || !strings.Contains(err.Error(), "multifd needs a unix or tcp channel") {
			t.Fatalf("migrate to fd with multifd: %v", err)
		}
		checkSourceBack(t, src, machine.StateRunning, "")
	})
}

// cutProxy forwards unix connections to a destination and cuts the
// cut-th one (0 is the main channel) after limit bytes from the source.
type cutProxy struct {
	ch  migration.Channel
	mu  sync.Mutex
	cut bool
}

func newCutProxy(t *testing.T, to migration.Channel, cut int, limit int64) *cutProxy {
	t.Helper()
	p := &cutProxy{ch: migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "proxy.sock")}}
	ln, err := net.Listen("unix", p.ch.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", to.Path)
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(c, d); c.Close() }()
			go func(n int) {
				if n == cut {
					io.CopyN(d, c, limit)
					p.mu.Lock()
					p.cut = true
					p.mu.Unlock()
					c.Close()
					d.Close()
					return
				}
				io.Copy(d, c)
				d.(*net.UnixConn).CloseWrite() // the stream's end; the verdict still comes back
			}(n)
		}
	}()
	return p
}

// TestLiveMigrationMultifdChannelCut: a multifd channel closed in the
// middle of the RAM fails the migration on both sides; the source keeps
// running.
func TestLiveMigrationMultifdChannelCut(t *testing.T) {
	src, g := multifdSource(t, " dirty_rate_mb=64", 2)
	bw := int64(32 << 20)
	g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &bw})
	dst := newMultifdDest(t, true)
	// The second multifd channel, 400 bytes in: past its init packet, inside
	// its first page packet or its first sync.
	proxy := newCutProxy(t, dst.ch, 2, 400)
	if err := g.Start(proxy.ch); err != nil {
		t.Fatal(err)
	}
	info := waitStatus(t, g)
	if info.Status != migration.StatusFailed {
		t.Fatalf("migration %s, want failed", info.Status)
	}
	proxy.mu.Lock()
	cut := proxy.cut
	proxy.mu.Unlock()
	if !cut {
		t.Fatalf("the proxy did not cut the channel; source error %q", info.ErrorDesc)
	}
	t.Logf("source error: %s", info.ErrorDesc)
	derr := dst.wait(t)
	if derr == nil || !strings.Contains(derr.Error(), "multifd channel 1") {
		t.Fatalf("destination: %v, want a multifd channel 1 error", derr)
	}
	t.Logf("destination error: %v", derr)
	checkSourceBack(t, src, machine.StateRunning, "")
}

// TestLiveMigrationMultifdCancel: migrate_cancel while pages stream on the
// channels: cancelled, the source keeps running, the destination fails.
func TestLiveMigrationMultifdCancel(t *testing.T) {
	src, g := multifdSource(t, " dirty_rate_mb=64", 4)
	bw := int64(2 << 20) // the first pass takes seconds
	g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &bw})
	dst := newMultifdDest(t, true)
	if err := g.Start(dst.ch); err != nil {
		t.Fatal(err)
	}
	waitMigStatus(t, g, migration.StatusActive)
	for g.Query().RAM == nil || g.Query().RAM.Normal == 0 {
		waitPasses(t, src, passes(src.Console.String())+1)
	}
	g.Cancel()
	if info := waitStatus(t, g); info.Status != migration.StatusCancelled {
		t.Fatalf("after cancel: %s %s", info.Status, info.ErrorDesc)
	}
	if err := dst.wait(t); err == nil {
		t.Fatal("the destination loaded a cancelled migration")
	} else {
		t.Logf("destination error: %v", err)
	}
	checkSourceBack(t, src, machine.StateRunning, "")
}
