package pluginbuild

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requireGo fails under CI and skips elsewhere when the toolchain is
// missing.
func requireGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go toolchain not in PATH: %v", err)
		}
		t.Skipf("go toolchain not in PATH: %v", err)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const tinyPlugin = `package main

import "wasmvmm/sdk"

func main() {}

type dev struct{}

func (dev) Realize(r *sdk.Realizer) error { return nil }
func (dev) Reset()                        {}

func init() { sdk.Register(%q, "1.0.0", dev{}) }
`

// miniRepo makes a module "wasmvmm" with the real abi and sdk packages and
// two small plugins: "tiny" and "tiny@v2".
func miniRepo(t *testing.T) string {
	t.Helper()
	real, err := RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	write(t, filepath.Join(root, "go.mod"), "module wasmvmm\n\ngo 1.26\n")
	copyTree(t, filepath.Join(real, "abi"), filepath.Join(root, "abi"))
	copyTree(t, filepath.Join(real, "sdk"), filepath.Join(root, "sdk"))
	copyTree(t, filepath.Join(real, "internal"), filepath.Join(root, "internal"))
	write(t, filepath.Join(root, "plugins", "tiny", "main.go"), strings.Replace(tinyPlugin, "%q", `"tiny"`, 1))
	write(t, filepath.Join(root, "plugins", "tiny", "v2", "main.go"), strings.Replace(tinyPlugin, "%q", `"tiny"`, 1))
	write(t, filepath.Join(root, "plugins", "tiny", "v2", "main_test.go"), "package main\n")
	write(t, filepath.Join(root, "plugins", "tiny", "testdata", "x.go"), "package x\n")
	write(t, filepath.Join(root, "plugins", "README.md"), "plugins\n")
	if err := os.MkdirAll(filepath.Join(root, "plugins", "empty", "v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestDiscoverNames(t *testing.T) {
	root := miniRepo(t)
	got, err := Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, p.Name+"="+relSlash(root, p.Dir))
	}
	want := "tiny=plugins/tiny tiny@v2=plugins/tiny/v2"
	if strings.Join(names, " ") != want {
		t.Fatalf("Discover = %v, want %s", names, want)
	}
}

