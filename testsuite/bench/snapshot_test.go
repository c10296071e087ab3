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

// saveSnapshot saves src to path with the capabilities given and returns
// the time it took; src is left in postmigrate.
func saveSnapshot(b *testing.B, src *harness.InProcess, path string, caps []migration.CapabilityState) time.Duration {
	g := migration.New(migration.Config{Machine: src.M, MachineType: src.M.Config().MachineType.Name})
	if err := g.SetCapabilities(caps); err != nil {
		b.Fatal(err)
	}
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
	return save
}

// restoreSnapshot restores path into a fresh machine of mem bytes with the
// capabilities and parameters given, and returns the load time and the
// time to the guest's first instruction (its RESUME), then closes it.
func restoreSnapshot(b *testing.B, path string, mem uint64, caps []migration.CapabilityState, params migration.ParameterUpdate) (load, firstInsn time.Duration) {
	dst := harness.NewMachine(b, harness.MachineOptions{Memory: mem, NoBoot: true})
	defer dst.M.Close()
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
	if err := gd.SetCapabilities(caps); err != nil {
		b.Fatal(err)
	}
	if err := gd.SetParameters(params); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := gd.Incoming(context.Background(), migration.Channel{Type: "main", Transport: "file", Path: path}); err != nil {
		b.Fatal(err)
	}
	load = time.Since(t0)
	select {
	case at := <-resumed:
		firstInsn = at.Sub(t0)
	case <-time.After(10 * time.Second):
		b.Fatal("restored guest did not resume")
	}
	return load, firstInsn
}

// BenchmarkSnapshot saves a guest whose dirtier touched half its RAM to a
// file and restores it in a fresh machine, against a plain buffered copy of
// the touched bytes in the same run (goal: ratio >= 0.8), and reports the
// restore time to the first guest instruction. The mapped-* metrics are
// the same save and restore with the mapped-ram capability (2 reading
// goroutines), mapped1-* its restore with 1 (multifd on, 1 channel). Run
// it with -benchtime 2x (or any even count) so that every order of the
// saves and of the two mapped-ram restores is measured alike.
func BenchmarkSnapshot(b *testing.B) {
	harness.RequireKVM(b)
	mappedRAM := []migration.CapabilityState{{Capability: "mapped-ram", State: true}}
	oneReader := []migration.CapabilityState{{Capability: "mapped-ram", State: true}, {Capability: "multifd", State: true}}
	one := int64(1)
	for _, gib := range []uint64{1, 4} {
		b.Run(fmt.Sprintf("%dGiB", gib), func(b *testing.B) {
			mem := gib << 30
			half := mem / 2
			dir := b.TempDir()
			// Durations add up over the iterations; the metrics are
			// their ratios, so every iteration counts alike.
			var save, pw, pr, prf, load, firstInsn, mappedSave, mappedLoad, mappedFirst, mapped1Load time.Duration
			var streamBytes int64
			for i := 0; i < b.N; i++ {
				src := harness.NewMachine(b, harness.MachineOptions{Memory: mem,
					Cmdline: fmt.Sprintf("workload=dirtier dirty_start=%#x dirty_end=%#x", 16<<20, 16<<20+half)})
				if err := src.M.Start(false); err != nil {
					b.Fatal(err)
				}
				harness.WaitFor(b, src.Console, "DIRTY pass=1\n", 120*time.Second)
				// The same guest saved twice, normal and with mapped-ram,
				// running again in between; the second save runs while the
				// first one's pages are still being written back, so the
				// order alternates with the iterations.
				path := filepath.Join(dir, "snap.bin")
				mappedPath := filepath.Join(dir, "mapped.bin")
				saves := []func(){
					func() { save += saveSnapshot(b, src, path, nil) },
					func() { mappedSave += saveSnapshot(b, src, mappedPath, mappedRAM) },
				}
				saves[i%2]()
				if err := src.M.EnterRunState(machine.StateRunning); err != nil {
					b.Fatal(err)
				}
				saves[1-i%2]()
				st, _ := os.Stat(path)
				streamBytes = st.Size()
				// The baseline: the same number of bytes as the touched RAM.
				touched, err := src.M.Memory().Slice(16<<20, half)
				if err != nil {
					b.Fatal(err)
				}
				w, r, plainPath := plainCopy(b, dir, touched)
				pw += w
				pr += r
				src.M.Close()
				// After the source's RAM went back to the kernel, as for
				// the restore below.
				prf += plainReadFresh(b, plainPath, len(touched))

				l, first := restoreSnapshot(b, path, mem, nil, migration.ParameterUpdate{})
				load += l
				firstInsn += first
				// The 1-reader restore goes first every other iteration, so
				// that neither profits from the other's freed memory.
				restore1 := func() {
					l, _ := restoreSnapshot(b, mappedPath, mem, oneReader, migration.ParameterUpdate{MultifdChannels: &one})
					mapped1Load += l
				}
				if i%2 == 1 {
					restore1()
				}
				l, first = restoreSnapshot(b, mappedPath, mem, mappedRAM, migration.ParameterUpdate{})
				mappedLoad += l
				mappedFirst += first
				if i%2 == 0 {
					restore1()
				}
				os.Remove(path)
				os.Remove(mappedPath)
			}

			mb := float64(half) / 1e6 * float64(b.N)
			b.ReportMetric(mb/save.Seconds(), "save-MB/s")
			b.ReportMetric(mb/pw.Seconds(), "plain-write-MB/s")
			b.ReportMetric(pw.Seconds()/save.Seconds(), "save-ratio")
			b.ReportMetric(mb/load.Seconds(), "restore-MB/s")
			b.ReportMetric(mb/pr.Seconds(), "plain-read-MB/s")
			b.ReportMetric(pr.Seconds()/load.Seconds(), "restore-ratio")
			b.ReportMetric(mb/prf.Seconds(), "plain-read-fresh-MB/s")
			b.ReportMetric(prf.Seconds()/load.Seconds(), "restore-vs-fresh-ratio")
			b.ReportMetric(float64(firstInsn.Milliseconds())/float64(b.N), "restore-to-run-ms")
			b.ReportMetric(float64(streamBytes)/1e6, "stream-MB")
			b.ReportMetric(mb/mappedSave.Seconds(), "mapped-save-MB/s")
			b.ReportMetric(pw.Seconds()/mappedSave.Seconds(), "mapped-save-ratio")
			b.ReportMetric(mb/mappedLoad.Seconds(), "mapped-restore-MB/s")
			b.ReportMetric(pr.Seconds()/mappedLoad.Seconds(), "mapped-restore-ratio")
			b.ReportMetric(prf.Seconds()/mappedLoad.Seconds(), "mapped-restore-vs-fresh-ratio")
			b.ReportMetric(float64(mappedFirst.Milliseconds())/float64(b.N), "mapped-restore-to-run-ms")
			b.ReportMetric(pr.Seconds()/mapped1Load.Seconds(), "mapped1-restore-ratio")
		})
	}
}
