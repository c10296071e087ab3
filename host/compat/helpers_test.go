package compat

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

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
	envVal  *Env
	envErr  error
)

// testEnv builds every plugin of the tree (once per test process) and
// returns an Env over them.
func testEnv(t testing.TB) *Env {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	require(t, err == nil, "/dev/kvm: "+errString(err))
	envOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		out, err := pluginbuild.DefaultOutDir(root)
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
				for _, rel := range Releases() {
					if p := rel.Resolve(d.Plugin); !seen[p] {
						seen[p] = true
						names = append(names, p)
					}
				}
			}
		}
		if _, err := pluginbuild.Build(context.Background(), root, out, names...); err != nil {
			envErr = err
			return
		}
		rt, err := plugin.NewRuntime(context.Background(), plugin.Config{Logger: hclog.NewNullLogger()})
		if err != nil {
			envErr = err
			return
		}
		envVal = &Env{Runtime: rt, PluginDirs: []string{out}, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr})}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	return envVal
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func builtinCatalog(t testing.TB) *config.Catalog {
	t.Helper()
	c, err := config.LoadCatalogFS(machines.FS(), "machines")
	if err != nil {
		t.Fatal(err)
	}
	return c
}
