package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/qmp"
	"wasmvmm/testsuite/harness"
)

// Live migration, wasmvmm against QEMU 7.2 microvm, the same test guest and
// the same cases in one run. Each case boots a source with the dirtier over
// 512 MiB, starts a destination waiting on a unix socket, migrates through
// QMP and records what query-migrate says (total time, downtime, bytes,
// dirty-sync passes), the guest-visible pause (the source's STOP event to
// the destination's RESUME event, both VMMs' timestamps from the same
// clock), and the RAM throughput against a plain unix-socket copy of the
// same number of bytes into fresh memory. The two VMMs take turns going
// first from case to case (see the loop).
//
//	MIGBENCH_SIZES=1024,4096   guest RAM sizes in MiB (default 1024)
//	MIGBENCH_QEMU=0            skip QEMU
//	MIGBENCH_TIMEOUT=30s       a migration that has not completed is cancelled
//	MIGBENCH_CASES=idle,...    run only the cases whose names contain these
//	MIGBENCH_RUNS=3            run every case this many times (the turns go
//	                           on alternating) and end with a table of
//	                           medians: which VMM is ahead on total time and
//	                           on pause. One run decides little on this
//	                           host: a run's figures follow how much of the
//	                           memory it touches is new to the outer host.
//	MIGBENCH_MULTIFD=0,2,4     wasmvmm once per multifd-channels count (0: the
//	                           multifd capability off, the default); each
//	                           multifd row prints its total time, pause and
//	                           RAM throughput against the row with 0
//
// Total time is measured from each VMM's MIGRATION events (setup to
// completed), downtime is what query-migrate reports.

const (
	benchDirtyStart = 16 << 20
	benchDirtyEnd   = benchDirtyStart + 512<<20
)

type migCase struct {
	name     string
	workload string // dirtier arguments
	bw       int64  // max-bandwidth; 0 leaves QEMU's default (128 MiB/s)
	converge bool   // auto-converge
}

var migCases = []migCase{
	{"idle/default", "dirty_rate_mb=1", 0, false},
	{"idle/10GiB", "dirty_rate_mb=1", 10 << 30, false},
	{"64MiBps/default", "dirty_rate_mb=64", 0, false},
	{"64MiBps/10GiB", "dirty_rate_mb=64", 10 << 30, false},
	{"flatout/default+ac", "dirty_rate_mb=0 marker_every=1000", 0, true},
	{"flatout/10GiB", "dirty_rate_mb=0 marker_every=1000", 10 << 30, false},
	// Paced at 2 GiB/s and stopped right after pass 1: every page holds 1 or
	// 2 (flat out, the counters may wrap to 0 just when the guest stops).
	{"paused/10GiB", "dirty_rate_mb=2048 paused", 10 << 30, false},
}

// migResult is one migration's figures.
type migResult struct {
	status    string
	total     time.Duration
	downtime  time.Duration
	pause     time.Duration // STOP on the source to RESUME on the destination
	bytes     int64
	normal    int64 // bytes of pages with data
	passes    int64
	mbps      float64
	converged bool
}

func (r migResult) String() string {
	if !r.converged {
		return fmt.Sprintf("%-9s (no completion) sent %6.0f MiB passes %d", r.status, float64(r.bytes)/(1<<20), r.passes)
	}
	return fmt.Sprintf("total %7.1f ms  downtime %6.1f ms  pause %6.1f ms  sent %6.0f MiB  %7.0f Mbit/s  passes %3d",
		ms(r.total), ms(r.downtime), ms(r.pause), float64(r.bytes)/(1<<20), r.mbps, r.passes)
}

// vmm starts a source or a destination of one kind.
type vmm interface {
	name() string
	start(b *testing.B, dir string, memMiB int, cmdline string, incoming string) *proc
}

type proc struct {
	cmd    *exec.Cmd
	serial string
	qmp    string
	done   chan struct{}
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) serialText() string {
	b, _ := os.ReadFile(p.serial)
	return string(b)
}

func startProc(b *testing.B, c *exec.Cmd, serial, qmpSock string) *proc {
	p := &proc{cmd: c, serial: serial, qmp: qmpSock, done: make(chan struct{})}
	c.Stderr = io.Discard
	if os.Getenv("MIGBENCH_LOG") != "" {
		c.Stderr = &syncWriter{w: os.Stderr}
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { c.Wait(); close(p.done) }()
	b.Cleanup(p.kill)
	return p
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

type wasmvmmVMM struct{ art harness.Build }

func (w wasmvmmVMM) name() string { return "wasmvmm" }

func (w wasmvmmVMM) start(b *testing.B, dir string, memMiB int, cmdline, incoming string) *proc {
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	cfg := filepath.Join(dir, "vm-"+tag+".toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[machine]\nmemory = \"%dM\"\ncpus = 1\n[boot]\nkernel = %q\ncmdline = %q\n", memMiB, w.art.Guest, cmdline)), 0o644)
	serial, sock := filepath.Join(dir, "serial-"+tag), filepath.Join(dir, "qmp-"+tag)
	args := []string{"run", cfg, "--serial", "file:" + serial, "--plugins", w.art.PluginDir, "--qmp", sock}
	if lv := os.Getenv("MIGBENCH_LOG"); lv != "" {
		args = append(args, "--log-level", lv)
	}
	if incoming != "" {
		args = append(args, "--incoming", incoming)
	}
	return startProc(b, exec.Command(w.art.Binary, args...), serial, sock)
}

