package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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

// netResponder starts an in-process VM whose guest answers every frame
// (net_test=2) on a virtio-net with the backend spec, once it is ready.
func netResponder(t *testing.T, spec string) *harness.InProcess {
	t.Helper()
	peer := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle net_test=2",
		Backends:   map[string]map[string]string{"net0": {"net": spec}},
		Properties: map[string]map[string]any{"net0": {"mac": "52:54:00:00:00:02"}}})
	if err := peer.M.Start(false); err != nil {
		t.Fatal(err)
	}
	peer.WaitConsole(t, "NET RESPONDER READY", 20*time.Second)
	return peer
}

// TestTwoVMsExchangeFramesOverUnixSockets: two VMs, each with the
// virtio-net plugin on one end of a unix socket; one guest sends the echo
// frames, the other guest sends them back.
func TestTwoVMsExchangeFramesOverUnixSockets(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "net.sock")
	peer := netResponder(t, "unix-listen:"+sock)
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

// TestPausedGuestsDevicesHoldStill: the virtio-net device of a paused VM
// takes no frames into guest RAM (devices stop with the VM, as in QEMU, so
// what a migration saves of a stopped guest stays consistent); the frames
// wait in the backend and arrive once the VM resumes.
func TestPausedGuestsDevicesHoldStill(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "net.sock")
	peer := netResponder(t, "unix-listen:"+sock)
	if err := peer.M.Pause(); err != nil {
		t.Fatal(err)
	}
	ram := func() []byte {
		b := make([]byte, peer.M.Memory().Size())
		if _, err := peer.M.Memory().ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := ram()
	vm := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle net_test=1 net_frames=8",
		Backends: map[string]map[string]string{"net0": {"net": "unix-connect:" + sock}}})
	if err := vm.M.Start(false); err != nil {
		t.Fatal(err)
	}
	// The sender boots, sends and resends (every 5/8 s) while the peer is
	// paused.
	time.Sleep(1500 * time.Millisecond)
	after := ram()
	if i := firstDifference(before, after); i >= 0 {
		t.Fatalf("the paused VM's RAM changed at %#x (page %#x)", i, i&^0xfff)
	}
	if strings.Contains(vm.Console.String(), "NET OK") {
		t.Fatalf("the sender got echoes from a paused peer:\n%s", vm.Console.String())
	}
	if err := peer.M.Resume(); err != nil {
		t.Fatal(err)
	}
	vm.WaitConsole(t, "NET OK frames=8", 30*time.Second)
}

// firstDifference is the first offset where a and b differ, or -1.
func firstDifference(a, b []byte) int {
	for i := 0; i < len(a); i += 4096 {
		end := min(i+4096, len(a))
		if !bytes.Equal(a[i:end], b[i:end]) {
			for j := i; j < end; j++ {
				if a[j] != b[j] {
					return j
				}
			}
		}
	}
	return -1
}

// TestDiscoveryListsEveryPlacedVirtioDevice: the DSDT in guest memory has
// one LNRO0005 device per placed virtio-mmio device, with its window, and
// the command line names the same windows.
func TestDiscoveryListsEveryPlacedVirtioDevice(t *testing.T) {
	img := scratchImage(t, 16<<20)
	ip := harness.NewMachine(t, harness.MachineOptions{Cmdline: "workload=idle",
		Backends: map[string]map[string]string{"blk0": {"disk": img}, "net0": {"net": "discard"}}})
	if err := ip.M.Start(false); err != nil {
		t.Fatal(err)
	}
	ip.WaitConsole(t, "GUEST IDLE", 10*time.Second)
	if err := ip.M.Pause(); err != nil {
		t.Fatal(err)
	}
	// The ACPI tables live at 0xe0000..0x100000; find the DSDT by signature.
	low := make([]byte, 0x20000)
	if _, err := ip.M.Memory().ReadAt(low, 0xe0000); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(low, []byte("DSDT"))
	if i < 0 {
		t.Fatal("no DSDT below 1 MiB")
	}
	n := int(binary.LittleEndian.Uint32(low[i+4:]))
	dsdt := low[i : i+n]
	if got := bytes.Count(dsdt, []byte("LNRO0005")); got != 3 {
		t.Fatalf("DSDT has %d LNRO0005 devices, want 3 (net, blk, gpu)", got)
	}
	for _, base := range []uint32{0xd0000000, 0xd0000200, 0xd0000400} {
		var le [4]byte
		binary.LittleEndian.PutUint32(le[:], base)
		if !bytes.Contains(dsdt, le[:]) {
			t.Errorf("DSDT lacks the window at %#x", base)
		}
		if !strings.Contains(ip.Console.String(), fmt.Sprintf("512@%#x:", base)) {
			t.Errorf("command line lacks the window at %#x", base)
		}
	}
}
