package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/testsuite/harness"
)

// buildTestPlugin builds testdata/plugins/NAME into a plugin directory that
// also links every regular plugin, and returns the directory.
func buildTestPlugin(t *testing.T, b harness.Build, name string) string {
	t.Helper()
	out := t.TempDir()
	ents, err := os.ReadDir(b.PluginDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".wasm") {
			if err := os.Symlink(filepath.Join(b.PluginDir, e.Name()), filepath.Join(out, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-buildvcs=false",
		"-o", filepath.Join(out, name+".wasm"), "./testsuite/e2e/testdata/plugins/"+name)
	cmd.Dir = harness.RepoRoot()
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, o)
	}
	return out
}

// TestPluginMigrationPolicyThroughTheABI: a device plugin's blocker
// (migration_blocker_add) refuses QMP migrate in its mode only, with its
// reason in the error and in query-migrate's blocked-reasons, and a plugin's
// veto at setup (migration_subscribe, MigrationEvent) fails the migration;
// the guest runs on either way.
func TestPluginMigrationPolicyThroughTheABI(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	withPolicy := b
	withPolicy.PluginDir = buildTestPlugin(t, b, "migpolicy")
	for _, c := range []struct {
		name, props, want string
	}{
		{"blocker", "{ block-modes = 1 }", "migpolicy test device holds a host resource"},
		{"veto", "{ veto = true }", "vetoed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			extra := fmt.Sprintf("\n[[device]]\nid = \"policy0\"\nplugin = \"migpolicy\"\nproperties = %s\n", c.props)
			cfg := writeConfig(t, dir, b.Guest, dirtier, extra)
			sock := filepath.Join(dir, "vm.qmp")
			vm := harness.Start(t, withPolicy, dir, "run", cfg, "--qmp", sock)
			vm.WaitSerial(t, "DIRTY pass=1\n", 30*time.Second)
			mon := qmpClient(t, sock)
			snap := filepath.Join(dir, "snap.bin")
			migrate := `{"execute":"migrate","arguments":{"uri":"file:` + snap + `"}}`
			if c.name == "blocker" {
				if r := fmt.Sprint(queryMigrate(t, mon)["blocked-reasons"]); !strings.Contains(r, c.want) {
					t.Fatalf("blocked-reasons %s, want the plugin's reason", r)
				}
				out, err := mon.Run([]byte(migrate))
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("migrate with a plugin's blocker: %v %s", err, out)
				}
				t.Logf("refused: %v", err)
				// The blocker is for mode normal only.
				if out, err := mon.Run([]byte(`{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}`)); err != nil {
					t.Fatalf("%v %s", err, out)
				}
				if r, ok := queryMigrate(t, mon)["blocked-reasons"]; ok && strings.Contains(fmt.Sprint(r), c.want) {
					t.Fatalf("blocked-reasons in cpr-transfer: %v", r)
				}
			} else {
				out, err := mon.Run([]byte(migrate))
				// The plugin's own reason reaches the user.
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "policy0") ||
					!strings.Contains(err.Error(), "its peer is not ready") {
					t.Fatalf("migrate with a plugin's veto: %v %s", err, out)
				}
				t.Logf("refused: %v", err)
				if ret := queryMigrate(t, mon); ret["status"] != "failed" {
					t.Fatalf("query-migrate after the veto: %v", ret)
				}
				if _, err := os.Stat(snap); err == nil {
					t.Fatal("a vetoed snapshot left a file")
				}
			}
			if st := status(t, mon); st != "running" {
				t.Fatalf("the guest is %s after the refused migration", st)
			}
			vm.WaitSerial(t, "DIRTY pass=3\n", 30*time.Second)
		})
	}
}
