package compat

import (
	"context"
	"os"
	"strings"
	"testing"
)

// TestMatrix runs the whole matrix: every machine type x release x
// release, statically and with live migrations both ways. Any unexpected
// red fails it. WASMVMM_MATRIX_REPORT=DIR keeps matrix.md and matrix.html.
func TestMatrix(t *testing.T) {
	env := testEnv(t)
	mx, err := env.RunMatrix(context.Background(), MatrixOptions{Catalog: builtinCatalog(t), ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("WASMVMM_MATRIX_REPORT")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := mx.WriteReports(dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("matrix: %d cells in %v; %v; reports in %s", len(mx.Cells), mx.Elapsed, mx.Counts(), dir)
	if u := mx.Unexpected(); len(u) > 0 {
		t.Fatalf("unexpected outcomes:\n%s\n\n%s", strings.Join(u, "\n"), mx.Markdown())
	}
	counts := mx.Counts()
	if counts[Green] == 0 || counts[RedExpected] == 0 {
		t.Fatalf("the matrix has no green or no expected red: %v", counts)
	}
	// The known break shows where it must: r2 -> r1 on every machine type
	// with a virtio-net, statically and dynamically.
	for _, c := range mx.Cells {
		hasNet := strings.HasPrefix(c.Machine, "wasmvmm-virt")
		if c.Src == "r2" && c.Dst == "r1" && hasNet {
			if c.Static.Outcome != RedExpected || c.Forward.Outcome != RedExpected {
				t.Errorf("%s r2->r1: static %s, migrate %s; want red-expected", c.Machine, c.Static.Outcome, c.Forward.Outcome)
			}
		}
		if c.Src == "r1" && c.Dst == "r2" && hasNet && (c.Forward.Outcome != Green || c.Backward.Outcome != RedExpected) {
			t.Errorf("%s r1->r2: forward %s, backward %s; want green, red-expected", c.Machine, c.Forward.Outcome, c.Backward.Outcome)
		}
	}
}
