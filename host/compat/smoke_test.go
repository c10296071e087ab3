package compat

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestMigrateSmoke(t *testing.T) {
	env := testEnv(t)
	cat := builtinCatalog(t)
	ctx := context.Background()
	for _, name := range []string{"wasmvmm-virt-2.0", "pseries-2.9"} {
		mt, _ := cat.Get(name)
		dir := t.TempDir()
		start := time.Now()
		src, err := env.NewMachine(ctx, mt, MachineOptions{ScratchDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if err := Drive(src); err != nil {
			t.Fatal(err)
		}
		dst, err := env.NewMachine(ctx, mt, MachineOptions{ScratchDir: dir, Incoming: true, Set: PluginSet{Name: "r2", Use: map[string]string{"virtio-net": "virtio-net@v2"}}})
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		t.Logf("machines %v", time.Since(start))
		if err := Migrate(ctx, src, dst, filepath.Join(dir, "s"), 30*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("migrated %v", time.Since(start))
		a, err := DeviceState(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := DeviceState(dst)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d fields, %d common, diffs %v", len(a), commonKeys(a, b), DiffState(a, b, 10))
	}
}
