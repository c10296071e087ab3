package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
	"wasmvmm/testsuite/harness"
)

// plainCopy writes n bytes of src to a file through a 1 MiB buffer, syncs,
// and reads them back through a 1 MiB buffer: the baseline of a snapshot's
// save and restore. It leaves the file at path for plainReadFresh.
func plainCopy(b *testing.B, dir string, src []byte) (write, read time.Duration, path string) {
	p := filepath.Join(dir, "plain.bin")
	t0 := time.Now()
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.Write(src); err != nil {
		b.Fatal(err)
	}
	w.Flush()
	f.Sync()
	f.Close()
	write = time.Since(t0)
	t0 = time.Now()
	f, _ = os.Open(p)
	dst := make([]byte, 1<<20)
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		if _, err := io.ReadFull(r, dst); err != nil {
			break
		}
	}
	f.Close()
	read = time.Since(t0)
	return write, read, p
}

// plainReadFresh reads the file at p into fresh memory allocated as guest
// RAM is (huge pages), so that first-touch costs count as they do for a
// restore, and removes the file.
func plainReadFresh(b *testing.B, p string, n int) time.Duration {
	defer os.Remove(p)
	fresh, err := guestmem.Alloc("fresh", 0, uint64(n), guestmem.AllocOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer fresh.Close()
	t0 := time.Now()
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, fresh.Mem); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// BenchmarkSnapshot saves a guest whose dirtier touched half its RAM to a
// file and restores it in a fresh machine, against a plain buffered copy of
// the touched bytes in the same run (goal: ratio >= 0.8), and reports the
// restore time to the first guest instruction.
func BenchmarkSnapshot(b *testing.B) {
	harness.RequireKVM(b)
	for _, gib := range []uint64{1, 4} {
		b.Run(fmt.Sprintf("%dGiB", gib), func(b *testing.B) {
			mem := gib << 30
			half := mem / 2
			dir := b.TempDir()
			for i := 0; i < b.N; i++ {
				src := harness.NewMachine(b, harness.MachineOptions{Memory: mem,
					Cmdline: fmt.Sprintf("workload=dirtier dirty_start=%#x dirty_end=%#x", 16<<20, 16<<20+half)})
				if err := src.M.Start(false); err != nil {
					b.Fatal(err)
				}
				harness.WaitFor(b, src.Console, "DIRTY pass=1\n", 120*time.Second)
				path := filepath.Join(dir, "snap.bin")
				g := migration.New(migration.Config{Machine: src.M, MachineType: src.M.Config().MachineType.Name})
				t0 := time.Now()
				if err := g.Start(migration.Channel{Type: "main", Transport: "file", Path: path}); err != nil {
					b.Fatal(err)
				}
				for g.Status().Running() {
					time.Sleep(time.Millisecond)
				}
				save := time.Since(t0)
				if q := g.Query(); q.Status != migration.StatusCompleted {
					b.Fatalf("snapshot: %s %s", q.Status, q.ErrorDesc)
				}
				st, _ := os.Stat(path)
				// The baseline: the same number of bytes as the touched RAM.
				touched, err := src.M.Memory().Slice(16<<20, half)
				if err != nil {
					b.Fatal(err)
				}
				pw, pr, plainPath := plainCopy(b, dir, touched)
				src.M.Close()
				// After the source's RAM went back to the kernel, as for
				// the restore below.
				prf := plainReadFresh(b, plainPath, len(touched))

				dst := harness.NewMachine(b, harness.MachineOptions{Memory: mem, NoBoot: true})
				dst.M.SetAutostart(true)
				dst.M.StartIncoming()
				resumed := make(chan time.Time, 1)
				dst.M.OnEvent(func(e machine.Event) {
					if e.Name == "RESUME" {
						select {
						case resumed <- time.Now():
						default:
						}
					}
				})
				gd := migration.New(migration.Config{Machine: dst.M, MachineType: dst.M.Config().MachineType.Name})
				t0 = time.Now()
				if err := gd.Incoming(context.Background(), migration.Channel{Type: "main", Transport: "file", Path: path}); err != nil {
					b.Fatal(err)
				}
				load := time.Since(t0)
				var firstInsn time.Duration
				select {
				case at := <-resumed:
					firstInsn = at.Sub(t0)
				case <-time.After(10 * time.Second):
					b.Fatal("restored guest did not resume")
				}
				dst.M.Close()
				os.Remove(path)

				mb := float64(half) / 1e6
				b.ReportMetric(mb/save.Seconds(), "save-MB/s")
				b.ReportMetric(mb/pw.Seconds(), "plain-write-MB/s")
				b.ReportMetric(pw.Seconds()/save.Seconds(), "save-ratio")
				b.ReportMetric(mb/load.Seconds(), "restore-MB/s")
				b.ReportMetric(mb/pr.Seconds(), "plain-read-MB/s")
				b.ReportMetric(pr.Seconds()/load.Seconds(), "restore-ratio")
				b.ReportMetric(mb/prf.Seconds(), "plain-read-fresh-MB/s")
				b.ReportMetric(prf.Seconds()/load.Seconds(), "restore-vs-fresh-ratio")
				b.ReportMetric(float64(firstInsn.Milliseconds()), "restore-to-run-ms")
				b.ReportMetric(float64(st.Size())/1e6, "stream-MB")
			}
		})
	}
}
