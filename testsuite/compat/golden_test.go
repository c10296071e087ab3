package compattest

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"wasmvmm/host/compat"
)

var (
	update    = flag.Bool("update", false, "write the golden streams that do not exist yet")
	updateAll = flag.Bool("update-all", false, "rewrite every golden stream")
)

const goldenDir = "golden"

func goldenPath(machine, rel string) string {
	return filepath.Join(goldenDir, machine, rel+".mig")
}

// TestGoldenStreams writes missing golden streams with -update (every one
// with -update-all), then loads every committed stream into a fresh machine
// of its type with every release that may load it, and checks that the
// loaded device state equals what the scenario produces on this build.
func TestGoldenStreams(t *testing.T) {
	testEnv(t)
	ctx := context.Background()
	cat := catalog(t)
	if *update || *updateAll {
		for _, name := range cat.Names() {
			mt := machineType(t, name)
			for _, rel := range compat.Releases() {
				path := goldenPath(name, rel.Name)
				if _, err := os.Stat(path); err == nil && !*updateAll {
					continue
				}
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				m := newMachine(t, mt, compat.MachineOptions{Set: rel})
				if err := compat.Drive(m); err != nil {
					t.Fatal(err)
				}
				if err := compat.SaveFile(ctx, m, path); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				t.Logf("wrote %s", path)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(goldenDir, "*", "*.mig"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	require(t, len(files) > 0, "no golden streams under "+goldenDir+" (go generate ./testsuite/compat)")
	seen := map[string]bool{}
	for _, f := range files {
		name := filepath.Base(filepath.Dir(f))
		relName := strings.TrimSuffix(filepath.Base(f), ".mig")
		seen[name] = true
		mt, err := cat.Get(name)
		if err != nil {
			t.Errorf("%s: %v (a golden stream of a machine type this build no longer has)", f, err)
			continue
		}
		from := release(t, relName)
		for _, to := range compat.Releases() {
			t.Run(name+"/"+relName+"->"+to.Name, func(t *testing.T) {
				expect := expectedBreak(mt.Devices, from, to)
				dst := newMachine(t, mt, compat.MachineOptions{Set: to, Incoming: true})
				err := compat.LoadFile(ctx, dst, f)
				if expect != "" {
					if err == nil {
						t.Fatalf("loaded, but a known break says it cannot: %s", expect)
					}
					t.Logf("refused as expected (%s): %v", expect, err)
					return
				}
				if err != nil {
					t.Fatalf("load %s: %v", f, err)
				}
				// The reference: the scenario on this build, with the
				// stream's release.
				ref := newMachine(t, mt, compat.MachineOptions{Set: from})
				if err := compat.Drive(ref); err != nil {
					t.Fatal(err)
				}
				want, err := compat.DeviceState(ref)
				if err != nil {
					t.Fatal(err)
				}
				got, err := compat.DeviceState(dst)
				if err != nil {
					t.Fatal(err)
				}
				if d := compat.DiffState(want, got, 10); len(d) > 0 {
					t.Fatalf("loaded device state differs from the scenario's:\n%s", strings.Join(d, "\n"))
				}
				n := 0
				for k := range want {
					if _, ok := got[k]; ok {
						n++
					}
				}
				if n == 0 {
					t.Fatal("no device field in common")
				}
			})
		}
	}
	for _, name := range cat.Names() {
		if !seen[name] {
			t.Errorf("machine type %s has no golden stream (go generate ./testsuite/compat)", name)
		}
	}
}
