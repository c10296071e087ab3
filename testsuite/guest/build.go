// Package guest builds the freestanding wasmvmm test guest (testsuite/guest,
// see README.md there) so that end-to-end tests can boot it on demand.
package guest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Dir is the guest's source directory, relative to the repository root.
const Dir = "testsuite/guest"

// Build runs make for the test guest in repoRoot and returns the absolute
// path of the ELF it produced (testsuite/guest/build/guest.elf). make runs
// quietly; on failure the error carries its output. Concurrent callers, in
// this process or others, are serialized with a lock file in the build
// directory, so parallel test packages can all call Build.
func Build(repoRoot string) (elfPath string, err error) {
	src, err := filepath.Abs(filepath.Join(repoRoot, Dir))
	if err != nil {
		return "", fmt.Errorf("build guest: %w", err)
	}
	return buildInto(src, filepath.Join(src, "build"))
}

// buildInto runs make in src with BUILD=out and returns out/guest.elf.
func buildInto(src, out string) (string, error) {
	if _, err := exec.LookPath("make"); err != nil {
		return "", fmt.Errorf("build guest: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", fmt.Errorf("build guest: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("build guest: lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("build guest: lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	cmd := exec.Command("make", "-s", "-C", src, "BUILD="+out)
	var output bytes.Buffer
	cmd.Stdout = &output
	cmd.Stderr = &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build guest: make -C %s: %w\n%s", src, err, output.Bytes())
	}
	return filepath.Join(out, "guest.elf"), nil
}
