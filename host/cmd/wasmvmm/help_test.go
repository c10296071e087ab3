package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestEveryCommandHelps: "COMMAND --help" prints the command's usage and
// exits 0 without acting (build-plugins once took --help for its output
// directory and built into it).
func TestEveryCommandHelps(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, cmd := range []string{"run", "demo", "build-plugins", "analyze", "migrate", "machines", "dump-vmstate", "compat-check", "compat-matrix"} {
		var out, errb bytes.Buffer
		code := dispatch([]string{cmd, "--help"}, strings.NewReader(""), &out, &errb)
		text := out.String() + errb.String()
		if code != 0 || !strings.Contains(strings.ToLower(text), "usage") {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, text)
		}
	}
	if entries, _ := os.ReadDir("."); len(entries) != 0 {
		t.Errorf("--help left files behind: %v", entries)
	}
}
