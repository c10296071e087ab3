package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"wasmvmm/abi"
	"wasmvmm/host/blockdev"
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
	return newLiveDestWith(t, o, autostart, nil)
}

// newLiveDestWith is newLiveDest with prepare run on the destination's
// migrator before it listens (capabilities, parameters).
func newLiveDestWith(t *testing.T, o harness.MachineOptions, autostart bool, prepare func(*migration.Migrator)) *liveDest {
	t.Helper()
	o.NoBoot, o.Incoming = true, true
	ip := harness.NewMachine(t, o)
	ip.M.SetAutostart(autostart)
	if err := ip.M.StartIncoming(); err != nil {
		t.Fatal(err)
	}
	d := &liveDest{ip: ip, g: migrator(ip)}
	if prepare != nil {
		prepare(d.g)
	}
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

// TestLiveMigrationOfTheDirtierIsExact migrates the dirtying guest (paced,
// and flat out with auto-converge over a narrow link so that it takes
// several passes) to a destination that stays paused, then compares every
// byte of RAM with the stopped source, checks the dirtier's step pattern,
// and resumes the destination: the pass numbering must continue.
func TestLiveMigrationOfTheDirtierIsExact(t *testing.T) {
	for _, tc := range []struct {
		name, args string
		bw, limit  int64
		converge   bool
	}{
		{"64MiBps", " dirty_rate_mb=64", 0, 0, false},
		{"flat-out-narrow-link", " marker_every=50", 24 << 20, 0, true},
		{"many-passes", " dirty_rate_mb=4", 8 << 20, 6, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier + tc.args})
			if err := src.M.Start(false); err != nil {
				t.Fatal(err)
			}
			waitPasses(t, src, 1)
			dst := newLiveDest(t, harness.MachineOptions{}, false)
			g, log := liveMigrator(t, src)
			if tc.bw > 0 {
				g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &tc.bw})
			}
			if tc.limit > 0 {
				g.SetParameters(migration.ParameterUpdate{DowntimeLimit: &tc.limit})
			}
			if tc.converge {
				g.SetCapabilities([]migration.CapabilityState{{Capability: "auto-converge", State: true}})
			}
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
			if st, _ := dst.ip.M.State(); st != machine.StatePaused {
				t.Fatalf("destination with autostart off: %s, want paused", st)
			}
			if !log.has("MIGRATION:setup") || !log.has("MIGRATION:active") || !log.has("MIGRATION:device") || !log.has("MIGRATION:completed") || !log.has("MIGRATION_PASS") {
				t.Fatalf("events %v", log.evs)
			}
			sameRAM(t, src.M, dst.ip.M)
			pat, err := dirtycheck.Check(dst.ip.M.Memory(), dirtyStart, dirtyEnd)
			if err != nil {
				t.Fatalf("destination pattern: %v", err)
			}
			t.Logf("total %dms downtime %dms setup %dms, ram %+v; pattern %+v",
				*info.TotalTime, *info.Downtime, *info.SetupTime, *info.RAM, pat)
			if tc.limit == 0 && *info.Downtime > g.Parameters().DowntimeLimit {
				t.Errorf("downtime %d ms above the limit", *info.Downtime)
			}
			last := passes(src.Console.String())
			if err := dst.ip.M.Resume(); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("\nDIRTY pass=%d\n", last+1)
			if tc.name == "flat-out-narrow-link" {
				want = fmt.Sprintf("\nDIRTY pass=%d\n", (last+1)*50)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(src.Console.String()+dst.ip.Console.String(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("the pass numbering does not continue (%q missing): %q", want, dst.ip.Console.String())
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// diskExtra attaches a raw image as blk0 in a VM configuration.
func diskExtra(img string) string {
	return fmt.Sprintf("\n[[device]]\nid = \"blk0\"\nbackends = { disk = %q }\n", img)
}

// queryMigrate returns query-migrate's answer.
func queryMigrate(t *testing.T, mon *qmp.SocketMonitor) map[string]any {
	t.Helper()
	r := qmpRun(t, mon, "query-migrate")
	ret, _ := r["return"].(map[string]any)
	return ret
}

// waitMigrationStatus polls until query-migrate reports one of states.
func waitMigrationStatus(t *testing.T, mon *qmp.SocketMonitor, states ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ret := queryMigrate(t, mon)
		for _, s := range states {
			if ret["status"] == s {
				return ret
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %v, want %v", ret["status"], states)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectMigrationEvent waits for a MIGRATION event with status.
func expectMigrationEvent(t *testing.T, events <-chan qmp.Event, status string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Event == "MIGRATION" && e.Data["status"] == status {
				return
			}
		case <-timeout:
			t.Fatalf("no MIGRATION event with status %s", status)
		}
	}
}

// ownerRefused checks that a third party cannot take img and that the
// refusal names a holder.
func ownerRefused(t *testing.T, img string) string {
	t.Helper()
	im, err := blockdev.Open(img, blockdev.Options{Owner: "third party"})
	if err == nil {
		im.Close()
		t.Fatal("a third party could take the disk: nobody owns it")
	}
	if !errors.Is(err, blockdev.ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("refusal does not name the holder: %v", err)
	}
	return err.Error()
}

// TestLiveMigrationBetweenProcessesWithTheCLI migrates a running guest with
// a disk from one wasmvmm process to another (--incoming defer, then QMP
// migrate-incoming with QEMU's channels JSON) with `wasmvmm migrate`; the
// disk's lock moves from the source's pid to the destination's.
func TestLiveMigrationBetweenProcessesWithTheCLI(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	img := scratchImage(t, 16<<20)
	cfg := writeConfig(t, dir, b.Guest, dirtier+" dirty_rate_mb=64", diskExtra(img))
	srcSock, dstSock, migSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock"), filepath.Join(dir, "mig.sock")
	src := harness.Start(t, b, dir, "run", cfg, "--qmp", srcSock)
	src.WaitSerial(t, "DIRTY pass=1\n", 20*time.Second)
	dst := harness.Start(t, b, dir, "run", cfg, "--incoming", "defer", "--qmp", dstSock)
	dmon := qmpClient(t, dstSock)
	if s := status(t, dmon); s != "inmigrate" {
		t.Fatalf("destination status %s", s)
	}
	in := `{"execute":"migrate-incoming","arguments":{"channels":[{"channel-type":"main","addr":{"transport":"socket","type":"unix","path":"` + migSock + `"}}]}}`
	if out, err := dmon.Run([]byte(in)); err != nil {
		t.Fatalf("migrate-incoming: %v %s", err, out)
	}
	if ret := queryMigrate(t, dmon); ret["status"] != "setup" {
		t.Fatalf("destination waiting: %v", ret)
	}
	if out, err := dmon.Run([]byte(in)); err == nil {
		t.Fatalf("a second migrate-incoming was accepted: %s", out)
	}
	if !strings.Contains(ownerRefused(t, img), fmt.Sprint(src.Cmd.Process.Pid)) {
		t.Fatal("before migration the source does not own the disk")
	}
	code, out := harness.Run(t, b, "migrate", "--qmp", srcSock, "unix:"+migSock)
	t.Logf("wasmvmm migrate:\n%s", out)
	if code != 0 || !strings.Contains(out, "status:       completed") || !strings.Contains(out, "downtime:") {
		t.Fatalf("wasmvmm migrate exit %d", code)
	}
	mon := qmpClient(t, srcSock)
	if s := status(t, mon); s != "postmigrate" {
		t.Fatalf("source status %s", s)
	}
	final := queryMigrate(t, mon)
	for _, k := range []string{"status", "total-time", "downtime", "setup-time", "ram"} {
		if _, ok := final[k]; !ok {
			t.Fatalf("query-migrate lacks %q: %v", k, final)
		}
	}
	ram, _ := final["ram"].(map[string]any)
	for _, k := range []string{"transferred", "remaining", "total", "duplicate", "normal", "normal-bytes", "mbps", "dirty-sync-count", "dirty-pages-rate", "pages-per-second"} {
		if _, ok := ram[k]; !ok {
			t.Fatalf("query-migrate ram lacks %q: %v", k, ram)
		}
	}
	if ram["total"].(float64) != 128<<20 || ram["normal-bytes"].(float64) < 8<<20 {
		t.Fatalf("ram figures: %v", ram)
	}
	before := passes(src.SerialText())
	deadline := time.Now().Add(20 * time.Second)
	for passes(dst.SerialText()) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("destination guest does not run; serial %q", dst.SerialText())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := status(t, dmon); s != "running" {
		t.Fatalf("destination status %s", s)
	}
	if want := fmt.Sprintf("\nDIRTY pass=%d\n", before+1); !strings.Contains(src.SerialText()+dst.SerialText(), want) {
		t.Fatalf("numbering does not continue: %q missing", want)
	}
	if holder := ownerRefused(t, img); !strings.Contains(holder, fmt.Sprint(dst.Cmd.Process.Pid)) {
		t.Fatalf("after migration the disk is not the destination's: %s", holder)
	}
	ret := queryMigrate(t, dmon)
	if ret["status"] != "completed" {
		t.Fatalf("destination query-migrate: %v", ret)
	}
	// cont on the source (postmigrate) must first take the disk back, as
	// QEMU does: refused while the destination owns it, naming the holder.
	if out, err := mon.Run([]byte(`{"execute":"cont"}`)); err == nil {
		t.Fatalf("cont on the source while the destination owns the disk: %s", out)
	} else if !strings.Contains(err.Error(), fmt.Sprint(dst.Cmd.Process.Pid)) {
		t.Fatalf("cont refused without naming the holder: %v", err)
	}
	if s := status(t, mon); s != "postmigrate" {
		t.Fatalf("source after a refused cont: %s", s)
	}
	// Once the destination is gone, cont takes the disk back and runs.
	qmpRun(t, dmon, "quit")
	dst.Wait(t, 20*time.Second)
	qmpRun(t, mon, "cont")
	if s := status(t, mon); s != "running" {
		t.Fatalf("source after cont: %s", s)
	}
	if holder := ownerRefused(t, img); !strings.Contains(holder, fmt.Sprint(src.Cmd.Process.Pid)) {
		t.Fatalf("after cont the disk is not the source's again: %s", holder)
	}
}

// TestDestinationKilledMidStream: the source fails the migration, owns its
// disk again and keeps running.
func TestDestinationKilledMidStream(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	img := scratchImage(t, 16<<20)
	cfg := writeConfig(t, dir, b.Guest, dirtier, diskExtra(img))
	srcSock, migSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
	src := harness.Start(t, b, dir, "run", cfg, "--qmp", srcSock)
	src.WaitSerial(t, "DIRTY pass=1\n", 20*time.Second)
	dstSock := filepath.Join(dir, "dst.sock")
	dst := harness.Start(t, b, dir, "run", cfg, "--incoming", "unix:"+migSock, "--qmp", dstSock)
	waitMigrationStatus(t, qmpClient(t, dstSock), "setup") // listening
	mon := qmpClient(t, srcSock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := drainEvents(t, ctx, mon)
	run := func(cmd string) {
		if out, err := mon.Run([]byte(cmd)); err != nil {
			t.Fatalf("%s: %v %s", cmd, err, out)
		}
	}
	run(`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}`)
	// 4 MiB/s: the first pass alone takes seconds; the dirtier never lets
	// it converge.
	run(`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":4194304}}`)
	run(`{"execute":"migrate","arguments":{"uri":"unix:` + migSock + `"}}`)
	waitMigrationStatus(t, mon, "active")
	time.Sleep(300 * time.Millisecond)
	active := queryMigrate(t, mon)
	if _, ok := active["expected-downtime"]; !ok {
		t.Fatalf("query-migrate while active lacks expected-downtime: %v", active)
	}
	dst.Cmd.Process.Kill()
	ret := waitMigrationStatus(t, mon, "failed")
	expectMigrationEvent(t, events, "failed")
	t.Logf("error-desc: %v", ret["error-desc"])
	if ret["error-desc"] == nil || ret["error-desc"] == "" {
		t.Fatal("no error-desc")
	}
	if s := status(t, mon); s != "running" {
		t.Fatalf("source status after the failure: %s", s)
	}
	n := passes(src.SerialText())
	src.WaitSerial(t, fmt.Sprintf("DIRTY pass=%d\n", n+1), 20*time.Second)
	if holder := ownerRefused(t, img); !strings.Contains(holder, fmt.Sprint(src.Cmd.Process.Pid)) {
		t.Fatalf("the source does not own its disk: %s", holder)
	}

	// quit in the middle of a migration: the source cancels it and exits
	// cleanly (RAM is not unmapped under the sender).
	mig2, dst2Sock := filepath.Join(dir, "mig2.sock"), filepath.Join(dir, "dst2.sock")
	harness.Start(t, b, dir, "run", cfg, "--incoming", "unix:"+mig2, "--qmp", dst2Sock)
	waitMigrationStatus(t, qmpClient(t, dst2Sock), "setup")
	run(`{"execute":"migrate","arguments":{"uri":"unix:` + mig2 + `"}}`)
	waitMigrationStatus(t, mon, "active")
	time.Sleep(200 * time.Millisecond)
	run(`{"execute":"quit"}`)
	if code := src.Wait(t, 20*time.Second); code != 0 || strings.Contains(src.Stderr.String(), "panic") {
		t.Fatalf("quit during a migration: exit %d\n%s", code, src.Stderr.String())
	}
}

// eventLog records the events a Migrator emits.
type eventLog struct {
	mu  sync.Mutex
	evs []string
}

func (l *eventLog) emit(name string, data map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := data["status"]; ok {
		name += ":" + fmt.Sprint(s)
	}
	l.evs = append(l.evs, name)
}

func (l *eventLog) has(e string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.evs {
		if x == e {
			return true
		}
	}
	return false
}

// liveMigrator is a Migrator with events on, recorded in the returned log.
func liveMigrator(t *testing.T, ip *harness.InProcess) (*migration.Migrator, *eventLog) {
	t.Helper()
	log := &eventLog{}
	g := migration.New(migration.Config{Machine: ip.M, MachineType: ip.M.Config().MachineType.Name, Emit: log.emit})
	if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "events", State: true}}); err != nil {
		t.Fatal(err)
	}
	return g, log
}

// fakeDest is a destination that speaks only the pre-flight framing: it
// answers (or not), then reads the stream until told to stop reading.
type fakeDest struct {
	ch       migration.Channel
	stopRead chan struct{}
	hangUp   chan struct{} // closed: the fake closes the connection
}

func newFakeDest(t *testing.T, answer bool) *fakeDest {
	t.Helper()
	f := &fakeDest{stopRead: make(chan struct{}), hangUp: make(chan struct{})}
	f.ch = migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "fake.sock")}
	ln, err := net.Listen("unix", f.ch.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var hdr [12]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[8:]))); err != nil {
			return
		}
		if !answer {
			<-f.stopRead
			return
		}
		body := []byte(`{"ok":true}`)
		c.Write(append(binary.BigEndian.AppendUint32([]byte("WVMMACK1"), uint32(len(body))), body...))
		buf := make([]byte, 1<<20)
		for {
			select {
			case <-f.stopRead:
				time.Sleep(time.Minute)
				return
			case <-f.hangUp:
				return
			default:
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := c.Read(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	return f
}

// waitMigStatus waits until the migrator reports status s.
func waitMigStatus(t *testing.T, g *migration.Migrator, s migration.Status) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for g.Status() != s {
		if time.Now().After(deadline) {
			t.Fatalf("migration is %s, want %s (%s)", g.Status(), s, g.Query().ErrorDesc)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkSourceBack checks the source after a failed or cancelled migration:
// its run state is want, the guest runs on (if running), and it owns img.
func checkSourceBack(t *testing.T, src *harness.InProcess, want machine.RunState, img string) {
	t.Helper()
	if st, _ := src.M.State(); st != want {
		t.Fatalf("source state %s, want %s", st, want)
	}
	if want == machine.StateRunning {
		waitPasses(t, src, passes(src.Console.String())+1)
	}
	if img != "" {
		ownerRefused(t, img)
	}
}

// Closing the source machine while a migration sends its RAM cancels the
// migration and waits for it before the RAM is unmapped. Before
// Machine.BeforeClose, the sender read unmapped RAM and the process died.
func TestClosingTheSourceEndsItsMigrationFirst(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	if err := src.M.Start(false); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, src, 1)
	g, log := liveMigrator(t, src)
	bw := int64(8 << 20) // slow enough that the first pass is still going
	if err := g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &bw}); err != nil {
		t.Fatal(err)
	}
	f := newFakeDest(t, true)
	defer close(f.hangUp)
	if err := g.Start(f.ch); err != nil {
		t.Fatal(err)
	}
	waitMigStatus(t, g, migration.StatusActive)
	time.Sleep(100 * time.Millisecond)
	if err := src.M.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if st := g.Status(); st != migration.StatusCancelled {
		t.Fatalf("migration %s after the machine closed, want cancelled (%s)", st, g.Query().ErrorDesc)
	}
	if !log.has("MIGRATION:cancelled") {
		t.Fatalf("events %v", log.evs)
	}
}

func TestLiveMigrationCancelInEveryState(t *testing.T) {
	start := func(t *testing.T, args ...string) (*harness.InProcess, string) {
		img := scratchImage(t, 16<<20)
		cmdline := strings.Join(append([]string{dirtier}, args...), " ")
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: cmdline, Backends: map[string]map[string]string{"blk0": {"disk": img}}})
		if err := src.M.Start(false); err != nil {
			t.Fatal(err)
		}
		waitPasses(t, src, 1)
		return src, img
	}
	t.Run("setup", func(t *testing.T) {
		src, img := start(t)
		g, log := liveMigrator(t, src)
		f := newFakeDest(t, false)
		defer close(f.stopRead)
		if err := g.Start(f.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusSetup)
		time.Sleep(50 * time.Millisecond)
		g.Cancel()
		info := waitStatus(t, g)
		if info.Status != migration.StatusCancelled || !log.has("MIGRATION:cancelling") || !log.has("MIGRATION:cancelled") {
			t.Fatalf("status %s, events %v", info.Status, log.evs)
		}
		checkSourceBack(t, src, machine.StateRunning, img)
	})
	t.Run("active", func(t *testing.T) {
		src, img := start(t)
		dst := newLiveDest(t, harness.MachineOptions{Backends: map[string]map[string]string{"blk0": {"disk": img}}}, true)
		g, _ := liveMigrator(t, src)
		bw := int64(2 << 20)
		g.SetParameters(migration.ParameterUpdate{MaxBandwidth: &bw})
		if err := g.Start(dst.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusActive)
		time.Sleep(100 * time.Millisecond)
		g.Cancel()
		if info := waitStatus(t, g); info.Status != migration.StatusCancelled {
			t.Fatalf("status %s", info.Status)
		}
		checkSourceBack(t, src, machine.StateRunning, img)
		if err := dst.wait(t); err == nil {
			t.Fatal("the destination completed a cancelled migration")
		}
		if st, _ := dst.ip.M.State(); st != machine.StateInMigrate {
			t.Fatalf("destination %s, want inmigrate", st)
		}
	})
	t.Run("pre-switchover", func(t *testing.T) {
		src, img := start(t)
		dst := newLiveDest(t, harness.MachineOptions{Backends: map[string]map[string]string{"blk0": {"disk": img}}}, true)
		g, _ := liveMigrator(t, src)
		g.SetCapabilities([]migration.CapabilityState{{Capability: "pause-before-switchover", State: true}})
		if err := g.Start(dst.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusPreSwitchover)
		if st, _ := src.M.State(); st != machine.StateFinishMigrate {
			t.Fatalf("source in pre-switchover: %s", st)
		}
		if err := g.Continue(migration.StatusActive); err == nil {
			t.Fatal("migrate-continue with the wrong state accepted")
		}
		g.Cancel()
		if info := waitStatus(t, g); info.Status != migration.StatusCancelled {
			t.Fatalf("status %s", info.Status)
		}
		checkSourceBack(t, src, machine.StateRunning, img)
	})
	t.Run("pre-switchover-continue", func(t *testing.T) {
		src, img := start(t)
		dst := newLiveDest(t, harness.MachineOptions{Backends: map[string]map[string]string{"blk0": {"disk": img}}}, true)
		g, _ := liveMigrator(t, src)
		g.SetCapabilities([]migration.CapabilityState{{Capability: "pause-before-switchover", State: true}})
		if err := g.Start(dst.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusPreSwitchover)
		if err := g.Continue(migration.StatusPreSwitchover); err != nil {
			t.Fatal(err)
		}
		if info := waitStatus(t, g); info.Status != migration.StatusCompleted {
			t.Fatalf("status %s: %s", info.Status, info.ErrorDesc)
		}
		if err := dst.wait(t); err != nil {
			t.Fatal(err)
		}
		waitPasses(t, dst.ip, 1)
	})
	t.Run("device", func(t *testing.T) {
		// 48 MiB dirtied flat out: more than the sockets buffer.
		src, img := start(t, "dirty_end=64M")
		f := newFakeDest(t, true)
		g, log := liveMigrator(t, src)
		g.SetCapabilities([]migration.CapabilityState{{Capability: "pause-before-switchover", State: true}})
		// A flat-out dirtier does not converge within the default 300 ms
		// at the default 128 MiB/s (its 48 MiB take 375 ms): a long limit
		// lets the switchover come after any pass.
		limit := int64(10000)
		if err := g.SetParameters(migration.ParameterUpdate{DowntimeLimit: &limit}); err != nil {
			t.Fatal(err)
		}
		if err := g.Start(f.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusPreSwitchover)
		// The destination stops reading: the final pages (the dirtier's
		// whole range) fill the sockets and the source waits in device.
		close(f.stopRead)
		time.Sleep(20 * time.Millisecond)
		g.Continue(migration.StatusPreSwitchover)
		waitMigStatus(t, g, migration.StatusDevice)
		// In device the source gives its disk up (right after entering
		// it; a busy host may take a moment) and stays there, blocked on
		// the sockets.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			im, err := blockdev.Open(img, blockdev.Options{Owner: "probe"})
			if err == nil {
				im.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("in device state the source still owns the disk: %v", err)
			}
		}
		time.Sleep(50 * time.Millisecond)
		if g.Status() != migration.StatusDevice {
			t.Fatalf("left device: %s", g.Status())
		}
		g.Cancel()
		if info := waitStatus(t, g); info.Status != migration.StatusCancelled {
			t.Fatalf("status %s", info.Status)
		}
		if !log.has("MIGRATION:device") || !log.has("MIGRATION:cancelled") {
			t.Fatalf("events %v", log.evs)
		}
		checkSourceBack(t, src, machine.StateRunning, img)
	})
	t.Run("after-the-end", func(t *testing.T) {
		src, img := start(t)
		dst := newLiveDest(t, harness.MachineOptions{Backends: map[string]map[string]string{"blk0": {"disk": img}}}, true)
		g, _ := liveMigrator(t, src)
		g.Cancel() // none: nothing to cancel
		if g.Status() != migration.StatusNone {
			t.Fatalf("cancel with no migration: %s", g.Status())
		}
		if err := g.Start(dst.ch); err != nil {
			t.Fatal(err)
		}
		if info := waitStatus(t, g); info.Status != migration.StatusCompleted {
			t.Fatalf("status %s", info.Status)
		}
		g.Cancel()
		if g.Status() != migration.StatusCompleted {
			t.Fatalf("cancel after completion changed the status to %s", g.Status())
		}
		dst.wait(t)
		// failed: a second migration to nowhere, then cancel.
		if err := g.Start(migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "none")}); err != nil {
			t.Fatal(err)
		}
		if info := waitStatus(t, g); info.Status != migration.StatusFailed {
			t.Fatalf("status %s", info.Status)
		}
		g.Cancel()
		if g.Status() != migration.StatusFailed {
			t.Fatalf("cancel after failure changed the status to %s", g.Status())
		}
	})
}