func TestBuildRebuildsOnlyWhenStale(t *testing.T) {
	requireGo(t)
	root := miniRepo(t)
	out := filepath.Join(t.TempDir(), "out")
	ctx := context.Background()

	res, err := Build(ctx, root, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || !res[0].Rebuilt || !res[1].Rebuilt {
		t.Fatalf("first build: %+v", res)
	}
	for _, r := range res {
		b, err := os.ReadFile(r.Path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 8 || string(b[:4]) != "\x00asm" {
			t.Fatalf("%s is not a WebAssembly module", r.Path)
		}
		if filepath.Base(r.Path) != FileName(r.Name) {
			t.Fatalf("%s built to %s", r.Name, r.Path)
		}
		t.Logf("built %s (%d bytes) in %v", r.Name, len(b), r.Duration)
	}
	before, _ := os.Stat(res[0].Path)

	// Second call: nothing to do, and fast.
	start := time.Now()
	paths, err := Ensure(ctx, root, out)
	if err != nil {
		t.Fatal(err)
	}
	noop := time.Since(start)
	t.Logf("up-to-date check took %v", noop)
	if noop > 3*time.Second {
		t.Errorf("no-op Ensure took %v", noop)
	}
	if paths["tiny"] != res[0].Path || paths["tiny@v2"] != res[1].Path {
		t.Fatalf("Ensure = %v", paths)
	}
	after, _ := os.Stat(res[0].Path)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("up-to-date plugin was rewritten")
	}

	// Touching a file without changing it does not rebuild (content hash).
	now := time.Now().Add(time.Second)
	src := filepath.Join(root, "plugins", "tiny", "main.go")
	if err := os.Chtimes(src, now, now); err != nil {
		t.Fatal(err)
	}
	if res, err = Build(ctx, root, out); err != nil || res[0].Rebuilt || res[1].Rebuilt {
		t.Fatalf("after touch: %+v, %v", res, err)
	}

	// Changing the plugin's source rebuilds that plugin only.
	write(t, src, strings.Replace(tinyPlugin, "%q", `"tiny"`, 1)+"\nvar _ = 1\n")
	if res, err = Build(ctx, root, out); err != nil || !res[0].Rebuilt || res[1].Rebuilt {
		t.Fatalf("after edit of tiny: %+v, %v", res, err)
	}

	// Changing the SDK rebuilds every plugin.
	write(t, filepath.Join(root, "sdk", "zz_extra.go"), "package sdk\n\nconst extra = 1\n")
	if res, err = Build(ctx, root, out); err != nil || !res[0].Rebuilt || !res[1].Rebuilt {
		t.Fatalf("after sdk change: %+v, %v", res, err)
	}

	// A deleted output is rebuilt.
	if err := os.Remove(res[1].Path); err != nil {
		t.Fatal(err)
	}
	if res, err = Build(ctx, root, out); err != nil || res[0].Rebuilt || !res[1].Rebuilt {
		t.Fatalf("after delete: %+v, %v", res, err)
	}
}

func TestBuildSelected(t *testing.T) {
	requireGo(t)
	root := miniRepo(t)
	write(t, filepath.Join(root, "plugins", "broken", "main.go"), "package main\n\nfunc main() { undefinedThing() }\n")
	res, err := Build(context.Background(), root, t.TempDir(), "tiny@v2")
	if err != nil {
		t.Fatalf("building one plugin failed on another: %v", err)
	}
	if len(res) != 1 || res[0].Name != "tiny@v2" {
		t.Fatalf("Build(tiny@v2) = %+v", res)
	}
	_, err = Build(context.Background(), root, t.TempDir(), "nosuch")
	if err == nil || !strings.Contains(err.Error(), `"nosuch"`) || !strings.Contains(err.Error(), "tiny, tiny@v2") {
		t.Fatalf("unknown plugin: %v", err)
	}
}

func TestBuildErrorNamesPlugin(t *testing.T) {
	requireGo(t)
	root := miniRepo(t)
	write(t, filepath.Join(root, "plugins", "broken", "main.go"), "package main\n\nfunc main() { undefinedThing() }\n")
	_, err := Build(context.Background(), root, t.TempDir())
	if err == nil {
		t.Fatal("broken plugin built")
	}
	if !strings.Contains(err.Error(), "plugin broken") || !strings.Contains(err.Error(), "undefinedThing") {
		t.Fatalf("error does not name the plugin and the compiler message: %v", err)
	}
}

func TestFind(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write(t, filepath.Join(b, "serial-16550.wasm"), "\x00asm")
	write(t, filepath.Join(a, "virtio-net@v1.wasm"), "\x00asm")
	if p, err := Find("serial-16550", []string{a, b}); err != nil || p != filepath.Join(b, "serial-16550.wasm") {
		t.Fatalf("Find = %q, %v", p, err)
	}
	if p, err := Find("virtio-net@v1", []string{a, b}); err != nil || p != filepath.Join(a, "virtio-net@v1.wasm") {
		t.Fatalf("Find versioned = %q, %v", p, err)
	}
	_, err := Find("virtio-gpu", []string{a, b})
	if err == nil {
		t.Fatal("found a missing plugin")
	}
	for _, want := range []string{`"virtio-gpu"`, filepath.Join(a, "virtio-gpu.wasm"), filepath.Join(b, "virtio-gpu.wasm")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if _, err := Find("x", nil); err == nil || !strings.Contains(err.Error(), "search path is empty") {
		t.Errorf("empty search path: %v", err)
	}
	if _, err := Find("../x", []string{a}); err == nil {
		t.Error("path in a plugin name accepted")
	}
	// A directory with the plugin's name is not a plugin.
	if err := os.Mkdir(filepath.Join(a, "dir.wasm"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Find("dir", []string{a}); err == nil {
		t.Error("directory accepted as a plugin")
	}
}

func TestRepoRootAndDefaultOutDir(t *testing.T) {
	root, err := RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "abi", "abi.go")); err != nil {
		t.Fatalf("RepoRoot = %s: %v", root, err)
	}
	if _, err := RepoRoot(t.TempDir()); err == nil {
		t.Error("RepoRoot found a module above a temp dir")
	}
	d1, err := DefaultOutDir(root)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := DefaultOutDir(t.TempDir())
	if d1 == d2 {
		t.Error("two trees share an output directory")
	}
}
