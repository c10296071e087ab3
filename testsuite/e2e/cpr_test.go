package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"wasmvmm/testsuite/dirtycheck"
	"wasmvmm/testsuite/guest"
	"wasmvmm/testsuite/harness"
)

// cpr-transfer end to end: real wasmvmm processes, real KVM, the test guest
// with its dirtier and device checks, a tap with an echo peer, a raw disk.

// tapEcho answers the guest's net_test frames on the host side of a tap
// (an AF_PACKET socket on the interface the VMM created).
type tapEcho struct {
	fd     int
	echoed atomic.Int64
}

// newTapEcho waits for the tap ifname to exist, brings it up and echoes
// net_test frames until the test ends.
func newTapEcho(t *testing.T, ifname string) *tapEcho {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat("/sys/class/net/" + ifname); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap %s does not appear", ifname)
		}
		time.Sleep(5 * time.Millisecond)
	}
	os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0o644)
	if out, err := exec.Command("ip", "link", "set", ifname, "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s up: %v %s", ifname, err, out)
	}
	idx, err := ifIndex(ifname)
	if err != nil {
		t.Fatal(err)
	}
	proto := htons(guest.EchoEthertype)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: idx}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	e := &tapEcho{fd: fd}
	t.Cleanup(func() { unix.Close(fd) })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Pkttype == unix.PACKET_OUTGOING || n < 14 {
				continue
			}
			r := guest.EchoReply(buf[:n])
			to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: idx, Halen: 6}
			copy(to.Addr[:], r[0:6])
			if unix.Sendto(fd, r, 0, to) == nil {
				e.echoed.Add(1)
			}
		}
	}()
	return e
}

// cprLogLevel is the wasmvmm log level of these tests (CPR_LOG=info shows
// the switchover phases).
func cprLogLevel() string {
	if l := os.Getenv("CPR_LOG"); l != "" {
		return l
	}
	return "warn"
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func ifIndex(name string) (int, error) {
	b, err := os.ReadFile("/sys/class/net/" + name + "/ifindex")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// fdTarget finds the descriptor of pid whose link starts with prefix and
// returns its path under /proc.
func fdTarget(t *testing.T, pid int, prefix string) string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(l, prefix) {
			return filepath.Join(dir, e.Name())
		}
	}
	t.Fatalf("pid %d has no descriptor %s*", pid, prefix)
	return ""
}

// inodeOf stats what a /proc fd link points to.
func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// tapIn reports whether pid holds a descriptor attached to tap ifname.
func tapIn(pid int, ifname string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l != "/dev/net/tun" {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if strings.Contains(string(info), "iff:\t"+ifname+"\n") {
			return true
		}
	}
	return false
}

// cprSetup is a source process with every device, ready to hand over.
type cprSetup struct {
	b        harness.Build
	dir, cfg string
	img, tap string
	src      *harness.VM
	srcSock  string
	mon      *qmp.SocketMonitor
	events   <-chan qmp.Event
	echo     *tapEcho
	screenW  int
	screenH  int
}

const cprCmdline = " dirty_rate_mb=64 blk_test=1 net_test=1 gpu_test=1 dev_every=2"

