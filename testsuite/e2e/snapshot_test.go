package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
	"wasmvmm/testsuite/dirtycheck"
	"wasmvmm/testsuite/harness"
)

const (
	dirtyStart = 16 << 20
	dirtyEnd   = 24 << 20
)

var dirtier = fmt.Sprintf("workload=dirtier dirty_start=%#x dirty_end=%#x", dirtyStart, dirtyEnd)

func migrator(ip *harness.InProcess) *migration.Migrator {
	return migration.New(migration.Config{Machine: ip.M, MachineType: ip.M.Config().MachineType.Name})
}

// waitStatus waits until the migration ends and returns its final info.
func waitStatus(t *testing.T, g *migration.Migrator) migration.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for g.Status().Running() {
		if ctx.Err() != nil {
			t.Fatalf("migration still %s after 60s", g.Status())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return g.Query()
}

func passes(s string) int { return strings.Count(s, "DIRTY pass=") }

func waitPasses(t *testing.T, ip *harness.InProcess, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for passes(ip.Console.String()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d passes; console:\n%s", n, ip.Console.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// snapshot saves src to a file and checks the source's state afterwards.
func snapshot(t *testing.T, src *harness.InProcess) string {
	t.Helper()
	return snapshotWith(t, src, migrator(src))
}

// snapshotWith saves src to a file through g (src's migrator, its
// capabilities set) and checks the source's state afterwards.
func snapshotWith(t *testing.T, src *harness.InProcess, g *migration.Migrator) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snap.bin")
	if err := g.Start(migration.Channel{Type: "main", Transport: "file", Path: path}); err != nil {
		t.Fatal(err)
	}
	info := waitStatus(t, g)
	if info.Status != migration.StatusCompleted {
		t.Fatalf("snapshot %s: %s", info.Status, info.ErrorDesc)
	}
	if st, _ := src.M.State(); st != machine.StatePostMigrate {
		t.Fatalf("source state after snapshot: %s (QEMU leaves postmigrate)", st)
	}
	return path
}

// restore loads path into a fresh machine in this process.
func restore(t *testing.T, path string, autostart bool) (*harness.InProcess, error) {
	t.Helper()
	dst := incomingMachine(t, autostart)
	return dst, loadSnapshot(migrator(dst), path)
}

// incomingMachine is a fresh machine of this process waiting in inmigrate.
func incomingMachine(t *testing.T, autostart bool) *harness.InProcess {
	t.Helper()
	dst := harness.NewMachine(t, harness.MachineOptions{NoBoot: true})
	dst.M.SetAutostart(autostart)
	if err := dst.M.StartIncoming(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// loadSnapshot loads the snapshot file at path through g.
func loadSnapshot(g *migration.Migrator, path string) error {
	return g.Incoming(context.Background(), migration.Channel{Type: "main", Transport: "file", Path: path})
}

// checkRestoredPaused checks a dirtier restored with autostart off: it is
// paused and its pages hold the saved pattern.
func checkRestoredPaused(t *testing.T, dst *harness.InProcess, saved dirtycheck.Pattern) {
	t.Helper()
	if st, _ := dst.M.State(); st != machine.StatePaused {
		t.Fatalf("restored with autostart off: %s, want paused", st)
	}
	got, err := dirtycheck.Check(dst.M.Memory(), dirtyStart, dirtyEnd)
	if err != nil || got != saved {
		t.Fatalf("restored pattern %+v, saved %+v (%v)", got, saved, err)
	}
}

// checkRestoredContinues resumes a restored dirtier and checks that it goes
// on from the source's pass last, without rebooting.
func checkRestoredContinues(t *testing.T, src, dst *harness.InProcess, last int) {
	t.Helper()
	if err := dst.M.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for passes(dst.Console.String()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("restored guest does not continue: %q", dst.Console.String())
		}
		time.Sleep(time.Millisecond)
	}
	if want := fmt.Sprintf("\nDIRTY pass=%d\n", last+1); !strings.Contains(src.Console.String()+dst.Console.String(), want) {
		t.Fatalf("the pass numbering does not continue (%q missing)", want)
	}
	if strings.Contains(dst.Console.String(), "WASMVMM-GUEST BOOT") {
		t.Fatal("restored guest rebooted")
	}
}

// savedDirtier runs the dirtier for three passes and saves it with save
// (snapshot, mappedSnapshot); it returns the source, the file, the pattern
// the source's pages hold and the source's last pass.
func savedDirtier(t *testing.T, save func(*testing.T, *harness.InProcess) string) (src *harness.InProcess, path string, saved dirtycheck.Pattern, last int) {
	t.Helper()
	src = harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	if err := src.M.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, src, 3)
	path = save(t, src)
	saved, err := dirtycheck.Check(src.M.Memory(), dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatalf("source pattern: %v", err)
	}
	return src, path, saved, passes(src.Console.String())
}

func TestSnapshotRunningDirtierRestoresExactly(t *testing.T) {
	src, path, saved, last := savedDirtier(t, snapshot)
	dst, err := restore(t, path, false)
	if err != nil {
		t.Fatal(err)
	}
	checkRestoredPaused(t, dst, saved)
	checkRestoredContinues(t, src, dst, last)
	// cont on the source after a snapshot resumes it (QEMU's postmigrate).
	if err := src.M.EnterRunState(machine.StateRunning); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, src, last+1)
}

func TestSnapshotKeepsRunStates(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		dst, err := restore(t, snapshot(t, src), true)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := dst.M.State(); st != machine.StateRunning {
			t.Fatalf("state %s", st)
		}
	})
	t.Run("paused", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		src.M.Pause()
		dst, err := restore(t, snapshot(t, src), true)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := dst.M.State(); st != machine.StatePaused {
			t.Fatalf("a paused guest restored as %s", st)
		}
	})
	t.Run("suspended", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=suspend dirty_end=24M"})
		src.M.Start(false)
		harness.WaitFor(t, src.Console, "GUEST SUSPEND", 20*time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for st, _ := src.M.State(); st != machine.StateSuspended; st, _ = src.M.State() {
			if time.Now().After(deadline) {
				t.Fatalf("source never suspended: %s", st)
			}
			time.Sleep(time.Millisecond)
		}
		dst, err := restore(t, snapshot(t, src), true)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := dst.M.State(); st != machine.StateSuspended {
			t.Fatalf("a suspended guest restored as %s", st)
		}
		time.Sleep(100 * time.Millisecond)
		if strings.Contains(dst.Console.String(), "GUEST RESUMED") {
			t.Fatal("suspended guest ran before system_wakeup")
		}
		if err := dst.M.Wakeup(); err != nil {
			t.Fatal(err)
		}
		harness.WaitFor(t, dst.Console, "GUEST RESUMED", 20*time.Second)
	})
}

