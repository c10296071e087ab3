// Package pluginbuild builds the device plugins of a wasmvmm source tree
// into .wasm files, rebuilding only what is stale, and finds built plugins
// on a search path.
//
// Naming: a directory plugins/<name>/ holding Go files is plugin <name>; a
// directory plugins/<name>/v<N>/ holding Go files is plugin <name>@v<N> (a
// later major version kept beside the older one). Plugin <name> is built to
// <outDir>/<name>.wasm.
//
// A plugin is stale when the stamp file next to its .wasm
// (<name>.wasm.stamp) does not hold the current build key: a SHA-256 over
// the Go toolchain version, GOFLAGS, the build flags, go.mod, go.sum, and
// the name and content of every file of every non-standard package the
// plugin depends on (as `go list -deps` reports them for GOOS=wasip1
// GOARCH=wasm). Only content counts: touching a file without changing it
// does not rebuild.
//
// The CLI's build-plugins command is Ensure(ctx, repoRoot, outDir); tests
// use Build with a plugin name to build just what they load.
package pluginbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Plugin is a plugin's source package.
type Plugin struct {
	Name string // "serial-16550", "virtio-net@v1"
	Dir  string // absolute directory of the main package
}

// Result says what Build did for one plugin.
type Result struct {
	Plugin
	Path     string        // the .wasm file
	Rebuilt  bool          // false: the existing file was up to date
	Duration time.Duration // time spent building (zero when not rebuilt)
}

// Extension is the file name extension of built plugins.
const Extension = ".wasm"

const stampSuffix = ".stamp"

// FileName returns the file name plugin name is built to.
func FileName(name string) string { return name + Extension }

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	versionRE = regexp.MustCompile(`^v[0-9]+$`)
)

