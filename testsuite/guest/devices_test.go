package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The virtio device checks of the guest (blk_test, net_test, gpu_test,
// dev_every; README.md) against QEMU 7.2 microvm's virtio-mmio devices.

// qemuDevices is one QEMU microvm run with virtio-mmio devices.
type qemuDevices struct {
	dir    string // short temporary directory: sockets, image, screendump
	serial *serialLines
	cmd    *exec.Cmd
	qmp    string // QMP socket path
	done   chan error
}

// shortTempDir returns a directory whose paths fit in a sockaddr_un.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gdev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func requireQEMU(t *testing.T) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	requireTool(t, "qemu-system-x86_64", err)
	_, err = os.Stat("/dev/kvm")
	requireTool(t, "/dev/kvm", err)
	return qemu
}

// startDevices boots the guest under microvm with acpi=off (so that QEMU
// appends the virtio_mmio.device= entries) and modern virtio-mmio
// transports (QEMU defaults to legacy, version 1), plus extra arguments.
func startDevices(t *testing.T, dir, cmdline string, extra ...string) *qemuDevices {
	t.Helper()
	return startNamed(t, dir, "vm", cmdline, extra...)
}

// startNamed is startDevices with the QMP socket at dir/<name>-qmp.sock.
func startNamed(t *testing.T, dir, name, cmdline string, extra ...string) *qemuDevices {
	t.Helper()
	qemu := requireQEMU(t)
	elf := buildGuest(t)
	q := &qemuDevices{dir: dir, qmp: filepath.Join(dir, name+"-qmp.sock"), done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	args := append([]string{"-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", "256M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-no-reboot", "-global", "virtio-mmio.force-legacy=false",
		"-qmp", "unix:" + q.qmp + ",server=on,wait=off",
		"-kernel", elf, "-append", cmdline}, extra...)
	q.cmd = exec.CommandContext(ctx, qemu, args...)
	out, err := q.cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	q.cmd.Stderr = &stderr
	if err := q.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	q.serial = newSerialLines(out)
	go func() { q.done <- q.cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-q.done
		if t.Failed() {
			t.Logf("qemu stderr: %s", stderr.Bytes())
		}
	})
	return q
}

// ---------------------------------------------------------------- block

// checkImage checks the blk_test pattern in [start, start+n), zeros elsewhere.
func checkImage(t *testing.T, path string, start, n, seed uint64) {
	t.Helper()
	if err := CheckImage(path, start, n, seed); err != nil {
		t.Fatal(err)
	}
}

func newImage(t *testing.T, dir string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

func blkArgs(img, extra string) []string {
	return []string{"-drive", "id=d0,file=" + img + ",format=raw,if=none" + extra,
		"-device", "virtio-blk-device,drive=d0,serial=wasmvmm-test-0123456"}
}

// ------------------------------------------------------------------ net

// echoPeer is the far end of QEMU's `-netdev dgram` over Unix datagram
// sockets: every datagram is one Ethernet frame; it sends each frame back
// with the MAC addresses swapped, if its sequence number is at most limit
// (negative: no limit).
type echoPeer struct {
	conn   *net.UnixConn
	qemu   string // QEMU's local socket path
	peer   string
	mu     sync.Mutex
	frames [][]byte
	limit  int
}

func newEchoPeer(t *testing.T, dir string, limit int) *echoPeer {
	t.Helper()
	p := &echoPeer{qemu: filepath.Join(dir, "qemu-net.sock"), peer: filepath.Join(dir, "peer-net.sock"), limit: limit}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p.peer, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	p.conn = conn
	go p.serve()
	t.Cleanup(func() { conn.Close() })
	return p
}

func (p *echoPeer) serve() {
	buf := make([]byte, 65536)
	for {
		n, from, err := p.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		f := append([]byte(nil), buf[:n]...)
		p.mu.Lock()
		p.frames = append(p.frames, f)
		echo := p.limit < 0 || echoSeq(f) <= p.limit
		p.mu.Unlock()
		if !echo || n < 14 || from == nil {
			continue
		}
		p.conn.WriteToUnix(EchoReply(f), from)
	}
}

// echoSeq is the sequence number of a net_test frame, or -1.
func echoSeq(f []byte) int {
	const prefix = "WASMVMM-ECHO "
	if len(f) < 14+len(prefix) || !bytes.HasPrefix(f[14:], []byte(prefix)) {
		return -1
	}
	text := f[14+len(prefix):]
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	n, err := strconv.Atoi(string(text))
	if err != nil {
		return -1
	}
	return n
}

func (p *echoPeer) received() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.frames...)
}

