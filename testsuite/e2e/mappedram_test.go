package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
	"wasmvmm/testsuite/dirtycheck"
	"wasmvmm/testsuite/harness"
)

// mappedMigrator is a migrator of ip with the mapped-ram capability on.
func mappedMigrator(t *testing.T, ip *harness.InProcess) *migration.Migrator {
	t.Helper()
	g := migrator(ip)
	if err := g.SetCapabilities([]migration.CapabilityState{{Capability: "mapped-ram", State: true}}); err != nil {
		t.Fatal(err)
	}
	return g
}

// mappedSnapshot saves src to a file with mapped-ram on.
func mappedSnapshot(t *testing.T, src *harness.InProcess) string {
	t.Helper()
	return snapshotWith(t, src, mappedMigrator(t, src))
}

// mappedRestore loads path into a fresh machine of this process, the
// mapped-ram capability as given, and returns the machine, the copy of its
// RAM taken before the load, and the load's error.
func mappedRestore(t *testing.T, path string, mapped bool) (*harness.InProcess, [][]byte, error) {
	t.Helper()
	dst := incomingMachine(t, false)
	var before [][]byte
	for _, b := range dst.M.Memory().Blocks() {
		before = append(before, bytes.Clone(b.Mem))
	}
	g := migrator(dst)
	if mapped {
		g = mappedMigrator(t, dst)
	}
	return dst, before, loadSnapshot(g, path)
}

func TestMappedRAMSnapshotRestoresEveryPage(t *testing.T) {
	src, path, saved, last := savedDirtier(t, mappedSnapshot)
	dst, _, err := mappedRestore(t, path, true)
	if err != nil {
		t.Fatal(err)
	}
	checkRestoredPaused(t, dst, saved)
	// Every page, zero or not, is the source's.
	for i, b := range src.M.Memory().Blocks() {
		d := dst.M.Memory().Blocks()[i]
		for off := 0; off < len(b.Mem); off += 4096 {
			if !bytes.Equal(b.Mem[off:off+4096], d.Mem[off:off+4096]) {
				t.Fatalf("block %s page at %#x differs", b.Name, off)
			}
		}
	}
	// The devices work: the guest goes on counting on its serial port.
	checkRestoredContinues(t, src, dst, last)
}

// TestMappedRAMNeedsBothSidesAndAFile: as in QEMU, the capability must be
// on at both ends, and it needs a file.
func TestMappedRAMNeedsBothSidesAndAFile(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 1)
	g := mappedMigrator(t, src)
	err := g.Start(migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "x.sock")})
	if err == nil || err.Error() != "Migration requires seekable transport (e.g. file)" {
		t.Fatalf("mapped-ram to a socket: %v", err)
	}
	mapped := mappedSnapshot(t, src)
	if err := src.M.EnterRunState(machine.StateRunning); err != nil {
		t.Fatal(err)
	}
	plain := snapshot(t, src)
	for _, c := range []struct {
		name, path string
		mapped     bool
		want       string
	}{
		{"mapped file, capability off here", mapped, false, `capability "mapped-ram" is off here, but the stream was written with it on`},
		{"plain file, capability on here", plain, true, `capability "mapped-ram" is on here, but the stream was written without it`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst, before, err := mappedRestore(t, c.path, c.mapped)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			requireRefused(t, dst, before)
		})
	}
	dst := harness.NewMachine(t, harness.MachineOptions{NoBoot: true})
	dst.M.StartIncoming()
	if err := mappedMigrator(t, dst).Incoming(context.Background(), migration.Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "y.sock")}); err == nil || !strings.Contains(err.Error(), "seekable") {
		t.Fatalf("mapped-ram incoming from a socket: %v", err)
	}
}

// requireRefused checks that a refused load left the machine waiting for
// an incoming migration with its RAM as it was.
func requireRefused(t *testing.T, dst *harness.InProcess, before [][]byte) {
	t.Helper()
	if st, _ := dst.M.State(); st != machine.StateInMigrate {
		t.Fatalf("after a refused file the machine is %s, want inmigrate", st)
	}
	for i, b := range dst.M.Memory().Blocks() {
		if !bytes.Equal(b.Mem, before[i]) {
			t.Fatalf("a refused file wrote RAM block %s", b.Name)
		}
	}
}

// TestBadMappedRAMSnapshotsAreRefused: a truncated file, or one whose
// mapped-ram header is damaged, is refused with an error that names the
// block and the offset, before any RAM page or device is written.
func TestBadMappedRAMSnapshotsAreRefused(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 1)
	good, err := os.ReadFile(mappedSnapshot(t, src))
	if err != nil {
		t.Fatal(err)
	}
	name := src.M.Memory().Blocks()[0].Name
	i := bytes.Index(good, append([]byte{byte(len(name))}, name...))
	if i < 0 {
		t.Fatalf("no block %q in the file", name)
	}
	h := i + 1 + len(name) + 8 // the block's mapped-ram header
	pagesOff := binary.BigEndian.Uint64(good[h+20:])
	with := func(at int, v uint64) []byte {
		b := bytes.Clone(good)
		binary.BigEndian.PutUint64(b[at:], v)
		return b
	}
	version := bytes.Clone(good)
	version[h+3] = 9
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated in the header", good[:h+10], "mapped-ram header: stream truncated"},
		{"truncated in the pages", good[:pagesOff+4096], fmt.Sprintf("RAM block %q: pages region", name)},
		{"truncated in the devices", good[:int(pagesOff)+bytes.Index(good[pagesOff:], []byte("\x06serial"))+10], `instance id: stream truncated`},
		{"header version", version, fmt.Sprintf("RAM block %q: mapped-ram header version 9, want 1", name)},
		{"page size", with(h+4, 2<<20), fmt.Sprintf("RAM block %q: mapped-ram page size 2097152, want 4096", name)},
		{"bitmap offset", with(h+12, uint64(len(good))+1), fmt.Sprintf("RAM block %q: bitmap of", name)},
		{"pages offset unaligned", with(h+20, pagesOff+512), fmt.Sprintf("RAM block %q: pages region at file offset %#x is not aligned to 4096", name, pagesOff+512)},
		{"pages offset past the end", with(h+20, pagesOff+1<<40), "the file is truncated"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
			if err := os.WriteFile(p, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			dst, before, err := mappedRestore(t, p, true)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "offset 0x") {
				t.Fatalf("error %v, want one with %q and an offset", err, c.want)
			}
			requireRefused(t, dst, before)
			t.Logf("refused: %v", err)
		})
	}
}

