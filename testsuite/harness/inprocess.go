package harness

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/machines"
)

// MachineOptions configures an in-process machine.
type MachineOptions struct {
	MachineType string // default: the newest wasmvmm-virt
	Memory      uint64 // default 128 MiB
	CPUs        int
	Cmdline     string
	Kernel      string // default: the test guest
	Share       bool
	NoBoot      bool
	// Devices, when set, replaces the plugin devices (e.g. a native handler
	// for a comparison).
	Devices machine.DeviceFactory
	// Backends attaches backends by device id and name, e.g.
	// {"blk0": {"disk": "/tmp/img"}}.
	Backends map[string]map[string]string
	// Properties sets device properties by device id.
	Properties map[string]map[string]any
	// Incoming opens block images inactive (an incoming migration).
	Incoming bool
}

// InProcess is a machine built in the test process with the real plugins.
type InProcess struct {
	M       *machine.Machine
	Console *SyncBuffer // everything char backends named "console" wrote
	Runtime *plugin.Runtime
}

var (
	rtOnce sync.Once
	rt     *plugin.Runtime
	rtErr  error
)

// Runtime returns a plugin runtime shared by the test process.
func Runtime(t testing.TB) *plugin.Runtime {
	t.Helper()
	rtOnce.Do(func() {
		rt, rtErr = plugin.NewRuntime(context.Background(), plugin.Config{Logger: hclog.NewNullLogger()})
	})
	if rtErr != nil {
		t.Fatal(rtErr)
	}
	return rt
}

// Catalog returns the built-in machine types.
func Catalog(t testing.TB) *config.Catalog {
	t.Helper()
	c, err := config.LoadCatalogFS(machines.FS(), "machines")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewMachine builds a machine in this process from the built-in machine
// types and the real plugins, with every console backend captured.
func NewMachine(t testing.TB, o MachineOptions) *InProcess {
	t.Helper()
	RequireKVM(t)
	b := Artifacts(t)
	cat := Catalog(t)
	if o.MachineType == "" {
		for _, n := range cat.Names() {
			if mt, _ := cat.Get(n); mt.Family == "wasmvmm-virt" && mt.Next == "" {
				o.MachineType = n
			}
		}
	}
	mt, err := cat.Get(o.MachineType)
	if err != nil {
		t.Fatal(err)
	}
	if o.Memory == 0 {
		o.Memory = 128 << 20
	}
	vm := &config.VM{
		Machine: config.MachineSection{Type: mt.Name, Memory: config.Size(o.Memory), CPUs: o.CPUs, ShareMemory: o.Share},
		Boot:    config.BootSection{Kernel: b.Guest, Cmdline: o.Cmdline},
	}
	if o.Kernel != "" {
		vm.Boot.Kernel = o.Kernel
	}
	ids := map[string]bool{}
	for id := range o.Backends {
		ids[id] = true
	}
	for id := range o.Properties {
		ids[id] = true
	}
	for id := range ids {
		vm.Devices = append(vm.Devices, config.DeviceConfig{ID: id, Backends: o.Backends[id], Properties: o.Properties[id]})
	}
	ip := &InProcess{Console: &SyncBuffer{}, Runtime: Runtime(t)}
	devices := o.Devices
	if devices == nil {
		specs, err := machine.DeviceSpecs(mt, vm)
		if err != nil {
			t.Fatal(err)
		}
		loader := &machine.PluginLoader{
			Runtime: ip.Runtime,
			Find:    func(name string) (string, error) { return pluginbuild.Find(name, []string{b.PluginDir}) },
			Backends: func(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
				if name == "console" {
					return backend.NewIO(device+"."+name, nil, ip.Console), nil
				}
				return machine.OpenBackend(device, name, spec, kind, machine.BackendOptions{Incoming: o.Incoming, Owner: "test"})
			},
			Migration: plugin.NewMigrationRegistry(),
			Preserved: plugin.NewFDRegistry(),
			Logger:    hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
		}
		devices = loader.Factory(context.Background(), specs)
	}
	m, err := machine.New(machine.Config{
		VM: vm, MachineType: mt, NoBoot: o.NoBoot, Devices: devices,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ip.M = m
	t.Cleanup(func() { m.Close() })
	return ip
}

// WaitConsole waits until the console output contains marker.
func (ip *InProcess) WaitConsole(t testing.TB, marker string, d time.Duration) {
	t.Helper()
	WaitFor(t, ip.Console, marker, d)
}

// WaitFor waits until buf contains marker.
func WaitFor(t testing.TB, buf *SyncBuffer, marker string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(buf.String(), marker) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v; output:\n%s", marker, d, buf.String())
		}
		time.Sleep(time.Millisecond)
	}
}