func newCPRSetup(t *testing.T) *cprSetup {
	t.Helper()
	harness.RequireKVM(t)
	_, err := exec.LookPath("ip")
	harness.Require(t, err == nil && os.Geteuid() == 0, "cpr-transfer tests need root and iproute2 for a tap")
	s := &cprSetup{b: harness.Artifacts(t), dir: t.TempDir()}
	s.img = scratchImage(t, 16<<20)
	s.tap = fmt.Sprintf("wvcpr%d", os.Getpid()%100000)
	extra := diskExtra(s.img) + fmt.Sprintf("\n[[device]]\nid = \"net0\"\nbackends = { net = %q }\n", "tap:"+s.tap)
	s.cfg = writeConfig(t, s.dir, s.b.Guest, dirtier+cprCmdline, extra)
	s.srcSock = filepath.Join(s.dir, "src.qmp")
	s.src = harness.Start(t, s.b, s.dir, "run", s.cfg, "--share-memory", "--qmp", s.srcSock, "--log-level", cprLogLevel())
	s.echo = newTapEcho(t, s.tap)
	s.src.WaitSerial(t, "DEV OK pass=2\n", 60*time.Second)
	for _, m := range []string{"BLK OK", "NET OK", "GPU OK"} {
		if !strings.Contains(s.src.SerialText(), m) {
			t.Fatalf("source guest: no %q:\n%s", m, s.src.SerialText())
		}
	}
	m := regexp.MustCompile(`GPU OK (\d+)x(\d+)`).FindStringSubmatch(s.src.SerialText())
	s.screenW, _ = strconv.Atoi(m[1])
	s.screenH, _ = strconv.Atoi(m[2])
	s.mon = qmpClient(t, s.srcSock)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s.events = drainEvents(t, ctx, s.mon)
	s.run(t, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}`)
	s.run(t, `{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}`)
	return s
}

func (s *cprSetup) run(t *testing.T, cmd string) ([]byte, error) {
	t.Helper()
	return s.mon.Run([]byte(cmd))
}

func (s *cprSetup) mustRun(t *testing.T, cmd string) {
	t.Helper()
	if out, err := s.run(t, cmd); err != nil {
		t.Fatalf("%s: %v %s", cmd, err, out)
	}
}

func unixChannel(typ, path string) string {
	return fmt.Sprintf(`{"channel-type":%q,"addr":{"transport":"socket","type":"unix","path":%q}}`, typ, path)
}

// migrateCmd is QMP migrate with a main and a cpr channel.
func migrateCmd(mainPath, cprPath string) string {
	return `{"execute":"migrate","arguments":{"channels":[` + unixChannel("main", mainPath) + "," + unixChannel("cpr", cprPath) + `]}}`
}

// startDest starts a new process waiting for a cpr-transfer.
func (s *cprSetup) startDest(t *testing.T, name string, extra ...string) (vm *harness.VM, mainSock, cprSock, qmpSock string) {
	t.Helper()
	mainSock, cprSock, qmpSock = filepath.Join(s.dir, name+"-main.sock"), filepath.Join(s.dir, name+"-cpr.sock"), filepath.Join(s.dir, name+".qmp")
	args := append([]string{"run", s.cfg, "--incoming", "unix:" + mainSock, "--incoming", "cpr,unix:" + cprSock, "--qmp", qmpSock, "--log-level", cprLogLevel()}, extra...)
	vm = harness.Start(t, s.b, s.dir, args...)
	waitSocket(t, cprSock)
	return vm, mainSock, cprSock, qmpSock
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not appear", path)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// screendump saves the display of mon and returns its pixels.
func screendump(t *testing.T, mon *qmp.SocketMonitor, path string) []byte {
	t.Helper()
	if out, err := mon.Run([]byte(`{"execute":"screendump","arguments":{"filename":"` + path + `","format":"ppm"}}`)); err != nil {
		t.Fatalf("screendump: %v %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memfdPattern checks the dirtier's range through the memfd of pid's
// low RAM block.
func memfdPattern(t *testing.T, pid int) dirtycheck.Pattern {
	t.Helper()
	f, err := os.Open(fdTarget(t, pid, "/memfd:wasmvmm:ram-low"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := dirtycheck.Check(f, dirtyStart, dirtyEnd)
	if err != nil {
		t.Fatalf("dirtier pattern in pid %d's RAM: %v", pid, err)
	}
	return p
}

// checkSourceRuns: the source is running, its guest goes on dirtying and
// checking its devices, and it still owns its disk and its tap.
func (s *cprSetup) checkSourceRuns(t *testing.T) {
	t.Helper()
	if st := status(t, s.mon); st != "running" {
		t.Fatalf("source status %s after a failed cpr-transfer", st)
	}
	text := s.src.SerialText()
	n := strings.Count(text, "DEV OK pass=")
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(s.src.SerialText(), "DEV OK pass=") < n+1 {
		if time.Now().After(deadline) {
			t.Fatalf("the source guest stopped checking its devices:\n%s", s.src.SerialText()[len(text):])
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(s.src.SerialText(), "FAIL") {
		t.Fatalf("a device check failed on the source:\n%s", s.src.SerialText())
	}
	if holder := ownerRefused(t, s.img); !strings.Contains(holder, fmt.Sprint(s.src.Cmd.Process.Pid)) {
		t.Fatalf("the source does not own its disk: %s", holder)
	}
	if !tapIn(s.src.Cmd.Process.Pid, s.tap) {
		t.Fatal("the source lost its tap")
	}
}

// TestCPRTransferToANewProcess hands a running guest with every device to
// a new wasmvmm process: no RAM moves (the destination maps the source's
// memfd, same inode), the dirtier goes on exactly, frames keep flowing
// through the same tap, the disk lock passes to the new process, the
// display is identical, and the old process quits cleanly.
func TestCPRTransferToANewProcess(t *testing.T) {
	s := newCPRSetup(t)
	before := screendump(t, s.mon, filepath.Join(s.dir, "before.ppm"))
	dst, mainSock, cprSock, dstQMP := s.startDest(t, "dst")
	if st := status(t, s.mon); st != "running" {
		t.Fatalf("source %s while the destination waits", st)
	}
	s.mustRun(t, migrateCmd(mainSock, cprSock))
	ret := waitMigrationStatus(t, s.mon, "completed", "failed", "cancelled")
	if ret["status"] != "completed" {
		t.Fatalf("cpr-transfer %v: %v", ret["status"], ret["error-desc"])
	}
	expectMigrationEvent(t, s.events, "completed")
	t.Logf("source query-migrate: %v", ret)
	ram, _ := ret["ram"].(map[string]any)
	for _, k := range []string{"normal", "normal-bytes", "duplicate", "transferred"} {
		if v, _ := ram[k].(float64); v != 0 {
			t.Fatalf("query-migrate ram.%s = %v: RAM was sent", k, v)
		}
	}
	if st := status(t, s.mon); st != "postmigrate" {
		t.Fatalf("source %s after cpr-transfer, want postmigrate", st)
	}
	// The source must not touch the guest again: cont (also after a
	// stop), system_reset and another migrate are refused.
	for _, cmd := range []string{`{"execute":"cont"}`, `{"execute":"stop"}`, `{"execute":"cont"}`, `{"execute":"system_reset"}`,
		`{"execute":"migrate","arguments":{"uri":"file:` + filepath.Join(s.dir, "again.bin") + `"}}`} {
		out, err := s.mon.Run([]byte(cmd))
		if cmd == `{"execute":"stop"}` {
			continue
		}
		if err == nil || !strings.Contains(err.Error()+string(out), "handed over") {
			t.Fatalf("%s on the handed-over source: %v %s", cmd, err, out)
		}
	}
	srcPID, dstPID := s.src.Cmd.Process.Pid, dst.Cmd.Process.Pid
	for _, blk := range []string{"/memfd:wasmvmm:ram-low"} {
		a, b := inodeOf(t, fdTarget(t, srcPID, blk)), inodeOf(t, fdTarget(t, dstPID, blk))
		if a != b {
			t.Fatalf("%s: inode %d in the source, %d in the destination", blk, a, b)
		}
		t.Logf("%s: the same memfd (inode %d) in both processes", blk, a)
	}
	if !tapIn(dstPID, s.tap) {
		t.Fatal("the destination does not hold the tap")
	}
	if tapIn(srcPID, s.tap) {
		t.Fatal("the source still holds the tap after handing it over")
	}
	if holder := ownerRefused(t, s.img); !strings.Contains(holder, fmt.Sprint(dstPID)) {
		t.Fatalf("the disk is not the destination's: %s", holder)
	}
	dmon := qmpClient(t, dstQMP)
	// The guest goes on where it was: the next pass and the next device
	// checks (disk pattern, frames through the tap, display) on the new
	// process.
	srcText := s.src.SerialText()
	last := passes(srcText)
	echoed := s.echo.echoed.Load()
	waitStream(t, s.src, dst, last+1, 30*time.Second)
	lastDev := strings.Count(srcText, "DEV OK pass=")
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(dst.SerialText(), "DEV OK pass=") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the destination's device checks do not pass:\n%s", dst.SerialText())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(dst.SerialText(), "FAIL") || strings.Contains(dst.SerialText(), "PANIC") {
		t.Fatalf("the guest failed on the destination:\n%s", dst.SerialText())
	}
	if s.echo.echoed.Load() <= echoed {
		t.Fatal("no frame went through the tap after the hand-over")
	}
	if st := status(t, dmon); st != "running" {
		t.Fatalf("destination %s", st)
	}
	after := screendump(t, dmon, filepath.Join(s.dir, "after.ppm"))
	if string(before) != string(after) {
		t.Fatal("the display differs after the hand-over")
	}
	// Exact memory: stop the guest and read the dirtier's range through
	// the shared memfd.
	if out, err := dmon.Run([]byte(`{"execute":"stop"}`)); err != nil {
		t.Fatalf("stop: %v %s", err, out)
	}
	p := memfdPattern(t, dstPID)
	t.Logf("after the hand-over: %d DEV OK on the source, %d on the destination; %d echoes; pattern %+v",
		lastDev, strings.Count(dst.SerialText(), "DEV OK pass="), s.echo.echoed.Load(), p)
	dret := queryMigrate(t, dmon)
	if dret["status"] != "completed" {
		t.Fatalf("destination query-migrate: %v", dret)
	}
	// The source quits cleanly.
	s.mustRun(t, `{"execute":"quit"}`)
	if code := s.src.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("source exit status %d:\n%s", code, s.src.Stderr.String())
	}
	if holder := ownerRefused(t, s.img); !strings.Contains(holder, fmt.Sprint(dstPID)) {
		t.Fatalf("after the source quit the disk is not the destination's: %s", holder)
	}
	if os.Getenv("CPR_LOG") != "" {
		t.Logf("source log:\n%s\ndestination log:\n%s", s.src.Stderr.String(), dst.Stderr.String())
	}
	if out, err := dmon.Run([]byte(`{"execute":"cont"}`)); err != nil {
		t.Fatalf("cont: %v %s", err, out)
	}
	n := passes(s.src.SerialText() + dst.SerialText())
	waitStream(t, s.src, dst, n+1, 30*time.Second)
}

// expectNoStop fails if the source's guest was stopped since the events
// were last drained (a refusal must come before the pause).
func expectNoStop(t *testing.T, events <-chan qmp.Event) {
	t.Helper()
	for {
		select {
		case e := <-events:
			if e.Event == "STOP" {
				t.Fatal("the source stopped its guest for a cpr-transfer that was refused")
			}
		default:
			return
		}
	}
}

// drain discards buffered events.
func drain(events <-chan qmp.Event) {
	for {
		select {
		case <-events:
		default:
			return
		}
	}
}

// failAndCheck waits for the migration to end with status want, logs why,
// and checks the source is whole.
func (s *cprSetup) failAndCheck(t *testing.T, want, errPart string) {
	t.Helper()
	ret := waitMigrationStatus(t, s.mon, "completed", "failed", "cancelled")
	if ret["status"] != want {
		t.Fatalf("cpr-transfer ended %v (%v), want %s", ret["status"], ret["error-desc"], want)
	}
	desc, _ := ret["error-desc"].(string)
	if want == "failed" && !strings.Contains(desc, errPart) {
		t.Fatalf("error-desc %q does not say %q", desc, errPart)
	}
	t.Logf("%s: %s", want, desc)
	s.checkSourceRuns(t)
}

// fakeCPRDest listens on a cpr socket and, once a source connects, runs
// behave with the connection.
func fakeCPRDest(t *testing.T, path string, behave func(c *os.File)) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd); os.Remove(path) })
	go func() {
		nfd, _, err := unix.Accept(fd)
		if err != nil {
			return
		}
		f := os.NewFile(uintptr(nfd), "cpr-conn")
		defer f.Close()
		behave(f)
	}()
}

// TestCPRTransferFailuresKeepTheSource: every way a cpr-transfer can fail
// leaves the guest running in the source with its RAM, its descriptors and
// its disk; refusals that need no destination come before the guest stops.
func TestCPRTransferFailuresKeepTheSource(t *testing.T) {
	s := newCPRSetup(t)
	mig := filepath.Join(s.dir, "nobody-main.sock")
	t.Run("refused-before-the-pause", func(t *testing.T) {
		drain(s.events)
		for _, c := range []struct{ cmd, want string }{
			{`{"execute":"migrate","arguments":{"uri":"unix:` + mig + `"}}`, "cpr channel"},
			{`{"execute":"migrate","arguments":{"channels":[` + unixChannel("main", mig) + `]}}`, "cpr channel"},
			{`{"execute":"migrate","arguments":{"channels":[` + unixChannel("main", mig) + `,{"channel-type":"cpr","addr":{"transport":"socket","type":"inet","host":"127.0.0.1","port":"4446"}}]}}`, "must be a unix socket"},
		} {
			out, err := s.run(t, c.cmd)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%s: accepted or wrong reason (%v %s), want %q", c.cmd, err, out, c.want)
			}
			t.Logf("refused: %v", err)
		}
		s.mustRun(t, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"multifd","state":true}]}}`)
		if _, err := s.run(t, migrateCmd(mig, filepath.Join(s.dir, "x.sock"))); err == nil || !strings.Contains(err.Error(), "multifd") {
			t.Fatalf("multifd with cpr-transfer: %v", err)
		}
		s.mustRun(t, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"multifd","state":false}]}}`)
		expectNoStop(t, s.events)
		s.checkSourceRuns(t)
	})
	t.Run("wrong-cpr-socket-path", func(t *testing.T) {
		drain(s.events)
		s.mustRun(t, migrateCmd(mig, filepath.Join(s.dir, "no-such-dir", "cpr.sock")))
		s.failAndCheck(t, "failed", "no-such-dir")
		expectNoStop(t, s.events)
	})
	t.Run("destination-dies-while-reading-the-cpr-state", func(t *testing.T) {
		drain(s.events)
		cprSock := filepath.Join(s.dir, "dies-reading.sock")
		fakeCPRDest(t, cprSock, func(c *os.File) {
			b := make([]byte, 9)
			c.Read(b) // magic, version, one list byte: then it dies
		})
		s.mustRun(t, migrateCmd(mig, cprSock))
		s.failAndCheck(t, "failed", "")
		expectNoStop(t, s.events)
	})
	t.Run("destination-dies-after-reading-the-cpr-state", func(t *testing.T) {
		drain(s.events)
		cprSock := filepath.Join(s.dir, "dies-after.sock")
		got := make(chan int, 1)
		fakeCPRDest(t, cprSock, func(c *os.File) {
			n := 0
			buf := make([]byte, 4096)
			oob := make([]byte, unix.CmsgSpace(4*16))
			for {
				k, oobn, _, _, err := unix.Recvmsg(int(c.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
				if k <= 0 || err != nil {
					break
				}
				if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
					for _, m := range msgs {
						fds, _ := unix.ParseUnixRights(&m)
						for _, fd := range fds {
							unix.Close(fd)
							n++
						}
					}
				}
			}
			got <- n // read it all, then dies without listening on main
		})
		s.mustRun(t, migrateCmd(mig, cprSock))
		s.failAndCheck(t, "failed", "does not listen on the main channel")
		if n := <-got; n < 3 {
			t.Fatalf("the fake destination received %d descriptors, want RAM, tap and disk", n)
		}
		expectNoStop(t, s.events)
	})
	t.Run("migrate-cancel-before-the-main-channel", func(t *testing.T) {
		drain(s.events)
		cprSock := filepath.Join(s.dir, "never-hangs-up.sock")
		release := make(chan struct{})
		defer close(release)
		fakeCPRDest(t, cprSock, func(c *os.File) { <-release })
		s.mustRun(t, migrateCmd(mig, cprSock))
		waitMigrationStatus(t, s.mon, "setup")
		time.Sleep(100 * time.Millisecond)
		s.mustRun(t, `{"execute":"migrate_cancel"}`)
		s.failAndCheck(t, "cancelled", "")
		expectNoStop(t, s.events)
	})
	t.Run("incompatible-destination-refuses-in-pre-flight", func(t *testing.T) {
		drain(s.events)
		dst, mainSock, cprSock, _ := s.startDest(t, "old", "--machine", "wasmvmm-virt-1.1")
		s.mustRun(t, migrateCmd(mainSock, cprSock))
		s.failAndCheck(t, "failed", "refused")
		expectNoStop(t, s.events)
		dst.Wait(t, 20*time.Second)
	})
	t.Run("destination-dies-during-the-main-channel", func(t *testing.T) {
		drain(s.events)
		dst, mainSock, cprSock, _ := s.startDest(t, "dies-main")
		s.mustRun(t, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"pause-before-switchover","state":true}]}}`)
		defer s.mustRun(t, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"pause-before-switchover","state":false}]}}`)
		s.mustRun(t, migrateCmd(mainSock, cprSock))
		waitMigrationStatus(t, s.mon, "pre-switchover")
		if st := status(t, s.mon); st != "finish-migrate" {
			t.Fatalf("source %s in pre-switchover", st)
		}
		// Both processes now hold the same open files: RAM, tap, disk.
		srcPID, dstPID := s.src.Cmd.Process.Pid, dst.Cmd.Process.Pid
		for _, what := range []struct{ name, prefix string }{
			{"RAM memfd", "/memfd:wasmvmm:ram-low"}, {"disk image", s.img}, {"tap", "tap:" + s.tap},
		} {
			a, b := fdOf(t, srcPID, what.prefix), fdOf(t, dstPID, what.prefix)
			if !sameOpenFile(srcPID, a, dstPID, b) {
				t.Fatalf("%s: source fd %d and destination fd %d are different open files", what.name, a, b)
			}
		}
		dst.Cmd.Process.Kill()
		dst.Wait(t, 10*time.Second)
		s.mustRun(t, `{"execute":"migrate-continue","arguments":{"state":"pre-switchover"}}`)
		s.failAndCheck(t, "failed", "")
	})
	// RAM intact: the dirtier's pattern in the source's memfd is exact.
	s.mustRun(t, `{"execute":"stop"}`)
	p := memfdPattern(t, s.src.Cmd.Process.Pid)
	s.mustRun(t, `{"execute":"cont"}`)
	t.Logf("source pattern after every failure: %+v", p)
	s.checkSourceRuns(t)
}

// TestCPRTransferNeedsSharedRAM: without --share-memory the RAM blocks
// block mode cpr-transfer (named, with the reason) and only that mode.
func TestCPRTransferNeedsSharedRAM(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, b.Guest, dirtier, "")
	sock := filepath.Join(dir, "qmp.sock")
	vm := harness.Start(t, b, dir, "run", cfg, "--qmp", sock)
	vm.WaitSerial(t, "DIRTY pass=1\n", 20*time.Second)
	mon := qmpClient(t, sock)
	if r := queryMigrate(t, mon); r["blocked-reasons"] != nil {
		t.Fatalf("mode normal is blocked: %v", r["blocked-reasons"])
	}
	if out, err := mon.Run([]byte(`{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}`)); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	r := queryMigrate(t, mon)
	reasons := fmt.Sprint(r["blocked-reasons"])
	if !strings.Contains(reasons, "RAM block ram-low") || !strings.Contains(reasons, "memfd") {
		t.Fatalf("blocked-reasons in mode cpr-transfer: %v", reasons)
	}
	_, err := mon.Run([]byte(migrateCmd(filepath.Join(dir, "m.sock"), filepath.Join(dir, "c.sock"))))
	if err == nil || !strings.Contains(err.Error(), "RAM block ram-low") {
		t.Fatalf("migrate with anonymous RAM: %v", err)
	}
	if st := status(t, mon); st != "running" {
		t.Fatalf("status %s", st)
	}
}

// consoleClient reads a unix-socket console, reconnecting whenever the
// connection ends; lines are recorded with the connection they came on.
type consoleClient struct {
	mu    sync.Mutex
	lines []consoleLine
	conns int
}

type consoleLine struct {
	conn int
	text string
}

func newConsoleClient(t *testing.T, path string) *consoleClient {
	c := &consoleClient{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			conn, err := net.Dial("unix", path)
			if err != nil {
				time.Sleep(2 * time.Millisecond)
				continue
			}
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			c.mu.Lock()
			c.conns++
			n := c.conns
			c.mu.Unlock()
			sc := bufio.NewScanner(conn)
			for sc.Scan() {
				c.mu.Lock()
				c.lines = append(c.lines, consoleLine{n, sc.Text()})
				c.mu.Unlock()
			}
			stop()
			conn.Close()
		}
	}()
	return c
}

// lastPass returns the highest DIRTY pass seen on connection conn (0: any).
func (c *consoleClient) lastPass(conn int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	best := 0
	for _, l := range c.lines {
		var n int
		if (conn == 0 || l.conn == conn) && strings.HasPrefix(l.text, "DIRTY pass=") {
			fmt.Sscanf(l.text, "DIRTY pass=%d", &n)
			best = max(best, n)
		}
	}
	return best
}

func (c *consoleClient) connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns
}

// TestCPRTransferConsoleReconnects: a serial console on a unix socket
// follows the guest: the old process hangs up its client, which reconnects
// to the same path and reads the guest's output from the new process; the
// old process's exit does not remove the new one's socket.
func TestCPRTransferConsoleReconnects(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, b.Guest, dirtier+" dirty_rate_mb=64", "")
	con := filepath.Join(dir, "console.sock")
	// start runs a wasmvmm process; the channel closes when it has exited.
	start := func(args ...string) <-chan struct{} {
		cmd := exec.Command(b.Binary, append(args, "--serial", "unix:"+con, "--plugins", b.PluginDir)...)
		var stderr harness.SyncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("%s stderr:\n%s", args[len(args)-1], stderr.String())
			}
		})
		return done
	}
	srcQMP, dstQMP := filepath.Join(dir, "src.qmp"), filepath.Join(dir, "dst.qmp")
	mainSock, cprSock := filepath.Join(dir, "main.sock"), filepath.Join(dir, "cpr.sock")
	srcExited := start("run", cfg, "--share-memory", "--qmp", srcQMP)
	waitSocket(t, con)
	client := newConsoleClient(t, con)
	deadline := time.Now().Add(30 * time.Second)
	for client.lastPass(1) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no DIRTY pass=2 on the console")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mon := qmpClient(t, srcQMP)
	start("run", cfg, "--incoming", "unix:"+mainSock, "--incoming", "cpr,unix:"+cprSock, "--qmp", dstQMP)
	waitSocket(t, cprSock)
	for _, c := range []string{
		`{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}`,
		migrateCmd(mainSock, cprSock),
	} {
		if out, err := mon.Run([]byte(c)); err != nil {
			t.Fatalf("%s: %v %s", c, err, out)
		}
	}
	if ret := waitMigrationStatus(t, mon, "completed", "failed"); ret["status"] != "completed" {
		t.Fatalf("cpr-transfer: %v", ret)
	}
	before := client.lastPass(1)
	deadline = time.Now().Add(30 * time.Second)
	for client.connections() < 2 || client.lastPass(2) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("the console did not come back: %d connections, last pass %d before, %d after", client.connections(), before, client.lastPass(2))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("console: pass %d on the old process, pass %d on the new one after reconnecting", before, client.lastPass(2))
	if _, err := mon.Run([]byte(`{"execute":"quit"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srcExited:
	case <-time.After(10 * time.Second):
		t.Fatal("the old process does not quit")
	}
	if st, err := os.Stat(con); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the old process removed the new one's console socket: %v", err)
	}
}

