package e2e

import (
	"bytes"
	"image"
	"image/png"
	"regexp"
	"strconv"

	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"wasmvmm/host/display"

	"github.com/digitalocean/go-qemu/qmp"

	"wasmvmm/testsuite/harness"
)

// qmpClient connects go-qemu's QMP monitor (a client we did not write).
func qmpClient(t *testing.T, path string) *qmp.SocketMonitor {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mon, err := qmp.NewSocketMonitor("unix", path, 5*time.Second)
		if err == nil {
			if err = mon.Connect(); err == nil {
				t.Cleanup(func() { mon.Disconnect() })
				return mon
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP socket %s: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func qmpRun(t *testing.T, mon *qmp.SocketMonitor, cmd string) map[string]any {
	t.Helper()
	out, err := mon.Run([]byte(`{"execute":"` + cmd + `"}`))
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s: %v in %s", cmd, err, out)
	}
	return r
}

func status(t *testing.T, mon *qmp.SocketMonitor) string {
	r := qmpRun(t, mon, "query-status")
	ret, _ := r["return"].(map[string]any)
	s, _ := ret["status"].(string)
	return s
}

func TestQMPDrivesTheVM(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	vm := harness.Start(t, b, dir, "run", writeConfig(t, dir, b.Guest, "workload=dirtier dirty_end=24M", ""), "--qmp", sock)
	vm.WaitSerial(t, "DIRTY pass=1\n", 20*time.Second)
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("QMP socket mode: %v %v", st.Mode(), err)
	}
	mon := qmpClient(t, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := drainEvents(t, ctx, mon)
	if s := status(t, mon); s != "running" {
		t.Fatalf("status %s", s)
	}
	qmpRun(t, mon, "stop")
	if s := status(t, mon); s != "paused" {
		t.Fatalf("status after stop: %s", s)
	}
	expectEvent(t, events, "STOP")
	n := strings.Count(vm.SerialText(), "DIRTY pass=")
	time.Sleep(300 * time.Millisecond)
	if m := strings.Count(vm.SerialText(), "DIRTY pass="); m != n {
		t.Fatalf("guest printed while paused: %d -> %d passes", n, m)
	}
	qmpRun(t, mon, "cont")
	expectEvent(t, events, "RESUME")
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(vm.SerialText(), "DIRTY pass=") <= n {
		if time.Now().After(deadline) {
			t.Fatal("guest did not continue after cont")
		}
		time.Sleep(10 * time.Millisecond)
	}
	qmpRun(t, mon, "system_reset")
	expectEvent(t, events, "RESET")
	deadline = time.Now().Add(20 * time.Second)
	for strings.Count(vm.SerialText(), "WASMVMM-GUEST BOOT") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("guest did not boot again after system_reset")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := status(t, mon); s != "running" {
		t.Fatalf("status after reset: %s", s)
	}
	qmpRun(t, mon, "quit")
	expectEvent(t, events, "SHUTDOWN")
	if code := vm.Wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d after quit", code)
	}
}

func TestQMPSuspendAndWakeup(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	vm := harness.Start(t, b, dir, "run", writeConfig(t, dir, b.Guest, "workload=suspend dirty_end=24M", ""), "--qmp", sock, "-S")
	mon := qmpClient(t, sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := drainEvents(t, ctx, mon)
	if s := status(t, mon); s != "paused" {
		t.Fatalf("status with -S: %s", s)
	}
	qmpRun(t, mon, "cont")
	expectEvent(t, events, "SUSPEND")
	vm.WaitSerial(t, "GUEST SUSPEND", 10*time.Second)
	if s := status(t, mon); s != "suspended" {
		t.Fatalf("status: %s", s)
	}
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(vm.SerialText(), "GUEST RESUMED") {
		t.Fatal("guest ran while suspended")
	}
	// cont does not wake a suspended guest.
	out, err := mon.Run([]byte(`{"execute":"cont"}`))
	if err == nil {
		t.Fatalf("cont on a suspended guest succeeded: %s", out)
	}
	qmpRun(t, mon, "system_wakeup")
	expectEvent(t, events, "WAKEUP")
	vm.WaitSerial(t, "GUEST RESUMED", 10*time.Second)
	if s := status(t, mon); s != "running" {
		t.Fatalf("status after wakeup: %s", s)
	}
}

// drainEvents keeps go-qemu's event stream flowing (its reader blocks on an
// undrained channel, which would also stall command replies) and buffers the
// events for expectEvent.
func drainEvents(t *testing.T, ctx context.Context, mon *qmp.SocketMonitor) <-chan qmp.Event {
	t.Helper()
	in, err := mon.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan qmp.Event, 1024)
	go func() {
		for e := range in {
			select {
			case out <- e:
			default:
			}
		}
	}()
	return out
}

func expectEvent(t *testing.T, events <-chan qmp.Event, name string) qmp.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Event == name {
				if e.Timestamp.Seconds == 0 {
					t.Fatalf("event %s without a timestamp", name)
				}
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event", name)
		}
	}
}