// migrateTo runs one in-process live migration and returns the source's
// final info.
func migrateTo(t *testing.T, g *migration.Migrator, dst *liveDest) migration.Info {
	t.Helper()
	if err := g.Start(dst.ch); err != nil {
		t.Fatal(err)
	}
	return waitStatus(t, g)
}

func TestLiveMigrationKeepsRunStates(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		dst := newLiveDest(t, harness.MachineOptions{}, true)
		info := migrateTo(t, migrator(src), dst)
		if info.Status != migration.StatusCompleted {
			t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
		}
		t.Logf("total %d ms, downtime %d ms, ram %+v", *info.TotalTime, *info.Downtime, *info.RAM)
		dst.wait(t)
		if st, _ := dst.ip.M.State(); st != machine.StateRunning {
			t.Fatalf("state %s", st)
		}
		waitPasses(t, dst.ip, 1)
	})
	t.Run("paused", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		src.M.Pause()
		saved, err := dirtycheck.Check(src.M.Memory(), dirtyStart, dirtyEnd)
		if err != nil {
			t.Fatal(err)
		}
		dst := newLiveDest(t, harness.MachineOptions{}, true)
		if info := migrateTo(t, migrator(src), dst); info.Status != migration.StatusCompleted {
			t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
		}
		dst.wait(t)
		if st, _ := dst.ip.M.State(); st != machine.StatePaused {
			t.Fatalf("a paused guest arrived %s", st)
		}
		if got, err := dirtycheck.Check(dst.ip.M.Memory(), dirtyStart, dirtyEnd); err != nil || got != saved {
			t.Fatalf("pattern %+v, saved %+v (%v)", got, saved, err)
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
		dst := newLiveDest(t, harness.MachineOptions{}, true)
		if info := migrateTo(t, migrator(src), dst); info.Status != migration.StatusCompleted {
			t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
		}
		dst.wait(t)
		if st, _ := dst.ip.M.State(); st != machine.StateSuspended {
			t.Fatalf("a suspended guest arrived %s", st)
		}
		time.Sleep(100 * time.Millisecond)
		if strings.Contains(dst.ip.Console.String(), "GUEST RESUMED") {
			t.Fatal("suspended guest ran before system_wakeup")
		}
		if err := dst.ip.M.Wakeup(); err != nil {
			t.Fatal(err)
		}
		harness.WaitFor(t, dst.ip.Console, "GUEST RESUMED", 20*time.Second)
	})
}