func TestBadSnapshotsAreRefused(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 1)
	path := snapshot(t, src)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cases := map[string][]byte{
		"truncated header": good[:3],
		"truncated RAM":    good[:len(good)/2],
		"truncated end":    good[:len(good)-10],
		"wrong magic":      append([]byte("QEVX"), good[4:]...),
		"empty":            nil,
	}
	// QEMU's format has no checksums: a flipped byte inside a field's data
	// loads (as it would in QEMU); flipped structure is refused.
	i := bytes.Index(good, []byte("\x06serial"))
	if i < 0 {
		t.Fatal("no serial section header in the stream")
	}
	flipped := append([]byte(nil), good...)
	flipped[i+2] ^= 0x20 // "sErial": a section this machine lacks
	cases["flipped byte in a section name"] = flipped
	desc := append([]byte(nil), good...)
	desc[len(desc)-1] ^= 0xff // the closing brace of the JSON
	cases["flipped byte in the vmdesc"] = desc
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			os.WriteFile(p, b, 0o600)
			dst, err := restore(t, p, true)
			if err == nil {
				t.Fatal("accepted")
			}
			if st, _ := dst.M.State(); st != machine.StateInMigrate {
				t.Fatalf("after a refused stream the machine is %s, want inmigrate", st)
			}
			t.Logf("refused: %v", err)
		})
	}
}
