// Package linux fetches Debian's cloud kernel for tests: the package that
// linux-image-cloud-amd64 depends on, downloaded with apt-get into a cache
// directory and unpacked with dpkg-deb.
package linux

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Enabled reports whether tests that download a real Debian kernel run:
// under CI, or when WASMVMM_LINUX_TEST=1.
func Enabled() bool {
	return os.Getenv("CI") == "true" || os.Getenv("WASMVMM_LINUX_TEST") == "1"
}

func requirePrereq(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a prerequisite is missing: "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// cacheDir is where the downloaded kernel is kept between runs:
// $XDG_CACHE_HOME/wasmvmm/linux, else ~/.cache/wasmvmm/linux.
func cacheDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("no cache directory: %v", err)
		}
		base = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(base, "wasmvmm", "linux")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run runs a command in dir and returns its standard output.
func run(t testing.TB, dir, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Logf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), err
}

var kernelPackage = regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-cloud-amd64)\b`)

// Kernel returns the path of Debian's cloud kernel (a bzImage),
// downloading the package that linux-image-cloud-amd64 depends on into the
// cache directory and extracting /boot/vmlinuz-* from it on first use.
func Kernel(t testing.TB) (path, pkg string) {
	t.Helper()
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		_, err := exec.LookPath(tool)
		requirePrereq(t, err == nil, "%s not found (a Debian host is needed to fetch the kernel): %v", tool, err)
	}
	cache := cacheDir(t)
	out, _ := run(t, cache, "apt-cache", "depends", "linux-image-cloud-amd64")
	m := kernelPackage.FindStringSubmatch(out)
	if m == nil {
		if _, err := run(t, cache, "apt-get", "update"); err != nil {
			t.Fatalf("apt-get update failed; cannot resolve linux-image-cloud-amd64")
		}
		out, _ = run(t, cache, "apt-cache", "depends", "linux-image-cloud-amd64")
		if m = kernelPackage.FindStringSubmatch(out); m == nil {
			t.Fatalf("apt-cache depends linux-image-cloud-amd64 names no kernel package:\n%s", out)
		}
	}
	pkg = m[1]
	version := strings.TrimPrefix(pkg, "linux-image-")
	path = filepath.Join(cache, "vmlinuz-"+version)
	if _, err := os.Stat(path); err == nil {
		return path, pkg
	}
	work := t.TempDir()
	if _, err := run(t, work, "apt-get", "download", pkg); err != nil {
		t.Fatalf("apt-get download %s failed", pkg)
	}
	debs, _ := filepath.Glob(filepath.Join(work, pkg+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(work, "root")
	if _, err := run(t, work, "dpkg-deb", "-x", debs[0], root); err != nil {
		t.Fatalf("dpkg-deb -x %s failed", debs[0])
	}
	b, err := os.ReadFile(filepath.Join(root, "boot", "vmlinuz-"+version))
	if err != nil {
		t.Fatalf("package %s has no /boot/vmlinuz-%s: %v", pkg, version, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path, pkg
}