// TestPausedGuestMigratedTwice: QEMU's issue 2395. A paused guest with a
// disk goes A -> B, then B -> C; then A (postmigrate, its disk long given
// up) is migrated again to D: A must not inactivate a second time, D cannot
// take the disk C owns, and A stays as it was.
func TestPausedGuestMigratedTwice(t *testing.T) {
	img := scratchImage(t, 16<<20)
	disk := map[string]map[string]string{"blk0": {"disk": img}}
	a := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier, Backends: disk})
	a.M.Start(false)
	waitPasses(t, a, 1)
	a.M.Pause()
	saved, _ := dirtycheck.Check(a.M.Memory(), dirtyStart, dirtyEnd)
	ga := migrator(a)

	b := newLiveDest(t, harness.MachineOptions{Backends: disk}, true)
	if info := migrateTo(t, ga, b); info.Status != migration.StatusCompleted {
		t.Fatalf("A -> B: %s: %s", info.Status, info.ErrorDesc)
	}
	if err := b.wait(t); err != nil {
		t.Fatal(err)
	}
	c := newLiveDest(t, harness.MachineOptions{Backends: disk}, true)
	if info := migrateTo(t, migrator(b.ip), c); info.Status != migration.StatusCompleted {
		t.Fatalf("B -> C: %s: %s", info.Status, info.ErrorDesc)
	}
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.ip.M.State(); st != machine.StatePaused {
		t.Fatalf("C is %s", st)
	}
	if got, err := dirtycheck.Check(c.ip.M.Memory(), dirtyStart, dirtyEnd); err != nil || got != saved {
		t.Fatalf("C's pattern %+v, saved %+v (%v)", got, saved, err)
	}
	ownerRefused(t, img)

	d := newLiveDest(t, harness.MachineOptions{Backends: disk}, true)
	info := migrateTo(t, ga, d)
	if info.Status != migration.StatusFailed || !strings.Contains(info.ErrorDesc, "activate disk") {
		t.Fatalf("A -> D while C owns the disk: %s: %s", info.Status, info.ErrorDesc)
	}
	t.Logf("A -> D: %s", info.ErrorDesc)
	if st, _ := a.M.State(); st != machine.StatePostMigrate {
		t.Fatalf("A after the failed second migration: %s", st)
	}
	if st, _ := d.ip.M.State(); st != machine.StateInMigrate {
		t.Fatalf("D: %s, want inmigrate", st)
	}
	// C still owns the disk and can resume.
	if err := c.ip.M.Resume(); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, c.ip, 1)
}

