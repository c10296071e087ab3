package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/blockdev"
	"wasmvmm/testsuite/harness"
)

// scratchImage creates a sparse raw image of size bytes.
func scratchImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestDiskAttachedAndOwned(t *testing.T) {
	img := scratchImage(t, 64<<20)
	ip := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle", Backends: map[string]map[string]string{"blk0": {"disk": img}}})
	if err := ip.M.Start(false); err != nil {
		t.Fatal(err)
	}
	ip.WaitConsole(t, "GUEST IDLE", 10*time.Second)
	out := ip.Console.String()
	if !strings.Contains(out, "512@0xd0000200:6") {
		t.Fatalf("the guest was not told about the disk:\n%s", out)
	}
	// A second VMM cannot open the image read-write while this one owns it.
	_, err := blockdev.Open(img, blockdev.Options{Owner: "second vmm"})
	if !errors.Is(err, blockdev.ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("second owner: %v", err)
	}
}

func TestDeviceWithNoBackendIsLeftOut(t *testing.T) {
	ip := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle"})
	if err := ip.M.Start(false); err != nil {
		t.Fatal(err)
	}
	ip.WaitConsole(t, "GUEST IDLE", 10*time.Second)
	out := ip.Console.String()
	// The GPU needs no backend; the NIC and the disk have none attached.
	if !strings.Contains(out, "512@0xd0000400:7") || strings.Contains(out, "0xd0000000") || strings.Contains(out, "0xd0000200") {
		t.Fatalf("devices without a backend were placed:\n%s", out)
	}
}

// TestTwoVMsExchangeFramesOverUnixSockets: two VMs, each with the
// virtio-net plugin on one end of a unix socket; one guest sends the echo
// frames, the other guest sends them back.
func TestTwoVMsExchangeFramesOverUnixSockets(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "net.sock")
	peer := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle net_test=2",
		Backends:   map[string]map[string]string{"net0": {"net": "unix-listen:" + sock}},
		Properties: map[string]map[string]any{"net0": {"mac": "52:54:00:00:00:02"}}})
	if err := peer.M.Start(false); err != nil {
		t.Fatal(err)
	}
	peer.WaitConsole(t, "NET RESPONDER READY", 20*time.Second)
	vm := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle net_test=1 net_frames=32",
		Backends: map[string]map[string]string{"net0": {"net": "unix-connect:" + sock}}})
	if err := vm.M.Start(false); err != nil {
		t.Fatal(err)
	}
	vm.WaitConsole(t, "NET OK frames=32", 30*time.Second)
	if strings.Contains(vm.Console.String(), "NET FAIL") || strings.Contains(peer.Console.String(), "NET FAIL") {
		t.Fatalf("net failure:\n%s\n%s", vm.Console.String(), peer.Console.String())
	}
}