func (p *echoPeer) args(mac string) []string {
	return p.argsAt(p.qemu, mac)
}

// argsAt is args with QEMU's end of the link at local (a second QEMU, the
// destination of a migration, needs its own).
func (p *echoPeer) argsAt(local, mac string) []string {
	return []string{"-netdev", "dgram,id=n0,local.type=unix,local.path=" + local +
		",remote.type=unix,remote.path=" + p.peer,
		"-device", "virtio-net-device,netdev=n0,mac=" + mac}
}

// checkFrames checks the frames a peer saw: want distinct net_test frames.
func checkFrames(t *testing.T, got [][]byte, mac net.HardwareAddr, size, want int) {
	t.Helper()
	n, err := CheckEchoFrames(got, mac, size)
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("peer got %d distinct frames (%d in all), want %d", n, len(got), want)
	}
}

// ------------------------------------------------------------------ gpu

// qmpCommand runs one QMP command on a fresh connection (capabilities
// negotiated first) and returns its "return" value.
func qmpCommand(path, command string, args any) (json.RawMessage, error) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("qmp dial: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	enc := json.NewEncoder(conn)
	dec := json.NewDecoder(conn)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	run := func(cmd string, args any) (json.RawMessage, error) {
		msg := map[string]any{"execute": cmd}
		if args != nil {
			msg["arguments"] = args
		}
		if err := enc.Encode(msg); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		for {
			var resp struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class, Desc string
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := dec.Decode(&resp); err != nil {
				return nil, fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if resp.Event != "" {
				continue
			}
			if resp.Error != nil {
				return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
			}
			return resp.Return, nil
		}
	}
	if _, err := run("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return run(command, args)
}

// readPPM parses a binary PPM (P6, maxval 255) into width, height, RGB.
func readPPM(data []byte) (w, h int, rgb []byte, err error) {
	fields := make([]int, 0, 3)
	i := 0
	if len(data) < 2 || string(data[:2]) != "P6" {
		return 0, 0, nil, errors.New("not a P6 PPM")
	}
	i = 2
	for len(fields) < 3 {
		for i < len(data) && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' || data[i] == '\t') {
			i++
		}
		if i < len(data) && data[i] == '#' {
			for i < len(data) && data[i] != '\n' {
				i++
			}
			continue
		}
		j := i
		for j < len(data) && data[j] >= '0' && data[j] <= '9' {
			j++
		}
		v, err := strconv.Atoi(string(data[i:j]))
		if err != nil {
			return 0, 0, nil, fmt.Errorf("PPM header: %w", err)
		}
		fields = append(fields, v)
		i = j
	}
	i++ // the single whitespace byte after maxval
	w, h = fields[0], fields[1]
	if fields[2] != 255 {
		return 0, 0, nil, fmt.Errorf("PPM maxval %d, want 255", fields[2])
	}
	if len(data)-i != w*h*3 {
		return 0, 0, nil, fmt.Errorf("PPM %dx%d has %d pixel bytes, want %d", w, h, len(data)-i, w*h*3)
	}
	return w, h, data[i:], nil
}

// checkScreendump takes a QMP screendump and compares it with the test card.
func checkScreendump(t *testing.T, q *qemuDevices, w, h int) {
	t.Helper()
	shot := filepath.Join(q.dir, "shot.ppm")
	if _, err := qmpCommand(q.qmp, "screendump", map[string]any{"filename": shot}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	gw, gh, rgb, err := readPPM(data)
	if err != nil {
		t.Fatal(err)
	}
	if gw != w || gh != h {
		t.Fatalf("screendump %dx%d, want %dx%d", gw, gh, w, h)
	}
	err = CheckTestCard(w, h, func(x, y int) (r, g, b byte) {
		p := rgb[(y*w+x)*3:]
		return p[0], p[1], p[2]
	})
	if err != nil {
		t.Fatalf("screendump: %v", err)
	}
}

// ---------------------------------------------------------------- tests

var (
	reBlkID  = regexp.MustCompile(`^BLK ID (.*)$`)
	reBlk    = regexp.MustCompile(`^BLK (OK sectors=\d+|FAIL .*)$`)
	reNet    = regexp.MustCompile(`^NET (OK frames=\d+|FAIL .*)$`)
	reGPU    = regexp.MustCompile(`^GPU (OK \d+x\d+|FAIL .*)$`)
	reDevAny = regexp.MustCompile(`^(DEV (OK|FAIL) pass=(\d+).*|DIRTY pass=(\d+))$`)
)

func expectLine(t *testing.T, s *serialLines, re *regexp.Regexp, want string) {
	t.Helper()
	m := s.waitFor(t, re, 30*time.Second)
	if m[0] != want {
		t.Fatalf("got %q, want %q; output:\n%s", m[0], want, strings.Join(s.all, "\n"))
	}
}

const testMAC = "52:54:00:12:34:56"

// TestQEMUVirtioDevices runs all three checks against QEMU's devices and
// verifies their effects from outside: the disk image's bytes, the frames
// the peer saw, and the screen (QMP screendump) pixel for pixel.
func TestQEMUVirtioDevices(t *testing.T) {
	requireQEMU(t)
	dir := shortTempDir(t)
	img := newImage(t, dir, 1<<20)
	peer := newEchoPeer(t, dir, -1)
	const start, sectors, seed = 3, 300, 11 // 300 sectors: 3 requests of up to 64 KiB
	cmdline := fmt.Sprintf("workload=idle blk_test=1 blk_start=%d blk_sectors=%d blk_seed=%d net_test=1 net_frames=16 net_size=100 gpu_test=1",
		start, sectors, seed)
	args := append(blkArgs(img, ""), peer.args(testMAC)...)
	args = append(args, "-device", "virtio-gpu-device")
	began := time.Now()
	q := startDevices(t, dir, cmdline, args...)
	expectLine(t, q.serial, reBlkID, "BLK ID wasmvmm-test-0123456")
	expectLine(t, q.serial, reBlk, fmt.Sprintf("BLK OK sectors=%d", sectors))
	expectLine(t, q.serial, reNet, "NET OK frames=16")
	expectLine(t, q.serial, reGPU, "GPU OK 1280x800")
	q.serial.waitFor(t, regexp.MustCompile(`^GUEST IDLE$`), 10*time.Second)
	t.Logf("QEMU start to GUEST IDLE: %v", time.Since(began))
	if !strings.Contains(strings.Join(q.serial.all, "\n"), "GUEST INFO net mac="+testMAC+" mrg_rxbuf=1 link=up") {
		t.Errorf("no net info line with mac %s, mrg_rxbuf=1, link=up", testMAC)
	}

	mac, _ := net.ParseMAC(testMAC)
	checkFrames(t, peer.received(), mac, 100, 16)
	checkScreendump(t, q, 1280, 800)
	checkImage(t, img, start, sectors, seed)
}

// TestQEMUVirtioNetNoMergeable: without VIRTIO_NET_F_MRG_RXBUF and with
// full-size frames.
func TestQEMUVirtioNetNoMergeable(t *testing.T) {
	requireQEMU(t)
	dir := shortTempDir(t)
	peer := newEchoPeer(t, dir, -1)
	q := startDevices(t, dir, "workload=idle net_test=1 net_mrg=0 net_frames=40 net_size=1514", peer.args(testMAC)...)
	expectLine(t, q.serial, reNet, "NET OK frames=40")
	if !strings.Contains(strings.Join(q.serial.all, "\n"), " mrg_rxbuf=0 ") {
		t.Errorf("MRG_RXBUF negotiated despite net_mrg=0")
	}
	mac, _ := net.ParseMAC(testMAC)
	checkFrames(t, peer.received(), mac, 1514, 40)
}

// TestQEMUVirtioNetMergedBuffers: 256-byte rx buffers with
// VIRTIO_NET_F_MRG_RXBUF, so every 1514-byte echo (1526 bytes with the
// header) spans 6 buffers (num_buffers = 6) and is reassembled.
func TestQEMUVirtioNetMergedBuffers(t *testing.T) {
	requireQEMU(t)
	dir := shortTempDir(t)
	peer := newEchoPeer(t, dir, -1)
	q := startDevices(t, dir, "workload=idle net_test=1 net_rxbuf=256 net_frames=20 net_size=1514", peer.args(testMAC)...)
	expectLine(t, q.serial, reNet, "NET OK frames=20")
	expectLine(t, q.serial, regexp.MustCompile(`^GUEST INFO net max_num_buffers=.*$`), "GUEST INFO net max_num_buffers=6")
	mac, _ := net.ParseMAC(testMAC)
	checkFrames(t, peer.received(), mac, 1514, 20)

	// Without MRG_RXBUF such buffers are refused.
	dir2 := shortTempDir(t)
	q = startDevices(t, dir2, "workload=idle net_test=1 net_mrg=0 net_rxbuf=256", newEchoPeer(t, dir2, -1).args(testMAC)...)
	expectLine(t, q.serial, reNet, "NET FAIL net_rxbuf without MRG_RXBUF must be 1526..2048: net_rxbuf=0x100")
}

// TestQEMUVirtioGPUSize: the resource follows the display's size.
func TestQEMUVirtioGPUSize(t *testing.T) {
	requireQEMU(t)
	dir := shortTempDir(t)
	q := startDevices(t, dir, "workload=idle gpu_test=1", "-device", "virtio-gpu-device,xres=640,yres=480")
	expectLine(t, q.serial, reGPU, "GPU OK 640x480")
	checkScreendump(t, q, 640, 480)
}

// TestQEMUVirtioPeriodic runs the checks every 3 dirtier passes; the echo
// peer stops answering after 5 frames, so the net check must start failing
// (DEV FAIL) while blk and gpu keep passing. The timeout is not shorter
// because a flush (fdatasync) on a busy host can take hundreds of ms.
func TestQEMUVirtioPeriodic(t *testing.T) {
	requireQEMU(t)
	dir := shortTempDir(t)
	img := newImage(t, dir, 1<<20)
	peer := newEchoPeer(t, dir, 5)
	args := append(blkArgs(img, ""), peer.args(testMAC)...)
	args = append(args, "-device", "virtio-gpu-device,xres=320,yres=200")
	q := startDevices(t, dir, "workload=dirtier dirty_end=20M dev_every=3 blk_test=1 net_test=1 net_frames=2 gpu_test=1 dev_timeout_ms=2000", args...)
	expectLine(t, q.serial, reBlk, "BLK OK sectors=64")
	expectLine(t, q.serial, reNet, "NET OK frames=2")
	expectLine(t, q.serial, reGPU, "GPU OK 320x200")
	// Frames 3, 4, 5 are echoed at passes 3, 6, 9; pass 12 sends frame 6.
	lastDirty := 0
	for want := 3; want <= 15; want += 3 {
		var m []string
		for {
			m = q.serial.waitFor(t, reDevAny, 30*time.Second)
			if m[4] == "" {
				break
			}
			lastDirty, _ = strconv.Atoi(m[4])
		}
		if lastDirty != want {
			t.Fatalf("device check after DIRTY pass=%d, want after pass %d", lastDirty, want)
		}
		// From pass 12 on the net device is failed (and was reset): every
		// later pass reports its first error again.
		line := fmt.Sprintf("DEV OK pass=%d", want)
		if want >= 12 {
			line = fmt.Sprintf("DEV FAIL pass=%d net: no echo of seq=0x6", want)
		}
		if m[0] != line {
			t.Fatalf("got %q, want %q", m[0], line)
		}
	}
	checkScreendump(t, q, 320, 200)
	checkImage(t, img, 0, 64, 0)
}

// TestQEMUVirtioFailures: the FAIL markers for a missing device, a
// read-only disk, a legacy (version 1) transport and an unanswered echo.
func TestQEMUVirtioFailures(t *testing.T) {
	requireQEMU(t)
	t.Run("missing", func(t *testing.T) {
		q := startDevices(t, shortTempDir(t), "workload=idle blk_test=1 net_test=1 gpu_test=1")
		expectLine(t, q.serial, reBlk, "BLK FAIL no virtio-blk device (device id 2)")
		expectLine(t, q.serial, reNet, "NET FAIL no virtio-net device (device id 1)")
		expectLine(t, q.serial, reGPU, "GPU FAIL no virtio-gpu device (device id 16)")
	})
	t.Run("read-only", func(t *testing.T) {
		dir := shortTempDir(t)
		img := newImage(t, dir, 1<<20)
		q := startDevices(t, dir, "workload=idle blk_test=1", blkArgs(img, ",readonly=on")...)
		expectLine(t, q.serial, reBlk, "BLK FAIL device is read-only")
		checkImage(t, img, 0, 0, 0)
	})
	t.Run("beyond-capacity", func(t *testing.T) {
		dir := shortTempDir(t)
		img := newImage(t, dir, 64*SectorSize)
		q := startDevices(t, dir, "workload=idle blk_test=1 blk_start=1", blkArgs(img, "")...)
		expectLine(t, q.serial, reBlk, "BLK FAIL range beyond capacity=0x40")
	})
	t.Run("legacy", func(t *testing.T) {
		dir := shortTempDir(t)
		img := newImage(t, dir, 1<<20)
		args := append(blkArgs(img, ""), "-global", "virtio-mmio.force-legacy=true")
		q := startDevices(t, dir, "workload=idle blk_test=1", args...)
		expectLine(t, q.serial, reBlk, "BLK FAIL not a virtio-mmio version 2 device: version=0x1")
	})
	t.Run("bad-dev-mem", func(t *testing.T) {
		// The DMA area may not overlap the dirtier's range.
		q := startDevices(t, shortTempDir(t), "workload=dirtier blk_test=1 dev_mem=18M dev_mem_size=4M")
		if got := q.serial.panicLine(t); got != "GUEST PANIC devices: dev_mem overlaps the dirtier's range" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("no-echo", func(t *testing.T) {
		dir := shortTempDir(t)
		peer := newEchoPeer(t, dir, 0)
		q := startDevices(t, dir, "workload=idle net_test=1 dev_timeout_ms=300", peer.args(testMAC)...)
		expectLine(t, q.serial, reNet, "NET FAIL no echo of seq=0x1")
	})
}

// TestQEMUVirtioMigration migrates a guest running the periodic device
// checks from one QEMU to another (shared image, the same echo peer) and
// expects the checks to keep passing on the destination: the drivers'
// rings, the device state and the gpu resource survive the migration.
func TestQEMUVirtioMigration(t *testing.T) {
	requireQEMU(t)
	// paced: checks every 5 passes of a 100 MiB/s dirtier (idle devices
	// during most of the migration); busy: a 16-page dirty range and a
	// check after every pass, so the migration almost surely catches
	// requests in flight.
	t.Run("paced", func(t *testing.T) {
		testMigration(t, "workload=dirtier dirty_end=20M dirty_rate_mb=100 marker_every=5 dev_every=5", 5)
	})
	t.Run("busy", func(t *testing.T) {
		testMigration(t, "workload=dirtier dirty_end=0x1010000 marker_every=1000000 dev_every=1", 1)
	})
}

func testMigration(t *testing.T, workload string, every int) {
	dir := shortTempDir(t)
	img := newImage(t, dir, 1<<20)
	peer := newEchoPeer(t, dir, -1)
	cmdline := workload + " blk_test=1 blk_sectors=128 net_test=1 net_frames=2 gpu_test=1"
	devs := func(local string) []string {
		args := append(blkArgs(img, ""), peer.argsAt(local, testMAC)...)
		return append(args, "-device", "virtio-gpu-device,xres=320,yres=200")
	}
	src := startNamed(t, dir, "src", cmdline, devs(filepath.Join(dir, "src-net.sock"))...)
	expectLine(t, src.serial, reBlk, "BLK OK sectors=128")
	expectLine(t, src.serial, reNet, "NET OK frames=2")
	expectLine(t, src.serial, reGPU, "GPU OK 320x200")
	first := fmt.Sprintf("DEV OK pass=%d", every)
	expectLine(t, src.serial, regexp.MustCompile(`^DEV .*pass=`+fmt.Sprint(every)+`\b.*$`), first)
	mig := filepath.Join(dir, "mig.sock")
	dst := startNamed(t, dir, "dst", cmdline, append(devs(filepath.Join(dir, "dst-net.sock")), "-incoming", "unix:"+mig)...)
	waitFile(t, mig)
	began := time.Now()
	if _, err := qmpCommand(src.qmp, "migrate", map[string]any{"uri": "unix:" + mig}); err != nil {
		t.Fatal(err)
	}
	for {
		ret, err := qmpCommand(src.qmp, "query-migrate", nil)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Status   string `json:"status"`
			Downtime int64  `json:"downtime"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			t.Fatal(err)
		}
		if st.Status == "completed" {
			t.Logf("migration completed in %v, downtime %d ms", time.Since(began), st.Downtime)
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" || time.Since(began) > time.Minute {
			t.Fatalf("migration %s: %s", st.Status, ret)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The source stopped after some pass P; the destination goes on with
	// P+1, P+2, ... and its device checks must pass.
	lastSrc := every // seen above
	for _, l := range src.serial.drain() {
		if m := reDevAny.FindStringSubmatch(l); m != nil && m[3] != "" {
			lastSrc, _ = strconv.Atoi(m[3])
		}
	}
	for n := 0; n < 3; {
		m := dst.serial.waitFor(t, reDevAny, 30*time.Second)
		if m[3] == "" {
			continue
		}
		pass, _ := strconv.Atoi(m[3])
		if m[0] != fmt.Sprintf("DEV OK pass=%d", pass) {
			t.Fatalf("destination: %q", m[0])
		}
		if pass%every != 0 {
			t.Fatalf("destination DEV pass=%d, want multiples of %d", pass, every)
		}
		if pass <= lastSrc {
			t.Fatalf("destination DEV pass=%d, the source already reached %d", pass, lastSrc)
		}
		if n == 0 {
			t.Logf("destination: %s (source stopped after DEV pass=%d)", m[0], lastSrc)
		}
		n++
	}
	checkScreendump(t, dst, 320, 200)
	checkImage(t, img, 0, 128, 0)
}

// waitFile waits for a path (a listening socket) to appear.
func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear", path)
}

// drain returns the lines that arrive within 100 ms (everything a stopped
// guest printed), appending them to s.all.
func (s *serialLines) drain() []string {
	var got []string
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return got
			}
			s.all = append(s.all, l)
			got = append(got, l)
		case <-time.After(100 * time.Millisecond):
			return got
		}
	}
}

// panicLine returns the first GUEST PANIC line (within 10 s).
func (s *serialLines) panicLine(t *testing.T) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("serial closed without a panic:\n%s", strings.Join(s.all, "\n"))
			}
			s.all = append(s.all, l)
			if strings.HasPrefix(l, "GUEST PANIC") {
				return l
			}
		case <-deadline:
			t.Fatalf("no GUEST PANIC:\n%s", strings.Join(s.all, "\n"))
		}
	}
}
