// Package bench measures wasmvmm against baselines run in the same process
// or the same benchmark: QEMU 7.2 on the same guest, native Go handlers, plain
// copies. Each benchmark prints ratios with b.ReportMetric.
package bench

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"wasmvmm/testsuite/harness"
)

// qemuArgs boots the test guest as a PVH ELF under QEMU's microvm with KVM,
// as KVM-HOSTS.md measured (plain -cpu host aborts on MSR 0x10a here).
func qemuArgs(guest, cmdline string, memMiB int) []string {
	return []string{"-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", fmt.Sprintf("%dM", memMiB), "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-kernel", guest, "-append", cmdline}
}

func requireQEMU(b testing.TB) string {
	p, err := exec.LookPath("qemu-system-x86_64")
	harness.Require(b, err == nil, "qemu-system-x86_64 (apt-get install qemu-system-x86) for side-by-side figures")
	return p
}

// firstByte starts cmd and returns the time from start to the first byte on
// its stdout; the process is then killed.
func firstByte(b testing.TB, cmd *exec.Cmd) time.Duration {
	b.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdin = nil
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got := make(chan time.Duration, 1)
	go func() {
		var one [1]byte
		if _, err := io.ReadFull(out, one[:]); err == nil {
			got <- time.Since(start)
		}
		close(got)
	}()
	select {
	case d, ok := <-got:
		if !ok {
			b.Fatalf("%s exited before printing", cmd.Path)
		}
		return d
	case <-time.After(10 * time.Second):
		b.Fatalf("%s printed nothing in 10s", cmd.Path)
	}
	return 0
}

// median is the middle value (the upper middle of an even count).
func median[T cmp.Ordered](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkBootToFirstSerialByte: process start to the first serial byte of
// the test guest, wasmvmm (warm plugin cache) against QEMU 7.2 microvm
// booting the same ELF, alternating in the same run. Goal: ratio <= 0.5.
func BenchmarkBootToFirstSerialByte(b *testing.B) {
	harness.RequireKVM(b)
	qemu := requireQEMU(b)
	art := harness.Artifacts(b)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "vm.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[machine]\nmemory = \"128M\"\n[boot]\nkernel = %q\ncmdline = \"workload=idle\"\n", art.Guest)), 0o644)
	wasmvmm := func() *exec.Cmd {
		c := exec.Command(art.Binary, "run", cfg, "--serial", "stdio", "--plugins", art.PluginDir)
		c.Stderr = os.Stderr
		return c
	}
	firstByte(b, wasmvmm()) // warm the compilation cache and the page cache
	firstByte(b, exec.Command(qemu, qemuArgs(art.Guest, "workload=idle", 128)...))
	var ours, theirs []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ours = append(ours, firstByte(b, wasmvmm()))
		theirs = append(theirs, firstByte(b, exec.Command(qemu, qemuArgs(art.Guest, "workload=idle", 128)...)))
	}
	o, q := median(ours), median(theirs)
	b.ReportMetric(ms(o), "wasmvmm-ms")
	b.ReportMetric(ms(q), "qemu-ms")
	b.ReportMetric(float64(o)/float64(q), "ratio")
}

// smapsRSS returns a process's total resident memory and the resident part
// of its largest mapping of at least guestBytes (guest RAM), in bytes.
func smapsRSS(pid int, guestBytes uint64) (total, guest uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var size, bestSize uint64
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "Size:":
			n, _ := strconv.ParseUint(fields[1], 10, 64)
			size = n << 10
		case "Rss:":
			n, _ := strconv.ParseUint(fields[1], 10, 64)
			total += n << 10
			if size >= guestBytes && (bestSize == 0 || size < bestSize) {
				bestSize, guest = size, n<<10
			}
		}
	}
	return total, guest, sc.Err()
}

// BenchmarkResidentBeyondGuestRAM: resident memory of the VMM process minus
// the resident guest RAM, idle guest with every device of the machine type
// (serial, virtio-net, virtio-blk, virtio-gpu), wasmvmm against QEMU 7.2
// microvm with the same devices on the same guest. Goal: <= 64 MiB.
func BenchmarkResidentBeyondGuestRAM(b *testing.B) {
	harness.RequireKVM(b)
	qemu := requireQEMU(b)
	art := harness.Artifacts(b)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "vm.toml")
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 64<<20)
	// Every device of the machine type: serial, virtio-net, virtio-blk,
	// virtio-gpu (four plugin modules, four instances).
	os.WriteFile(cfg, []byte(fmt.Sprintf("[machine]\nmemory = \"128M\"\n[boot]\nkernel = %q\ncmdline = \"workload=idle\"\n"+
		"[[device]]\nid = \"blk0\"\nbackends = { disk = %q }\n[[device]]\nid = \"net0\"\nbackends = { net = \"discard\" }\n", art.Guest, img)), 0o644)
	measure := func(c *exec.Cmd) uint64 {
		out, _ := c.StdoutPipe()
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { c.Process.Kill(); c.Wait() }()
		r := bufio.NewReader(out)
		deadline := time.Now().Add(10 * time.Second)
		for {
			line, err := r.ReadString('\n')
			if strings.Contains(line, "GUEST IDLE") {
				break
			}
			if err != nil || time.Now().After(deadline) {
				b.Fatalf("%s: no GUEST IDLE marker (%v)", c.Path, err)
			}
		}
		time.Sleep(200 * time.Millisecond) // let the process settle
		total, guest, err := smapsRSS(c.Process.Pid, 128<<20)
		if err != nil {
			b.Fatal(err)
		}
		return total - guest
	}
	var ours, theirs uint64
	for i := 0; i < b.N; i++ {
		ours = measure(exec.Command(art.Binary, "run", cfg, "--serial", "stdio", "--plugins", art.PluginDir))
		// QEMU with the same devices: virtio-blk on the same kind of image,
		// virtio-net on a UDP socket nobody sends to, virtio-gpu.
		qimg := filepath.Join(dir, "qemu-disk.img")
		os.WriteFile(qimg, nil, 0o600)
		os.Truncate(qimg, 64<<20)
		args := append(qemuArgs(art.Guest, "workload=idle", 128), "-global", "virtio-mmio.force-legacy=false",
			"-drive", "id=d0,file="+qimg+",format=raw,if=none", "-device", "virtio-blk-device,drive=d0",
			"-netdev", "socket,id=n0,udp=127.0.0.1:9,localaddr=127.0.0.1:0", "-device", "virtio-net-device,netdev=n0",
			"-device", "virtio-gpu-device")
		theirs = measure(exec.Command(qemu, args...))
	}
	b.ReportMetric(float64(ours)/(1<<20), "wasmvmm-MiB")
	b.ReportMetric(float64(theirs)/(1<<20), "qemu-MiB")
	b.ReportMetric(float64(ours)/float64(theirs), "ratio")
}