type qemuVMM struct {
	bin   string
	guest string
}

func (q qemuVMM) name() string { return "qemu" }

func (q qemuVMM) start(b *testing.B, dir string, memMiB int, cmdline, incoming string) *proc {
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	serial, sock := filepath.Join(dir, "serial-"+tag), filepath.Join(dir, "qmp-"+tag)
	args := []string{"-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", fmt.Sprintf("%dM", memMiB), "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:" + serial, "-kernel", q.guest, "-append", cmdline,
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	if incoming != "" {
		args = append(args, "-incoming", incoming)
	}
	return startProc(b, exec.Command(q.bin, args...), serial, sock)
}

func dialQMP(b *testing.B, path string) *qmp.Client {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := qmp.Dial(ctx, path)
		cancel()
		if err == nil {
			b.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			b.Fatalf("QMP %s: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventTimes records the first time each event arrived, by name and, for
// MIGRATION, by "MIGRATION:status".
func eventTimes(c *qmp.Client) func(name string) time.Time {
	var mu sync.Mutex
	seen := map[string]time.Time{}
	go func() {
		for e := range c.Events() {
			name := e.Name
			if name == "MIGRATION" {
				var d struct {
					Status string `json:"status"`
				}
				json.Unmarshal(e.Data, &d)
				name += ":" + d.Status
			}
			mu.Lock()
			if _, ok := seen[name]; !ok {
				seen[name] = e.Timestamp
			}
			mu.Unlock()
		}
	}()
	return func(name string) time.Time {
		mu.Lock()
		defer mu.Unlock()
		return seen[name]
	}
}

func exec1(b *testing.B, c *qmp.Client, cmd string, args any) json.RawMessage {
	out, err := c.Execute(context.Background(), cmd, args)
	if err != nil {
		b.Fatalf("%s: %v", cmd, err)
	}
	return out
}

func waitSerial(b *testing.B, p *proc, marker string, d time.Duration) {
	deadline := time.Now().Add(d)
	for !strings.Contains(p.serialText(), marker) {
		select {
		case <-p.done:
			b.Fatalf("%s exited before %q", p.cmd.Path, marker)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("no %q within %v: %q", marker, d, p.serialText())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runMigration runs one case on one VMM.
// multifd > 0 turns the multifd capability on, on both sides, with that many
// channels (wasmvmm only: its destination starts with --incoming defer and
// gets the capability before migrate-incoming).
func runMigration(b *testing.B, v vmm, dir string, memMiB int, c migCase, timeout time.Duration, multifd int) migResult {
	paused := strings.HasSuffix(c.workload, " paused")
	work := strings.TrimSuffix(c.workload, " paused")
	cmdline := fmt.Sprintf("workload=dirtier dirty_start=%#x dirty_end=%#x %s", benchDirtyStart, benchDirtyEnd, work)
	src := v.start(b, dir, memMiB, cmdline, "")
	waitSerial(b, src, "DIRTIER start=", 60*time.Second)
	if !strings.Contains(work, "dirty_rate_mb=1 ") && !strings.HasSuffix(work, "dirty_rate_mb=1") {
		waitSerial(b, src, "DIRTY pass=", 60*time.Second) // every page holds data
	} else {
		time.Sleep(200 * time.Millisecond)
	}
	migSock := filepath.Join(dir, "mig-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	incoming := "unix:" + migSock
	if multifd > 0 {
		incoming = "defer"
	}
	dst := v.start(b, dir, memMiB, cmdline, incoming)
	sc, dc := dialQMP(b, src.qmp), dialQMP(b, dst.qmp)
	if multifd > 0 {
		mf := []map[string]any{{"capability": "multifd", "state": true}}
		exec1(b, dc, "migrate-set-capabilities", map[string]any{"capabilities": mf})
		exec1(b, dc, "migrate-incoming", map[string]any{"uri": "unix:" + migSock})
		exec1(b, sc, "migrate-set-parameters", map[string]any{"multifd-channels": multifd})
	}
	srcEv, dstEv := eventTimes(sc), eventTimes(dc)
	if paused {
		exec1(b, sc, "stop", nil)
	}
	caps := []map[string]any{{"capability": "events", "state": true}}
	if c.converge {
		caps = append(caps, map[string]any{"capability": "auto-converge", "state": true})
	}
	if multifd > 0 {
		caps = append(caps, map[string]any{"capability": "multifd", "state": true})
	}
	exec1(b, sc, "migrate-set-capabilities", map[string]any{"capabilities": caps})
	if c.bw > 0 {
		exec1(b, sc, "migrate-set-parameters", map[string]any{"max-bandwidth": c.bw})
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(migSock); err == nil {
			time.Sleep(20 * time.Millisecond) // bind() creates the file before listen()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s destination does not listen", v.name())
		}
	}
	exec1(b, sc, "migrate", map[string]any{"uri": "unix:" + migSock})
	var rawInfo json.RawMessage
	var info struct {
		Status    string `json:"status"`
		TotalTime int64  `json:"total-time"`
		Downtime  int64  `json:"downtime"`
		RAM       struct {
			Transferred    int64   `json:"transferred"`
			NormalBytes    int64   `json:"normal-bytes"`
			DirtySyncCount int64   `json:"dirty-sync-count"`
			Mbps           float64 `json:"mbps"`
		} `json:"ram"`
	}
	start := time.Now()
	cancelled := false
	for {
		raw := exec1(b, sc, "query-migrate", nil)
		rawInfo = raw
		if err := json.Unmarshal(raw, &info); err != nil {
			b.Fatal(err)
		}
		if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" {
			break
		}
		if time.Since(start) > timeout && !cancelled {
			exec1(b, sc, "migrate_cancel", nil)
			cancelled = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := migResult{status: info.Status, total: time.Duration(info.TotalTime) * time.Millisecond,
		downtime: time.Duration(info.Downtime) * time.Millisecond, bytes: info.RAM.Transferred,
		normal: info.RAM.NormalBytes, passes: info.RAM.DirtySyncCount, mbps: info.RAM.Mbps,
		converged: info.Status == "completed"}
	if r.converged && r.total == 0 {
		fmt.Printf("%s: completed without total-time: %s\n", v.name(), rawInfo)
	}
	if r.converged {
		// Total time from the VMM's own events (setup to completed): QEMU
		// 7.2 sometimes answers total-time 0 right at completion.
		deadline := time.Now().Add(5 * time.Second)
		for srcEv("MIGRATION:completed").IsZero() && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
		if a, z := srcEv("MIGRATION:setup"), srcEv("MIGRATION:completed"); !a.IsZero() && !z.IsZero() {
			r.total = z.Sub(a)
		}
	}
	if r.converged && !paused {
		deadline := time.Now().Add(10 * time.Second)
		for dstEv("RESUME").IsZero() && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
		if stop, resume := srcEv("STOP"), dstEv("RESUME"); !stop.IsZero() && !resume.IsZero() {
			r.pause = resume.Sub(stop)
		}
	}
	src.kill()
	dst.kill()
	return r
}

// socketCopy copies n bytes of non-zero data through streams unix socket
// pairs in parallel (a goroutine pair each, n/streams bytes apiece) into
// fresh anonymous memory (first touch included, as on a migration's
// destination) and returns the throughput in bytes per second. With
// streams > 1 it bounds what parallel RAM channels (multifd) could gain.
func socketCopy(b *testing.B, n int64, streams int) float64 {
	dst, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(dst)
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i | 1)
	}
	per := n / int64(streams) &^ 4095
	var conns []net.Conn
	for s := 0; s < streams; s++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			b.Fatal(err)
		}
		wf, rf := os.NewFile(uintptr(fds[0]), "w"), os.NewFile(uintptr(fds[1]), "r")
		wc, _ := net.FileConn(wf)
		rc, _ := net.FileConn(rf)
		wf.Close()
		rf.Close()
		conns = append(conns, wc, rc)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	for s := 0; s < streams; s++ {
		wc, rc := conns[2*s], conns[2*s+1]
		part := dst[int64(s)*per : int64(s+1)*per]
		go func() {
			for sent := int64(0); sent < per; sent += int64(len(src)) {
				wc.Write(src[:min(int64(len(src)), per-sent)])
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.ReadFull(rc, part)
		}()
	}
	wg.Wait()
	return float64(per*int64(streams)) / time.Since(start).Seconds()
}

// BenchmarkLiveMigration prints wasmvmm and QEMU side by side for every
// case, and the RAM throughput ratio against a plain socket copy.
func BenchmarkLiveMigration(b *testing.B) {
	harness.RequireKVM(b)
	art := harness.Artifacts(b)
	vmms := []vmm{wasmvmmVMM{art}}
	if os.Getenv("MIGBENCH_QEMU") != "0" {
		vmms = append(vmms, qemuVMM{bin: requireQEMU(b), guest: art.Guest})
	}
	sizes := []int{1024}
	if s := os.Getenv("MIGBENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("MIGBENCH_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	timeout := 30 * time.Second
	if s := os.Getenv("MIGBENCH_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		timeout = d
	}
	only := os.Getenv("MIGBENCH_CASES")
	multifd := []int{0}
	if s := os.Getenv("MIGBENCH_MULTIFD"); s != "" {
		multifd = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 || n > 255 {
				b.Fatalf("MIGBENCH_MULTIFD: %q", f)
			}
			multifd = append(multifd, n)
		}
	}
	runs := 1
	if s := os.Getenv("MIGBENCH_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("MIGBENCH_RUNS: %q", s)
		}
		runs = n
	}
	dir := b.TempDir()
	ran := 0
	sum := newMigSummary()
	for i := 0; i < b.N; i++ {
		for _, size := range sizes {
			for _, c := range migCases {
				if only != "" && !strings.Contains(only, c.name) {
					continue
				}
				for run := 0; run < runs; run++ {
					// wasmvmm and QEMU take turns going first: the second to
					// run gets the memory the first just freed, which this
					// nested host hands out much faster than memory new to it
					// (first touch 0.4 against 4-8 GB/s, measured).
					order := slices.Clone(vmms)
					if ran%2 == 1 {
						slices.Reverse(order)
					}
					ran++
					res := map[string]migResult{}
					for _, v := range order {
						if v.name() != "wasmvmm" {
							res[v.name()] = runMigration(b, v, dir, size, c, timeout, 0)
							continue
						}
						for _, n := range multifd {
							name := "wasmvmm"
							if n > 0 {
								name = fmt.Sprintf("wasmvmm-mf%d", n)
							}
							res[name] = runMigration(b, v, dir, size, c, timeout, n)
						}
					}
					for _, v := range vmms {
						if v.name() != "wasmvmm" {
							fmt.Printf("%4d MiB %-19s %-7s %s\n", size, c.name, v.name(), res[v.name()])
							continue
						}
						for _, n := range multifd {
							name := "wasmvmm"
							if n > 0 {
								name = fmt.Sprintf("wasmvmm-mf%d", n)
							}
							r := res[name]
							fmt.Printf("%4d MiB %-19s %-7s %s\n", size, c.name, name, r)
							if one, ok := res["wasmvmm"]; ok && n > 0 && r.converged && one.converged {
								tput := func(r migResult) float64 { return float64(r.bytes) / r.total.Seconds() }
								fmt.Printf("%4d MiB %-19s %-7s vs one channel: total %.2fx, pause %.2fx, RAM throughput %.0f vs %.0f MiB/s = %.2fx\n",
									size, c.name, name, float64(r.total)/float64(one.total), float64(r.pause)/float64(max(one.pause, 1)),
									tput(r)/(1<<20), tput(one)/(1<<20), tput(r)/tput(one))
								b.ReportMetric(tput(r)/tput(one), fmt.Sprintf("mf%d-throughput-vs-1ch-%dM-%s", n, size, strings.ReplaceAll(c.name, "/", "-")))
							}
						}
					}
					w := res["wasmvmm"]
					if c.name == "paused/10GiB" && w.converged {
						raw := float64(w.bytes) / w.total.Seconds()
						plain := socketCopy(b, w.bytes, 1)
						two := socketCopy(b, w.bytes, 2)
						fmt.Printf("%4d MiB plain unix-socket copy, 1 stream %.0f MiB/s, 2 parallel streams %.0f MiB/s (what parallel RAM channels could gain here)\n",
							size, plain/(1<<20), two/(1<<20))
						fmt.Printf("%4d MiB RAM throughput %.0f MiB/s, plain unix-socket copy of %d MiB into fresh memory %.0f MiB/s: ratio %.2f",
							size, raw/(1<<20), w.bytes>>20, plain/(1<<20), raw/plain)
						fmt.Println()
						b.ReportMetric(raw/plain, fmt.Sprintf("ram-vs-socket-%dM", size))
						sum.addRAMRatio(size, raw/plain)
					}
					if q, ok := res["qemu"]; ok && q.converged && w.converged {
						b.ReportMetric(float64(w.total)/float64(q.total), fmt.Sprintf("total-ratio-%dM-%s", size, strings.ReplaceAll(c.name, "/", "-")))
					}
					for name, r := range res {
						sum.add(size, c.name, name, r)
					}
				}
			}
		}
	}
	if runs > 1 {
		sum.print(os.Stdout)
	}
}
