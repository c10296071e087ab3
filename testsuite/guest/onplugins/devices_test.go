package onplugins

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/display"
	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/netdev"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/testsuite/guest"
	"wasmvmm/testsuite/harness"
)

// The devices are the machine type's net0, blk0 and gpu0.
const (
	testMAC = "52:54:00:12:34:56" // virtio-net's default mac property
	gpuW    = 800                 // not the plugin's (or the guest's fallback) 1024x768
	gpuH    = 600
)

var (
	buildOnce sync.Once
	pluginDir string
	guestELF  string
	buildErr  error
)

// artifacts builds the four plugins and the guest once per process.
func artifacts(t *testing.T) (plugins, elf string) {
	t.Helper()
	buildOnce.Do(func() {
		root := harness.RepoRoot()
		if pluginDir, buildErr = pluginbuild.DefaultOutDir(root); buildErr != nil {
			return
		}
		if _, buildErr = pluginbuild.Build(context.Background(), root, pluginDir,
			"serial-16550", "virtio-blk", "virtio-net", "virtio-gpu"); buildErr != nil {
			return
		}
		guestELF, buildErr = guest.Build(root)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return pluginDir, guestELF
}

// echoPeer listens on a SOCK_SEQPACKET socket for the net backend
// (netdev.ConnectUnix) and sends every frame back with the MACs swapped.
type echoPeer struct {
	path   string
	mu     sync.Mutex
	frames [][]byte
}

func newEchoPeer(t *testing.T, dir string) *echoPeer {
	t.Helper()
	p := &echoPeer{path: filepath.Join(dir, "net.sock")}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: p.path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	conns.Add(1)
	go func() {
		defer conns.Done()
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		go func() { <-t.Context().Done(); c.Close() }()
		buf := make([]byte, 65536)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			f := append([]byte(nil), buf[:n]...)
			p.mu.Lock()
			p.frames = append(p.frames, f)
			p.mu.Unlock()
			if _, err := c.Write(guest.EchoReply(f)); err != nil {
				return
			}
		}
	}()
	return p
}

func (p *echoPeer) received() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.frames...)
}

type pluginVM struct {
	m       *machine.Machine
	console *harness.SyncBuffer
}

// start assembles and starts a machine of the newest wasmvmm-virt type with
// blk0 on img, net0 connected to peer and gpu0 (the machine type places
// all three).
func start(t *testing.T, cmdline, img string, peer *echoPeer) *pluginVM {
	t.Helper()
	harness.RequireKVM(t)
	plugins, elf := artifacts(t)
	cat := harness.Catalog(t)
	var mt *config.MachineType
	for _, n := range cat.Names() {
		if c, _ := cat.Get(n); c.Family == "wasmvmm-virt" && c.Next == "" {
			mt = c
		}
	}
	if mt == nil {
		t.Fatal("no wasmvmm-virt machine type")
	}
	vm := &config.VM{
		Machine: config.MachineSection{Type: mt.Name, Memory: config.Size(128 << 20)},
		Boot:    config.BootSection{Kernel: elf, Cmdline: cmdline},
		Devices: []config.DeviceConfig{
			{ID: "blk0", Backends: map[string]string{"disk": img}},
			{ID: "net0", Backends: map[string]string{"net": "peer"}},
			{ID: "gpu0", Properties: map[string]any{"xres": int64(gpuW), "yres": int64(gpuH)}},
		},
	}
	specs, err := machine.DeviceSpecs(mt, vm)
	if err != nil {
		t.Fatal(err)
	}
	v := &pluginVM{console: &harness.SyncBuffer{}}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
	loader := &machine.PluginLoader{
		Runtime: harness.Runtime(t),
		Find:    func(name string) (string, error) { return pluginbuild.Find(name, []string{plugins}) },
		Backends: func(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
			switch {
			case name == "console":
				return backend.NewIO(device+"."+name, nil, v.console), nil
			case device == "net0" && name == "net":
				return netdev.ConnectUnix(peer.path)
			}
			return machine.OpenBackend(device, name, spec, kind, machine.BackendOptions{Owner: "test"})
		},
		Migration: plugin.NewMigrationRegistry(),
		Preserved: plugin.NewFDRegistry(),
		Logger:    logger,
	}
	v.m, err = machine.New(machine.Config{VM: vm, MachineType: mt, Devices: loader.Factory(context.Background(), specs), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.m.Close() })
	if err := v.m.Start(false); err != nil {
		t.Fatal(err)
	}
	return v
}

