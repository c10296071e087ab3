package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/testsuite/harness"
)

// TestCPRTransferKeepsAUnixNetLink hands a guest whose virtio-net is linked
// to another VM by a unix socket to a new process, with the guest on either
// end of the link: the new process listens on the same path (taking it over
// from the source) or connects to the peer, and the guest's frames go on
// flowing to the peer VM after the hand-over.
func TestCPRTransferKeepsAUnixNetLink(t *testing.T) {
	harness.RequireKVM(t)
	for _, guestEnd := range []string{"connect", "listen"} {
		t.Run(guestEnd, func(t *testing.T) {
			b := harness.Artifacts(t)
			dir := t.TempDir()
			sock := filepath.Join(dir, "link.sock")
			peerEnd := map[string]string{"connect": "unix-listen:", "listen": "unix-connect:"}[guestEnd]
			// The peer VM (in this process) answers every frame.
			peer := netResponder(t, peerEnd+sock)

			extra := fmt.Sprintf("\n[[device]]\nid = \"net0\"\nbackends = { net = %q }\n", "unix-"+guestEnd+":"+sock)
			cfg := writeConfig(t, dir, b.Guest, dirtier+" dirty_rate_mb=64 net_test=1 dev_every=2", extra)
			srcQMP := filepath.Join(dir, "src.qmp")
			src := harness.Start(t, b, dir, "run", cfg, "--share-memory", "--qmp", srcQMP, "--log-level", cprLogLevel())
			src.WaitSerial(t, "DEV OK pass=2\n", 60*time.Second)
			if !strings.Contains(src.SerialText(), "NET OK") {
				t.Fatalf("source guest: no NET OK:\n%s", src.SerialText())
			}
			mon := qmpClient(t, srcQMP)
			if out, err := mon.Run([]byte(`{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}`)); err != nil {
				t.Fatalf("%v %s", err, out)
			}
			mainSock, cprSock := filepath.Join(dir, "main.sock"), filepath.Join(dir, "cpr.sock")
			dst := harness.Start(t, b, dir, "run", cfg, "--incoming", "unix:"+mainSock, "--incoming", "cpr,unix:"+cprSock,
				"--log-level", cprLogLevel())
			waitSocket(t, cprSock)
			if out, err := mon.Run([]byte(migrateCmd(mainSock, cprSock))); err != nil {
				t.Fatalf("migrate: %v %s", err, out)
			}
			if ret := waitMigrationStatus(t, mon, "completed", "failed", "cancelled"); ret["status"] != "completed" {
				t.Fatalf("cpr-transfer %v: %v", ret["status"], ret["error-desc"])
			}
			// Two more rounds of device checks (each sends frames to the
			// peer and waits for every echo) on the new process.
			deadline := time.Now().Add(60 * time.Second)
			for strings.Count(dst.SerialText(), "DEV OK pass=") < 2 {
				if time.Now().After(deadline) || strings.Contains(dst.SerialText(), "FAIL") {
					t.Fatalf("the guest's net checks do not pass after the hand-over:\n%s", dst.SerialText())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if strings.Contains(dst.SerialText(), "FAIL") || strings.Contains(peer.Console.String(), "FAIL") {
				t.Fatalf("net failure after the hand-over:\n%s\n%s", dst.SerialText(), peer.Console.String())
			}
			if _, err := mon.Run([]byte(`{"execute":"quit"}`)); err != nil {
				t.Fatal(err)
			}
			if code := src.Wait(t, 20*time.Second); code != 0 {
				t.Fatalf("source exit status %d", code)
			}
		})
	}
}