// waitMigration polls query-migrate until the status leaves the running
// states and returns the final answer.
func waitMigration(t *testing.T, mon *qmp.SocketMonitor) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := qmpRun(t, mon, "query-migrate")
		ret, _ := r["return"].(map[string]any)
		switch ret["status"] {
		case "completed", "failed", "cancelled":
			return ret
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %v", ret["status"])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// qmpDirtierSource starts a wasmvmm process running the dirtier with a QMP
// socket, and returns the build, the test's directory, the VM's config,
// the process (two passes done) and a QMP client of it.
func qmpDirtierSource(t *testing.T) (harness.Build, string, string, *harness.VM, *qmp.SocketMonitor) {
	t.Helper()
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "src.sock")
	cfg := writeConfig(t, dir, b.Guest, "workload=dirtier dirty_end=24M", "")
	src := harness.Start(t, b, dir, "run", cfg, "--qmp", sock)
	src.WaitSerial(t, "DIRTY pass=2\n", 20*time.Second)
	return b, dir, cfg, src, qmpClient(t, sock)
}

// checkRestoredProcess waits until the dirtier restored in process dst
// (QMP client dmon) runs, and checks that it goes on from the source's
// pass before.
func checkRestoredProcess(t *testing.T, src, dst *harness.VM, dmon *qmp.SocketMonitor, before int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for passes(dst.SerialText()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("restored guest prints nothing; serial %q", dst.SerialText())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := status(t, dmon); s != "running" {
		t.Fatalf("restored status %s", s)
	}
	if want := fmt.Sprintf("\nDIRTY pass=%d\n", before+1); !strings.Contains(src.SerialText()+dst.SerialText(), want) {
		t.Fatalf("numbering does not continue: %q missing", want)
	}
}

func TestSnapshotThroughQMPAndIncomingProcess(t *testing.T) {
	b, dir, cfg, src, mon := qmpDirtierSource(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := drainEvents(t, ctx, mon)
	snap := filepath.Join(dir, "snap.bin")
	if _, err := mon.Run([]byte(`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Run([]byte(`{"execute":"migrate","arguments":{"uri":"file:` + snap + `"}}`)); err != nil {
		t.Fatal(err)
	}
	info := waitMigration(t, mon)
	if info["status"] != "completed" {
		t.Fatalf("snapshot: %v", info)
	}
	expectEvent(t, events, "STOP")
	if s := status(t, mon); s != "postmigrate" {
		t.Fatalf("source after snapshot: %s", s)
	}
	if st, err := os.Stat(snap); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", st, err)
	}
	before := passes(src.SerialText())

	// analyze reads it.
	code, out := harness.Run(t, b, "analyze", "-d", "state", snap)
	if code != 0 || !strings.Contains(out, `"serial (`) || !strings.Contains(out, `"cpu (`) {
		t.Fatalf("analyze: exit %d\n%.2000s", code, out)
	}

	// A new process restores it and the guest continues.
	dst := harness.Start(t, b, dir, "run", cfg, "--incoming", "file:"+snap, "--qmp", filepath.Join(dir, "dst.sock"))
	dmon := qmpClient(t, filepath.Join(dir, "dst.sock"))
	checkRestoredProcess(t, src, dst, dmon, before)
	// cont resumes the source too (postmigrate -> running).
	qmpRun(t, mon, "cont")
	src.WaitSerial(t, fmt.Sprintf("DIRTY pass=%d\n", before+1), 20*time.Second)

	// A corrupt snapshot: the new process refuses it and exits non-zero.
	bad := filepath.Join(dir, "bad.bin")
	data, _ := os.ReadFile(snap)
	os.WriteFile(bad, data[:len(data)/3], 0o600)
	code, out = harness.Run(t, b, "run", cfg, "--incoming", "file:"+bad, "--plugins", b.PluginDir, "--serial", "null")
	if code == 0 || !strings.Contains(out, "truncated") || !strings.Contains(out, "offset") {
		t.Fatalf("corrupt snapshot: exit %d: %s", code, out)
	}
}

func TestScreendumpShowsTheGuestsTestCard(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	vm := harness.Start(t, b, dir, "run", writeConfig(t, dir, b.Guest, "workload=idle gpu_test=1", ""), "--qmp", sock)
	// Wait for the whole line: the serial file grows byte by byte.
	card := regexp.MustCompile(`GPU OK (\d+)x(\d+)\n`)
	var m []string
	deadline := time.Now().Add(30 * time.Second)
	for m = card.FindStringSubmatch(vm.SerialText()); m == nil; m = card.FindStringSubmatch(vm.SerialText()) {
		if time.Now().After(deadline) {
			t.Fatalf("no complete GPU OK line; serial:\n%s", vm.SerialText())
		}
		time.Sleep(5 * time.Millisecond)
	}
	w, _ := strconv.Atoi(m[1])
	h, _ := strconv.Atoi(m[2])
	mon := qmpClient(t, sock)
	for _, format := range []string{"png", "ppm"} {
		out := filepath.Join(dir, "screen."+format)
		if _, err := mon.Run([]byte(`{"execute":"screendump","arguments":{"filename":"` + out + `","format":"` + format + `"}}`)); err != nil {
			t.Fatal(err)
		}
		img := readScreendump(t, out, format)
		want := display.TestCard(w, h)
		if img.Bounds() != want.Bounds() {
			t.Fatalf("%s: screendump is %v, the guest drew %dx%d", format, img.Bounds(), w, h)
		}
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				r, g, bl, _ := img.At(x, y).RGBA()
				wr, wg, wb, _ := want.At(x, y).RGBA()
				if r != wr || g != wg || bl != wb {
					t.Fatalf("%s: pixel (%d,%d) = %d,%d,%d; the test card has %d,%d,%d", format, x, y, r>>8, g>>8, bl>>8, wr>>8, wg>>8, wb>>8)
				}
			}
		}
	}
	// A device that is not a display is refused with QEMU's error class.
	if _, err := mon.Run([]byte(`{"execute":"screendump","arguments":{"filename":"` + filepath.Join(dir, "x") + `","device":"nosuch"}}`)); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("screendump of a missing device: %v", err)
	}
}

// readScreendump decodes a PNG or a binary PPM.
func readScreendump(t *testing.T, path, format string) image.Image {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if format == "png" {
		img, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	var w, h, max int
	n, err := fmt.Sscanf(string(data), "P6\n%d %d\n%d\n", &w, &h, &max)
	if err != nil || n != 3 || max != 255 {
		t.Fatalf("PPM header: %v", err)
	}
	pix := data[len(data)-w*h*3:]
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < w*h; i++ {
		copy(img.Pix[i*4:], pix[i*3:i*3+3])
		img.Pix[i*4+3] = 255
	}
	return img
}