// TestMappedRAMThroughQMPAndIncomingProcess saves with mapped-ram through
// QMP, analyzes the file, and restores it in a new process that sets the
// capability before migrate-incoming (as QEMU requires).
func TestMappedRAMThroughQMPAndIncomingProcess(t *testing.T) {
	b, dir, cfg, src, mon := qmpDirtierSource(t)
	setCap := `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"mapped-ram","state":true}]}}`
	if _, err := mon.Run([]byte(setCap)); err != nil {
		t.Fatal(err)
	}
	caps := qmpRun(t, mon, "query-migrate-capabilities")
	if !strings.Contains(fmt.Sprint(caps["return"]), "map[capability:mapped-ram state:true]") {
		t.Fatalf("query-migrate-capabilities: %v", caps)
	}
	if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":"unix:` + filepath.Join(dir, "no.sock") + `"}}`)); err == nil || !strings.Contains(err.Error(), "seekable") {
		t.Fatalf("migrate to a socket with mapped-ram: %v", err)
	}
	snap := filepath.Join(dir, "snap.bin")
	if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":"file:` + snap + `"}}`)); err != nil {
		t.Fatal(err)
	}
	if info := waitMigration(t, mon); info["status"] != "completed" {
		t.Fatalf("snapshot: %v", info)
	}
	before := passes(src.SerialText())

	code, out := harness.Run(t, b, "analyze", "-d", "state", snap)
	if code != 0 || !strings.Contains(out, `"mapped-ram"`) || !strings.Contains(out, `"pages_offset"`) || !strings.Contains(out, `"serial (`) {
		t.Fatalf("analyze: exit %d\n%.3000s", code, out)
	}

	// Without the capability the new process refuses the file.
	code, out = harness.Run(t, b, "run", cfg, "--incoming", "file:"+snap, "--plugins", b.PluginDir, "--serial", "null")
	if code == 0 || !strings.Contains(out, `capability "mapped-ram" is off here`) {
		t.Fatalf("restore without the capability: exit %d: %s", code, out)
	}

	dsock := filepath.Join(dir, "dst.sock")
	dst := harness.Start(t, b, dir, "run", cfg, "--incoming", "defer", "--qmp", dsock)
	dmon := qmpClient(t, dsock)
	if _, err := dmon.Run([]byte(setCap)); err != nil {
		t.Fatal(err)
	}
	if _, err := dmon.Run([]byte(`{"execute":"migrate-incoming","arguments":{"uri":"file:` + snap + `"}}`)); err != nil {
		t.Fatal(err)
	}
	checkRestoredProcess(t, src, dst, dmon, before)
}

// TestMappedRAMAtAFileOffset writes the snapshot after other data in the
// file (file:PATH,offset=N): the header offsets are file offsets, and the
// restore at the same offset gets every page back.
func TestMappedRAMAtAFileOffset(t *testing.T) {
	src := harness.NewMachine(t, harness.MachineOptions{Cmdline: dirtier})
	src.M.Start(false)
	waitPasses(t, src, 2)
	const offset = 12345
	path := filepath.Join(t.TempDir(), "with-prefix.bin")
	prefix := bytes.Repeat([]byte("other data "), offset/11+1)[:offset]
	if err := os.WriteFile(path, prefix, 0o600); err != nil {
		t.Fatal(err)
	}
	ch := migration.Channel{Type: "main", Transport: "file", Path: path, Offset: offset}
	g := mappedMigrator(t, src)
	if err := g.Start(ch); err != nil {
		t.Fatal(err)
	}
	if info := waitStatus(t, g); info.Status != migration.StatusCompleted {
		t.Fatalf("snapshot %s: %s", info.Status, info.ErrorDesc)
	}
	saved, err := dirtycheck.Check(src.M.Memory(), dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(data[:offset], prefix) {
		t.Fatalf("the data before the offset changed (%v)", err)
	}
	dst := harness.NewMachine(t, harness.MachineOptions{NoBoot: true})
	dst.M.StartIncoming()
	if err := mappedMigrator(t, dst).Incoming(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	got, err := dirtycheck.Check(dst.M.Memory(), dirtyStart, dirtyEnd)
	if err != nil || got != saved {
		t.Fatalf("restored pattern %+v, saved %+v (%v)", got, saved, err)
	}
	for i, b := range src.M.Memory().Blocks() {
		if !bytes.Equal(b.Mem, dst.M.Memory().Blocks()[i].Mem) {
			t.Fatalf("block %s differs", b.Name)
		}
	}
}
