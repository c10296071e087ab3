package compattest

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/host/compat"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/machines"
)

// require fails under CI=true and skips elsewhere when a prerequisite is
// missing.
func require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a prerequisite is missing: %s", why)
	}
	t.Skipf("skipped: %s", why)
}

var (
	envOnce sync.Once
	envVal  *compat.Env
	envErr  error
)

// repoRoot is the source tree's root.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// testEnv builds every plugin of the tree (once per test process) and
// returns an Env over them.
func testEnv(t testing.TB) *compat.Env {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	require(t, err == nil, "/dev/kvm is not usable")
	envOnce.Do(func() {
		out, err := pluginbuild.DefaultOutDir(repoRoot())
		if err != nil {
			envErr = err
			return
		}
		// Only the plugins the machine types place, in every release:
		// other directories under plugins/ may be work in progress.
		cat, err := config.LoadCatalogFS(machines.FS(), "machines")
		if err != nil {
			envErr = err
			return
		}
		seen := map[string]bool{}
		var names []string
		for _, n := range cat.Names() {
			mt, _ := cat.Get(n)
			for _, d := range mt.Devices {
				for _, rel := range compat.Releases() {
					if p := rel.Resolve(d.Plugin); !seen[p] {
						seen[p] = true
						names = append(names, p)
					}
				}
			}
		}
		if _, err := pluginbuild.Build(context.Background(), repoRoot(), out, names...); err != nil {
			envErr = err
			return
		}
		rt, err := plugin.NewRuntime(context.Background(), plugin.Config{Logger: hclog.NewNullLogger()})
		if err != nil {
			envErr = err
			return
		}
		envVal = &compat.Env{Runtime: rt, PluginDirs: []string{out}, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr})}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	return envVal
}

func catalog(t testing.TB) *config.Catalog {
	t.Helper()
	c, err := config.LoadCatalogFS(machines.FS(), "machines")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func machineType(t testing.TB, name string) *config.MachineType {
	t.Helper()
	mt, err := catalog(t).Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return mt
}

func release(t testing.TB, name string) compat.PluginSet {
	t.Helper()
	for _, s := range compat.Releases() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no release %q", name)
	return compat.PluginSet{}
}

// netProps gives virtio-net a vnet header, without which it offers no
// offloads at all (and so no USO either).
func netProps(mt *config.MachineType) map[string]map[string]any {
	for _, d := range mt.Devices {
		if config.PluginType(d.Plugin) == "virtio-net" {
			return map[string]map[string]any{d.ID: {"vnet_hdr": true}}
		}
	}
	return nil
}

// newMachine builds a machine for a test and closes it at the end.
func newMachine(t testing.TB, mt *config.MachineType, o compat.MachineOptions) *compat.Machine {
	t.Helper()
	if o.ScratchDir == "" {
		o.ScratchDir = t.TempDir()
	}
	if o.Properties == nil {
		o.Properties = netProps(mt)
	}
	m, err := testEnv(t).NewMachine(context.Background(), mt, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}