// Discover lists the plugins under repoRoot/plugins, sorted by name.
func Discover(repoRoot string) ([]Plugin, error) {
	root, err := filepath.Abs(filepath.Join(repoRoot, "plugins"))
	if err != nil {
		return nil, fmt.Errorf("discover plugins: %w", err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("discover plugins: %w", err)
	}
	var out []Plugin
	for _, e := range entries {
		if !e.IsDir() || skipDir(e.Name()) {
			continue
		}
		if !nameRE.MatchString(e.Name()) {
			return nil, fmt.Errorf("discover plugins: directory plugins/%s: plugin names use lower-case letters, digits, '.', '_' and '-'", e.Name())
		}
		dir := filepath.Join(root, e.Name())
		has, err := hasGoFiles(dir)
		if err != nil {
			return nil, fmt.Errorf("discover plugins: %w", err)
		}
		if has {
			out = append(out, Plugin{Name: e.Name(), Dir: dir})
		}
		subs, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("discover plugins: %w", err)
		}
		for _, s := range subs {
			if !s.IsDir() || !versionRE.MatchString(s.Name()) {
				continue
			}
			vdir := filepath.Join(dir, s.Name())
			has, err := hasGoFiles(vdir)
			if err != nil {
				return nil, fmt.Errorf("discover plugins: %w", err)
			}
			if has {
				out = append(out, Plugin{Name: e.Name() + "@" + s.Name(), Dir: vdir})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func skipDir(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata"
}

// hasGoFiles reports whether dir holds a non-test Go file.
func hasGoFiles(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			return true, nil
		}
	}
	return false, nil
}

// Ensure builds every plugin under repoRoot/plugins that is missing or
// stale in outDir and returns the .wasm path of every plugin by name.
func Ensure(ctx context.Context, repoRoot, outDir string) (map[string]string, error) {
	results, err := Build(ctx, repoRoot, outDir)
	if err != nil {
		return nil, err
	}
	paths := make(map[string]string, len(results))
	for _, r := range results {
		paths[r.Name] = r.Path
	}
	return paths, nil
}

// Build is Ensure with a report of what was rebuilt. With names, it builds
// only those plugins (an unknown name is an error listing the plugins
// there are). Concurrent callers on the same outDir (other test processes)
// are serialized by a lock file.
func Build(ctx context.Context, repoRoot, outDir string, names ...string) ([]Result, error) {
	repoRoot, err := filepath.Abs(repoRoot)
	if err != nil {
		return nil, fmt.Errorf("build plugins: %w", err)
	}
	outDir, err = filepath.Abs(outDir)
	if err != nil {
		return nil, fmt.Errorf("build plugins: %w", err)
	}
	plugins, err := Discover(repoRoot)
	if err != nil {
		return nil, err
	}
	if len(names) != 0 {
		if plugins, err = selectPlugins(plugins, names); err != nil {
			return nil, err
		}
	}
	if len(plugins) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("build plugins: %w", err)
	}
	unlock, err := lockDir(outDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("build plugins: the go toolchain is not in PATH: %w", err)
	}
	keys, err := buildKeys(ctx, goBin, repoRoot, plugins)
	if err != nil {
		return nil, err
	}
	var results []Result
	for _, p := range plugins {
		out := filepath.Join(outDir, FileName(p.Name))
		r := Result{Plugin: p, Path: out}
		if upToDate(out, keys[p.Name]) {
			results = append(results, r)
			continue
		}
		start := time.Now()
		if err := buildOne(ctx, goBin, repoRoot, p, out); err != nil {
			return nil, err
		}
		if err := os.WriteFile(out+stampSuffix, []byte(keys[p.Name]+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("plugin %s: write stamp: %w", p.Name, err)
		}
		r.Rebuilt, r.Duration = true, time.Since(start)
		results = append(results, r)
	}
	return results, nil
}

func selectPlugins(all []Plugin, names []string) ([]Plugin, error) {
	byName := map[string]Plugin{}
	var known []string
	for _, p := range all {
		byName[p.Name] = p
		known = append(known, p.Name)
	}
	var out []Plugin
	for _, n := range names {
		p, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("build plugins: no plugin %q under plugins/ (there are: %s)", n, strings.Join(known, ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("build plugins: lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("build plugins: lock %s: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func upToDate(wasm, key string) bool {
	if _, err := os.Stat(wasm); err != nil {
		return false
	}
	stamp, err := os.ReadFile(wasm + stampSuffix)
	return err == nil && strings.TrimSpace(string(stamp)) == key
}

// buildFlags are the go build flags of every plugin (part of the build key).
func buildFlags() []string {
	return []string{"-buildmode=c-shared", "-trimpath", "-buildvcs=false"}
}

// wasmEnv is the environment of go list and go build for plugins.
func wasmEnv() []string {
	return append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
}

func buildOne(ctx context.Context, goBin, repoRoot string, p Plugin, out string) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+p.Name+".*.tmp")
	if err != nil {
		return fmt.Errorf("plugin %s: %w", p.Name, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // no-op after the rename

	args := append([]string{"build"}, buildFlags()...)
	args = append(args, "-o", tmpName, "./"+relSlash(repoRoot, p.Dir))
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = repoRoot
	cmd.Env = wasmEnv()
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("plugin %s: go build: %w\n%s", p.Name, err, bytes.TrimSpace(output))
	}
	if err := os.Rename(tmpName, out); err != nil {
		return fmt.Errorf("plugin %s: %w", p.Name, err)
	}
	return nil
}

func relSlash(root, dir string) string {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return dir
	}
	return filepath.ToSlash(rel)
}

// listedPackage is the part of `go list -json` output the key needs.
type listedPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	EmbedFiles []string
	Deps       []string
	Module     *struct{ Path string }
}

// buildKeys computes the build key of every plugin with one go list run.
func buildKeys(ctx context.Context, goBin, repoRoot string, plugins []Plugin) (map[string]string, error) {
	verCmd := exec.CommandContext(ctx, goBin, "env", "GOVERSION")
	verCmd.Dir = repoRoot
	version, err := verCmd.Output()
	if err != nil {
		return nil, fmt.Errorf("build plugins: go env GOVERSION: %w", err)
	}
	args := []string{"list", "-deps", "-json=ImportPath,Dir,Standard,GoFiles,EmbedFiles,Deps,Module"}
	for _, p := range plugins {
		args = append(args, "./"+relSlash(repoRoot, p.Dir))
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = repoRoot
	cmd.Env = wasmEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	listing, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("build plugins: go list: %w\n%s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	pkgs := map[string]*listedPackage{}
	byDir := map[string]*listedPackage{}
	dec := json.NewDecoder(bytes.NewReader(listing))
	for {
		var lp listedPackage
		if err := dec.Decode(&lp); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("build plugins: decode go list output: %w", err)
		}
		pkgs[lp.ImportPath] = &lp
		byDir[lp.Dir] = &lp
	}

	common := sha256.New()
	fmt.Fprintf(common, "go %s\nGOFLAGS=%s\nflags %q\n", bytes.TrimSpace(version), os.Getenv("GOFLAGS"), buildFlags())
	for _, f := range []string{"go.mod", "go.sum"} {
		if err := hashFile(common, filepath.Join(repoRoot, f), f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("build plugins: %w", err)
		}
	}
	commonSum := common.Sum(nil)

	keys := map[string]string{}
	for _, p := range plugins {
		root, ok := byDir[p.Dir]
		if !ok {
			return nil, fmt.Errorf("plugin %s: go list did not report %s", p.Name, p.Dir)
		}
		h := sha256.New()
		h.Write(commonSum)
		deps := append([]string{root.ImportPath}, root.Deps...)
		sort.Strings(deps)
		for _, path := range deps {
			lp, ok := pkgs[path]
			if !ok || lp.Standard || lp.Module == nil {
				continue // the standard library is covered by the Go version
			}
			fmt.Fprintf(h, "package %s\n", lp.ImportPath)
			files := append(append([]string(nil), lp.GoFiles...), lp.EmbedFiles...)
			for _, f := range files {
				if err := hashFile(h, filepath.Join(lp.Dir, f), f); err != nil {
					return nil, fmt.Errorf("plugin %s: %w", p.Name, err)
				}
			}
		}
		keys[p.Name] = hex.EncodeToString(h.Sum(nil))
	}
	return keys, nil
}

func hashFile(h io.Writer, path, name string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	fmt.Fprintf(h, "file %s %d\n", name, fi.Size())
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// Find returns the path of plugin name's .wasm file in the first directory
// of searchPath that has it. The error names every path it tried.
func Find(name string, searchPath []string) (string, error) {
	if name == "" {
		return "", errors.New("find plugin: empty name")
	}
	if strings.ContainsAny(name, `/\`) {
		return "", fmt.Errorf("find plugin %q: a plugin name has no path separators", name)
	}
	if len(searchPath) == 0 {
		return "", fmt.Errorf("plugin %q not found: the plugin search path is empty", name)
	}
	var tried []string
	for _, dir := range searchPath {
		p := filepath.Join(dir, FileName(name))
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("plugin %q not found; searched %s", name, strings.Join(tried, ", "))
}

// RepoRoot walks up from dir to the directory whose go.mod declares module
// wasmvmm. Tests and tools use it to locate the sources.
func RepoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && modulePath(b) == "wasmvmm" {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of module wasmvmm above %s", dir)
		}
	}
}

func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// DefaultOutDir is a per-user cache directory for the plugins built from
// the tree at repoRoot (one directory per tree, so worktrees do not
// rebuild each other's plugins).
func DefaultOutDir(repoRoot string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("plugin output directory: %w", err)
	}
	abs, err := filepath.Abs(repoRoot)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(cache, "wasmvmm", "plugins", hex.EncodeToString(sum[:6])), nil
}