func TestLiveMigrationBlockersPerMode(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 1)
	g, _ := liveMigrator(t, src)
	normal := g.AddBlocker("host device X cannot migrate", migration.ModeNormal)
	cpr := g.AddBlocker("host device Y keeps an fd cpr cannot pass", migration.ModeCPRTransfer)
	dst := newLiveDest(t, harness.MachineOptions{}, true)

	err := g.Start(dst.ch)
	if err == nil || !strings.Contains(err.Error(), "host device X") || strings.Contains(err.Error(), "host device Y") {
		t.Fatalf("normal mode: %v", err)
	}
	if r := g.Query().BlockedReasons; len(r) != 1 || !strings.Contains(r[0], "device X") {
		t.Fatalf("blocked-reasons in normal mode: %v", r)
	}
	mode := migration.ModeCPRTransfer
	if err := g.SetParameters(migration.ParameterUpdate{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	if r := strings.Join(g.Query().BlockedReasons, "\n"); !strings.Contains(r, "device Y") || strings.Contains(r, "device X") {
		t.Fatalf("blocked-reasons in cpr-transfer: %v", r)
	}
	// (cpr-transfer's own channel checks may come first; blocked-reasons
	// above is the contract.)
	if err := g.Start(dst.ch); err == nil {
		t.Fatal("cpr-transfer with a blocker started")
	}
	mode = migration.ModeNormal
	g.SetParameters(migration.ParameterUpdate{Mode: &mode})
	g.RemoveBlocker(normal)
	if r := g.Query().BlockedReasons; len(r) != 0 {
		t.Fatalf("blocked-reasons after removal: %v", r)
	}
	if st, _ := src.M.State(); st != machine.StateRunning {
		t.Fatalf("a refused migration touched the guest: %s", st)
	}
	if info := migrateTo(t, g, dst); info.Status != migration.StatusCompleted {
		t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
	}
	g.RemoveBlocker(cpr)
}

func TestLiveMigrationNotifierVeto(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 1)
	g, log := liveMigrator(t, src)
	var seen []string
	var mu sync.Mutex
	veto := true
	g.AddNotifier(migration.Notifier{Name: "cpr-only", Modes: []migration.Mode{migration.ModeCPRTransfer},
		Func: func(ev abi.MigrationEvent, mode migration.Mode) error {
			return errors.New("never in cpr")
		}})
	g.AddNotifier(migration.Notifier{Name: "backup agent", Modes: []migration.Mode{migration.ModeNormal},
		Func: func(ev abi.MigrationEvent, mode migration.Mode) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, fmt.Sprint(ev))
			if ev == abi.MigrationSetup && veto {
				return errors.New("a backup is running")
			}
			return nil
		}})
	dst := newLiveDest(t, harness.MachineOptions{}, true)
	err := g.Start(dst.ch)
	if err == nil || !strings.Contains(err.Error(), "backup agent vetoed the migration: a backup is running") {
		t.Fatalf("veto: %v", err)
	}
	if info := g.Query(); info.Status != migration.StatusFailed || !strings.Contains(info.ErrorDesc, "a backup is running") {
		t.Fatalf("query-migrate after the veto: %+v", info)
	}
	if !log.has("MIGRATION:failed") {
		t.Fatalf("events %v", log.evs)
	}
	if st, _ := src.M.State(); st != machine.StateRunning {
		t.Fatalf("vetoed migration touched the guest: %s", st)
	}
	if s := dst.g.Status(); s != migration.StatusSetup {
		t.Fatalf("the destination heard from a vetoed source: %s", s)
	}
	mu.Lock()
	veto = false
	mu.Unlock()
	if info := migrateTo(t, g, dst); info.Status != migration.StatusCompleted {
		t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
	}
	mu.Lock()
	defer mu.Unlock()
	want := fmt.Sprint([]any{abi.MigrationSetup, abi.MigrationSetup, abi.MigrationDone})
	if fmt.Sprint(seen) != want {
		t.Fatalf("notifications %v, want %v", seen, want)
	}
}