// buildSerialV2 builds a version 2 of the serial-16550 plugin from the
// real plugin's source: section "serial" at version 2 with a field added in
// version 2, loading streams from version minVersion on. It returns a
// plugin directory with it and every other plugin of b.
func buildSerialV2(t *testing.T, b harness.Build, minVersion int) string {
	t.Helper()
	root := harness.RepoRoot()
	src, err := os.ReadFile(filepath.Join(root, "plugins", "serial-16550", "serial.go"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	for _, r := range [][2]string{
		{`sdk.Register("serial-16550", "1.0.0"`, `sdk.Register("serial-16550", "2.0.0"`},
		{`sdk.VMState("serial", &st, sdk.Version(1),`, fmt.Sprintf(`sdk.VMState("serial", &st, sdk.Version(2), sdk.MinimumVersion(%d),`, minVersion)},
		{"\tFIFOSaved bool `vmstate:\"fifo_saved\"`\n}", "\tFIFOSaved bool `vmstate:\"fifo_saved\"`\n\t// Upgraded is new in version 2.\n\tUpgraded uint32 `vmstate:\"upgraded,since=2\"`\n}"},
	} {
		if strings.Count(s, r[0]) != 1 {
			t.Fatalf("plugins/serial-16550/serial.go changed: %q is not there once; update this test", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	rel := filepath.Join("testsuite", "e2e", "testdata", fmt.Sprintf("serial-v2-min%d-%d", minVersion, os.Getpid()))
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove(filepath.Dir(dir)) // testdata/, when nothing else is there
	})
	if err := os.WriteFile(filepath.Join(dir, "serial.go"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	ents, err := os.ReadDir(b.PluginDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".wasm") && e.Name() != "serial-16550.wasm" {
			if err := os.Symlink(filepath.Join(b.PluginDir, e.Name()), filepath.Join(out, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-buildvcs=false", "-o", filepath.Join(out, "serial-16550.wasm"), "./"+rel)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build serial-16550 v2: %v\n%s", err, o)
	}
	return out
}

// TestCPRTransferUpgradesAPlugin hands the guest to a process whose
// serial-16550 plugin is a newer version (its section at version 2 with a
// new field): it loads the source's version 1 state and the guest's console
// goes on. A version that cannot load version 1 refuses in the pre-flight,
// before the source stops. The upgrade uses --incoming defer, QEMU's JSON
// channel form and migrate-incoming.
func TestCPRTransferUpgradesAPlugin(t *testing.T) {
	s := newCPRSetup(t)
	refusing := s.b
	refusing.PluginDir = buildSerialV2(t, s.b, 2)
	upgraded := s.b
	upgraded.PluginDir = buildSerialV2(t, s.b, 1)
	t.Run("v2-without-v1-support-refuses-in-pre-flight", func(t *testing.T) {
		drain(s.events)
		mainSock, cprSock := filepath.Join(s.dir, "refuse-main.sock"), filepath.Join(s.dir, "refuse-cpr.sock")
		harness.Start(t, refusing, s.dir, "run", s.cfg, "--incoming", "unix:"+mainSock, "--incoming", "cpr,unix:"+cprSock)
		waitSocket(t, cprSock)
		s.mustRun(t, migrateCmd(mainSock, cprSock))
		s.failAndCheck(t, "failed", `section "serial" instance 0: version 1 on the source is older than this destination's minimum 2`)
		expectNoStop(t, s.events)
	})
	t.Run("v2-loads-v1", func(t *testing.T) {
		drain(s.events)
		mainSock, cprSock, dq := filepath.Join(s.dir, "up-main.sock"), filepath.Join(s.dir, "up-cpr.sock"), filepath.Join(s.dir, "up.qmp")
		dst := harness.Start(t, upgraded, s.dir, "run", s.cfg, "--incoming", "defer", "--incoming", unixChannel("cpr", cprSock), "--qmp", dq)
		waitSocket(t, cprSock)
		s.mustRun(t, migrateCmd(mainSock, cprSock))
		dmon := qmpClient(t, dq)
		if st := status(t, dmon); st != "inmigrate" {
			t.Fatalf("destination %s", st)
		}
		if st := status(t, s.mon); st != "running" {
			t.Fatalf("the source stopped before the main channel: %s", st)
		}
		if out, err := dmon.Run([]byte(`{"execute":"migrate-incoming","arguments":{"channels":[` + unixChannel("main", mainSock) + `]}}`)); err != nil {
			t.Fatalf("migrate-incoming: %v %s", err, out)
		}
		ret := waitMigrationStatus(t, s.mon, "completed", "failed", "cancelled")
		if ret["status"] != "completed" {
			t.Fatalf("cpr-transfer to the upgraded plugin: %v %v", ret["status"], ret["error-desc"])
		}
		last := passes(s.src.SerialText())
		waitStream(t, s.src, dst, last+1, 30*time.Second)
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(dst.SerialText(), "DEV OK pass=") < 1 {
			if time.Now().After(deadline) {
				t.Fatalf("no device check on the upgraded destination:\n%s", dst.SerialText())
			}
			time.Sleep(5 * time.Millisecond)
		}
		if strings.Contains(dst.SerialText(), "FAIL") {
			t.Fatalf("a check failed after the upgrade:\n%s", dst.SerialText())
		}
		t.Logf("the guest's console goes on through serial-16550 2.0.0 from pass %d", last+1)
	})
}

// fdOf returns the descriptor number of pid whose link starts with prefix;
// "tap:NAME" finds the /dev/net/tun descriptor attached to NAME.
func fdOf(t *testing.T, pid int, prefix string) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		n, _ := strconv.Atoi(e.Name())
		if ifname, ok := strings.CutPrefix(prefix, "tap:"); ok {
			info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
			if l == "/dev/net/tun" && strings.Contains(string(info), "iff:\t"+ifname+"\n") {
				return n
			}
			continue
		}
		if strings.HasPrefix(l, prefix) {
			return n
		}
	}
	t.Fatalf("pid %d has no descriptor for %s", pid, prefix)
	return -1
}

// sameOpenFile reports whether fd a of pid p and fd b of pid q are the same
// open file description (kcmp KCMP_FILE).
func sameOpenFile(p, a, q, b int) bool {
	const kcmpFile = 0
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(p), uintptr(q), kcmpFile, uintptr(a), uintptr(b), 0)
	return errno == 0 && r == 0
}
