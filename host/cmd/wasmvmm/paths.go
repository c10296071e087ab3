package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// layout says where wasmvmm finds its parts: next to the binary after
// `just build` (bin/wasmvmm, bin/plugins/, bin/guest.elf), or in a source
// checkout when run with `go run` (plugins and the guest are then built on
// demand).
type layout struct {
	repo      string // source checkout root, or ""
	pluginDir string // where .wasm plugins are
	guest     string // the test guest ELF
}

// findRepo walks up from dir to the go.mod of module wasmvmm.
func findRepo(dir string) string {
	for {
		f, err := os.Open(filepath.Join(dir, "go.mod"))
		if err == nil {
			sc := bufio.NewScanner(f)
			isOurs := sc.Scan() && strings.TrimSpace(sc.Text()) == "module wasmvmm"
			f.Close()
			if isOurs {
				return dir
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func discoverLayout(pluginFlag string) layout {
	var l layout
	exe, _ := os.Executable()
	exeDir := filepath.Dir(exe)
	if wd, err := os.Getwd(); err == nil {
		l.repo = findRepo(wd)
	}
	if l.repo == "" {
		l.repo = findRepo(exeDir)
	}
	switch {
	case pluginFlag != "":
		l.pluginDir = pluginFlag
	case os.Getenv("WASMVMM_PLUGIN_DIR") != "":
		l.pluginDir = os.Getenv("WASMVMM_PLUGIN_DIR")
	case dirExists(filepath.Join(exeDir, "plugins")):
		l.pluginDir = filepath.Join(exeDir, "plugins")
	case l.repo != "":
		l.pluginDir = filepath.Join(l.repo, "bin", "plugins")
	default:
		l.pluginDir = filepath.Join(exeDir, "plugins")
	}
	for _, g := range []string{filepath.Join(exeDir, "guest.elf"), filepath.Join(l.repo, "testsuite", "guest", "build", "guest.elf")} {
		if fileExists(g) {
			l.guest = g
			break
		}
	}
	return l
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// ensureGuest builds the test guest in a source checkout when it is missing
// or stale (make decides), and returns its path.
func (l *layout) ensureGuest(ctx context.Context) (string, error) {
	if l.repo == "" {
		if l.guest != "" {
			return l.guest, nil
		}
		return "", fmt.Errorf("test guest not found next to the binary (guest.elf) and no source checkout to build it in")
	}
	dir := filepath.Join(l.repo, "testsuite", "guest")
	cmd := exec.CommandContext(ctx, "make", "-s", "-C", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the test guest (make -C %s): %v\n%s", dir, err, out)
	}
	l.guest = filepath.Join(dir, "build", "guest.elf")
	return l.guest, nil
}