func TestLiveMigrationFailures(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		g, log := liveMigrator(t, src)
		if err := g.Start(migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "nobody")}); err != nil {
			t.Fatal(err)
		}
		info := waitStatus(t, g)
		if info.Status != migration.StatusFailed || !strings.Contains(info.ErrorDesc, "connect") || !log.has("MIGRATION:failed") {
			t.Fatalf("%+v %v", info, log.evs)
		}
		checkSourceBack(t, src, machine.StateRunning, "")
	})
	t.Run("completion lost after the destination took the disk", func(t *testing.T) {
		img := scratchImage(t, 16<<20)
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier, Backends: map[string]map[string]string{"blk0": {"disk": img}}})
		src.M.Start(false)
		waitPasses(t, src, 1)
		g, _ := liveMigrator(t, src)
		f := newFakeDest(t, true)
		if err := g.Start(f.ch); err != nil {
			t.Fatal(err)
		}
		waitMigStatus(t, g, migration.StatusDevice)
		var taken *blockdev.Image
		for deadline := time.Now().Add(10 * time.Second); taken == nil; time.Sleep(time.Millisecond) {
			im, err := blockdev.Open(img, blockdev.Options{Owner: "the destination"})
			if err == nil {
				taken = im
			} else if time.Now().After(deadline) {
				t.Fatalf("the source never gave the disk up: %v", err)
			}
		}
		defer taken.Close()
		close(f.hangUp)
		info := waitStatus(t, g)
		t.Logf("%s: %s", info.Status, info.ErrorDesc)
		if info.Status != migration.StatusFailed || !strings.Contains(info.ErrorDesc, "could not take its disks back") {
			t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
		}
		// The guest must not run on both sides.
		if st, _ := src.M.State(); st != machine.StatePostMigrate {
			t.Fatalf("source %s, want postmigrate", st)
		}
	})
	t.Run("incompatible destination", func(t *testing.T) {
		img := scratchImage(t, 16<<20)
		src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
		src.M.Start(false)
		waitPasses(t, src, 1)
		g, log := liveMigrator(t, src)
		// 256 MiB of RAM and a disk the source does not have.
		dst := newLiveDest(t, harness.MachineOptions{Memory: 256 << 20, Backends: map[string]map[string]string{"blk0": {"disk": img}}}, true)
		info := migrateTo(t, g, dst)
		t.Logf("refused: %s", info.ErrorDesc)
		for _, want := range []string{"the destination refused", `RAM block "ram-low" has 128 MiB on the source, 256 MiB here`, `section "virtio-blk" instance 0 here has no counterpart on the source`} {
			if !strings.Contains(info.ErrorDesc, want) {
				t.Fatalf("error-desc %q lacks %q", info.ErrorDesc, want)
			}
		}
		if info.Status != migration.StatusFailed || !log.has("MIGRATION:failed") {
			t.Fatalf("status %s", info.Status)
		}
		if info.RAM.Normal != 0 || info.RAM.Transferred != 0 {
			t.Fatalf("RAM moved before the refusal: %+v", *info.RAM)
		}
		if err := dst.wait(t); err == nil {
			t.Fatal("destination accepted")
		}
		if st, _ := dst.ip.M.State(); st != machine.StateInMigrate {
			t.Fatalf("destination %s", st)
		}
		checkSourceBack(t, src, machine.StateRunning, "")
	})
}