// wait waits for a console line matching re and returns it.
func (v *pluginVM) wait(t *testing.T, re *regexp.Regexp, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		out := v.console.String()
		if strings.Contains(out, "GUEST PANIC") {
			t.Fatalf("guest panicked:\n%s", out)
		}
		lines := strings.Split(out, "\n")
		for _, l := range lines[:len(lines)-1] { // complete lines only
			if re.MatchString(l) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v:\n%s", re, d, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (v *pluginVM) expect(t *testing.T, re, want string) {
	t.Helper()
	if got := v.wait(t, regexp.MustCompile(re), 30*time.Second); got != want {
		t.Fatalf("got %q, want %q; console:\n%s", got, want, v.console.String())
	}
}

// checkScanout reads scanout 0 of gpu0 through host/display and compares
// it with the test card.
func (v *pluginVM) checkScanout(t *testing.T, w, h int) {
	t.Helper()
	for _, d := range v.m.Devices() {
		pd, ok := d.(*machine.PluginDevice)
		if !ok || pd.ID() != "gpu0" {
			continue
		}
		img, err := display.Capture(pd.Instance, 0)
		if err != nil {
			t.Fatal(err)
		}
		if gw, gh := img.Bounds().Dx(), img.Bounds().Dy(); gw != w || gh != h {
			t.Fatalf("scanout %dx%d, want %dx%d", gw, gh, w, h)
		}
		err = guest.CheckTestCard(w, h, func(x, y int) (r, g, b byte) {
			c := img.NRGBAAt(x, y)
			return c.R, c.G, c.B
		})
		if err != nil {
			t.Fatalf("scanout: %v", err)
		}
		return
	}
	t.Fatal("no gpu0 plugin device")
}

func newImage(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	return path
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "onpl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestPluginDevicesBoot: blk, net and gpu checks at boot on the plugins.
func TestPluginDevicesBoot(t *testing.T) {
	dir := shortDir(t)
	img := newImage(t, dir)
	peer := newEchoPeer(t, dir)
	v := start(t, "workload=idle blk_test=1 blk_start=5 blk_sectors=300 blk_seed=9 net_test=1 net_frames=16 net_size=200 gpu_test=1", img, peer)
	v.expect(t, `^BLK (OK|FAIL)`, "BLK OK sectors=300")
	v.expect(t, `^NET (OK|FAIL)`, "NET OK frames=16")
	v.expect(t, `^GPU (OK|FAIL)`, "GPU OK 800x600")
	v.wait(t, regexp.MustCompile(`^GUEST IDLE$`), 10*time.Second)
	if err := guest.CheckImage(img, 5, 300, 9); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(testMAC)
	if n, err := guest.CheckEchoFrames(peer.received(), mac, 200); err != nil || n != 16 {
		t.Fatalf("peer got %d distinct frames, want 16: %v", n, err)
	}
	v.checkScanout(t, gpuW, gpuH)
}

// TestPluginDevicesPeriodic: the periodic checks while the dirtier runs,
// with 256-byte merged receive buffers (each 1514-byte echo spans 6).
func TestPluginDevicesPeriodic(t *testing.T) {
	dir := shortDir(t)
	img := newImage(t, dir)
	peer := newEchoPeer(t, dir)
	v := start(t, "workload=dirtier dirty_end=20M marker_every=5 dev_every=5 blk_test=1 net_test=1 net_frames=4 net_size=1514 net_rxbuf=256 gpu_test=1", img, peer)
	v.expect(t, `^NET (OK|FAIL)`, "NET OK frames=4")
	v.expect(t, `^GUEST INFO net max_num_buffers=`, "GUEST INFO net max_num_buffers=6")
	v.wait(t, regexp.MustCompile(`^DEV OK pass=50$`), 60*time.Second)
	if fails := regexp.MustCompile(`(?m)^DEV FAIL.*$`).FindAllString(v.console.String(), -1); len(fails) > 0 {
		t.Fatalf("device checks failed: %q", fails)
	}
	// Frames 1-4 at boot, then one per check.
	mac, _ := net.ParseMAC(testMAC)
	if n, err := guest.CheckEchoFrames(peer.received(), mac, 1514); err != nil || n < 4+10 {
		t.Fatalf("peer got %d distinct frames, want at least 14 (4 at boot, one per check): %v", n, err)
	}
	v.checkScanout(t, gpuW, gpuH)
	if err := guest.CheckImage(img, 0, 64, 0); err != nil {
		t.Fatal(err)
	}
}