// netnsPair creates a network namespace joined to this one by a veth pair:
// hostIP here, nsIP inside. It is removed when the test ends.
func netnsPair(t *testing.T) (ns, hostIf, hostIP, nsIP string) {
	t.Helper()
	_, err := exec.LookPath("ip")
	harness.Require(t, err == nil && os.Geteuid() == 0, "needs root and iproute2's ip for network namespaces")
	pid := os.Getpid()
	ns = fmt.Sprintf("wasmvmm-mig-%d", pid)
	hostIf, nsIf := fmt.Sprintf("wvm%dh", pid%1000000), fmt.Sprintf("wvm%dg", pid%1000000)
	net3 := fmt.Sprintf("10.77.%d", pid%250)
	hostIP, nsIP = net3+".1", net3+".2"
	ipCmd := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		ipCmd("netns", "del", ns)
		ipCmd("link", "del", hostIf)
	})
	for _, c := range [][]string{
		{"netns", "add", ns},
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf},
		{"link", "set", nsIf, "netns", ns},
		{"addr", "add", hostIP + "/24", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"netns", "exec", ns, "ip", "addr", "add", nsIP + "/24", "dev", nsIf},
		{"netns", "exec", ns, "ip", "link", "set", nsIf, "up"},
		{"netns", "exec", ns, "ip", "link", "set", "lo", "up"},
	} {
		if err := ipCmd(c...); err != nil {
			harness.Require(t, false, err.Error())
		}
	}
	return ns, hostIf, hostIP, nsIP
}

// inNetns returns a Build whose binary runs inside ns.
func inNetns(t *testing.T, b harness.Build, ns string) harness.Build {
	t.Helper()
	script := filepath.Join(t.TempDir(), "wasmvmm-in-"+ns)
	body := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns, b.Binary)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	b.Binary = script
	return b
}

// TestLiveMigrationOverTCPAcrossNamespaces migrates a running guest with a
// disk into another network namespace over TCP, then back out while the
// link goes down mid-stream: the sender fails, keeps its disk and its
// guest running; the receiver never runs the guest.
func TestLiveMigrationOverTCPAcrossNamespaces(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	ns, hostIf, hostIP, nsIP := netnsPair(t)
	bns := inNetns(t, b, ns)
	dir := t.TempDir()
	img := scratchImage(t, 16<<20)
	cfg := writeConfig(t, dir, b.Guest, dirtier+" dirty_rate_mb=64", diskExtra(img))
	srcSock, nsSock, backSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "ns.sock"), filepath.Join(dir, "back.sock")

	src := harness.Start(t, b, dir, "run", cfg, "--qmp", srcSock)
	src.WaitSerial(t, "DIRTY pass=1\n", 20*time.Second)
	inNS := harness.Start(t, bns, dir, "run", cfg, "--incoming", "tcp:"+nsIP+":4444", "--qmp", nsSock)
	nmon := qmpClient(t, nsSock)
	waitMigrationStatus(t, nmon, "setup") // listening
	code, out := harness.Run(t, b, "migrate", "-q", "--qmp", srcSock, "tcp:"+nsIP+":4444")
	if code != 0 {
		t.Fatalf("migrate into %s: exit %d\n%s", ns, code, out)
	}
	t.Logf("into the namespace:\n%s", out)
	before := passes(src.SerialText())
	waitStream(t, src, inNS, before+1, 60*time.Second)
	if s := status(t, nmon); s != "running" {
		t.Fatalf("guest in the namespace: %s", s)
	}
	if holder := ownerRefused(t, img); !strings.Contains(holder, fmt.Sprint(inNS.Cmd.Process.Pid)) {
		t.Fatalf("the disk is not the namespace's VMM's: %s", holder)
	}

	// Back out, slowly, and cut the link mid-stream.
	back := harness.Start(t, b, dir, "run", cfg, "--incoming", "tcp:"+hostIP+":4445", "--qmp", backSock)
	bmon := qmpClient(t, backSock)
	waitMigrationStatus(t, bmon, "setup") // listening
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := drainEvents(t, ctx, nmon)
	for _, c := range []string{
		`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}`,
		`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":2097152,"x-io-timeout":1500}}`,
		`{"execute":"migrate","arguments":{"channels":[{"channel-type":"main","addr":{"transport":"socket","type":"inet","host":"` + hostIP + `","port":"4445"}}]}}`,
	} {
		if out, err := nmon.Run([]byte(c)); err != nil {
			t.Fatalf("%s: %v %s", c, err, out)
		}
	}
	waitMigrationStatus(t, nmon, "active")
	time.Sleep(500 * time.Millisecond)
	cut := time.Now()
	if out, err := exec.Command("ip", "link", "set", "dev", hostIf, "down").CombinedOutput(); err != nil {
		t.Fatalf("link down: %v %s", err, out)
	}
	ret := waitMigrationStatus(t, nmon, "failed")
	expectMigrationEvent(t, events, "failed")
	t.Logf("failed %v after the cut: %v", time.Since(cut).Round(time.Millisecond), ret["error-desc"])
	if s := status(t, nmon); s != "running" {
		t.Fatalf("sender after the cut: %s", s)
	}
	n := passes(inNS.SerialText())
	inNS.WaitSerial(t, fmt.Sprintf("DIRTY pass=%d\n", n+1), 20*time.Second)
	if holder := ownerRefused(t, img); !strings.Contains(holder, fmt.Sprint(inNS.Cmd.Process.Pid)) {
		t.Fatalf("the sender lost its disk: %s", holder)
	}
	if s := status(t, bmon); s != "inmigrate" {
		t.Fatalf("receiver of the cut migration: %s", s)
	}
	if passes(back.SerialText()) != 0 {
		t.Fatal("the receiver ran the guest")
	}
}

// TestLiveMigrationPlainQEMUFramingAndFD: with x-preflight off the socket
// carries only the QEMU stream (no pre-flight, no verdict) and the
// destination recognises it; the channel is an inherited socket pair
// ("fd:N" on both sides).
func TestLiveMigrationPlainQEMUFramingAndFD(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier + " dirty_rate_mb=64"})
	src.M.Start(false)
	waitPasses(t, src, 1)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// fd:N hands the descriptors over: the migration closes them.
	dip := harness.NewMachine(t, harness.MachineOptions{NoBoot: true, Incoming: true})
	dip.M.SetAutostart(false)
	dip.M.StartIncoming()
	dg := migrator(dip)
	res, err := dg.ListenIncoming(context.Background(), migration.Channel{Type: "main", Transport: "fd", FD: fmt.Sprint(fds[1])})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := liveMigrator(t, src)
	if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "x-preflight", State: false}}); err != nil {
		t.Fatal(err)
	}
	ch, err := migration.ParseURI(fmt.Sprintf("fd:%d", fds[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(ch); err != nil {
		t.Fatal(err)
	}
	info := waitStatus(t, g)
	if info.Status != migration.StatusCompleted {
		t.Fatalf("%s: %s", info.Status, info.ErrorDesc)
	}
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	// Without the fresh-destination hint every page is sent.
	if info.RAM.Normal+info.RAM.Duplicate < int64(src.M.Memory().Size()/4096) {
		t.Fatalf("plain framing sent %d+%d pages of %d", info.RAM.Normal, info.RAM.Duplicate, src.M.Memory().Size()/4096)
	}
	sameRAM(t, src.M, dip.M)
	if _, err := dirtycheck.Check(dip.M.Memory(), dirtyStart, dirtyEnd); err != nil {
		t.Fatal(err)
	}
}

// waitStream waits until the guest's serial stream, the source's console
// followed by the destination's, has the complete marker of pass n (the
// source may have stopped in the middle of a line, so the destination's
// console alone need not hold it whole).
func waitStream(t *testing.T, src, dst *harness.VM, n int, d time.Duration) {
	t.Helper()
	want := fmt.Sprintf("\nDIRTY pass=%d\n", n)
	deadline := time.Now().Add(d)
	for !strings.Contains(src.SerialText()+dst.SerialText(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the serial stream within %v; destination:\n%s", want, d, dst.SerialText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
