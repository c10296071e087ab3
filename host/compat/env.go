package compat

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/migration"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/host/vmstate"
)

// PluginSet is a release's choice of plugin builds: which plugin (possibly
// a kept older or newer major version, "virtio-net@v2") serves each device
// type a machine type names. Device types it does not list use the plugin
// the machine type names.
type PluginSet struct {
	Name string            // e.g. "r1", "r2"
	Use  map[string]string // device type -> plugin name
}

// Resolve returns the plugin this set loads for a plugin name of a machine
// type: "virtio-net" is "virtio-net@v2" in a set that says so.
func (s PluginSet) Resolve(plugin string) string {
	if p, ok := s.Use[config.PluginType(plugin)]; ok {
		return p
	}
	return plugin
}

// String lists the set's choices.
func (s PluginSet) String() string {
	if len(s.Use) == 0 {
		return s.Name + " (machine type plugins)"
	}
	var parts []string
	for _, k := range sortedKeys(s.Use) {
		parts = append(parts, k+"="+s.Use[k])
	}
	return s.Name + " (" + strings.Join(parts, ", ") + ")"
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Env loads plugins and builds machines for checks: one plugin runtime, a
// plugin search path, and a cache of each plugin file's declaration.
type Env struct {
	Runtime    *plugin.Runtime
	PluginDirs []string
	Logger     hclog.Logger // nil: discard
	KVMPath    string       // default /dev/kvm

	mu    sync.Mutex
	infos map[string]*abi.DeviceInfo // by .wasm path
}

func (e *Env) logger() hclog.Logger {
	if e.Logger == nil {
		return hclog.NewNullLogger()
	}
	return e.Logger
}

// nullHost serves a plugin instance that is only described: no memory, no
// interrupts, no backends.
type nullHost struct{ clock plugin.Clock }

func (nullHost) Memory() *guestmem.Memory { return nil }
func (nullHost) SetIRQ(int, bool) error {
	return errors.New("a described plugin has no interrupt lines")
}
func (h nullHost) Clock() plugin.Clock { return h.clock }
func (nullHost) Backend(abi.BackendKind, string) (plugin.Backend, error) {
	return nil, plugin.ErrNoBackend
}

// Describe returns the device declaration (name, version, properties) of a
// plugin, instantiating it once per plugin file.
func (e *Env) Describe(ctx context.Context, name string) (*abi.DeviceInfo, error) {
	path, err := pluginbuild.Find(name, e.PluginDirs)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	info, ok := e.infos[path]
	e.mu.Unlock()
	if ok {
		return info, nil
	}
	mod, err := e.Runtime.Load(ctx, path)
	if err != nil {
		return nil, err
	}
	inst, err := mod.Instantiate(ctx, plugin.InstanceConfig{Name: "describe-" + name, Host: nullHost{clock: plugin.NewVMClock(false)}, Logger: e.logger()})
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	info = inst.Info()
	if cerr := inst.Close(); cerr != nil {
		e.logger().Warn("closing a described plugin", "plugin", name, "error", cerr)
	}
	e.mu.Lock()
	if e.infos == nil {
		e.infos = map[string]*abi.DeviceInfo{}
	}
	e.infos[path] = info
	e.mu.Unlock()
	return info, nil
}

// describeFunc adapts Describe to config.DescribeFunc for a plugin set.
func (e *Env) describeFunc(ctx context.Context, set PluginSet) config.DescribeFunc {
	return func(name string) (*abi.DeviceInfo, error) {
		return e.Describe(ctx, set.Resolve(name))
	}
}

// CheckMachineType refuses a machine type that names a plugin, a property
// or a compat entry the plugins of set do not declare.
func (e *Env) CheckMachineType(ctx context.Context, mt *config.MachineType, set PluginSet) error {
	return mt.Check(e.describeFunc(ctx, set))
}

// CheckCatalog checks every machine type of c against the plugins of set.
func (e *Env) CheckCatalog(ctx context.Context, c *config.Catalog, set PluginSet) error {
	return c.Check(e.describeFunc(ctx, set))
}

// MachineOptions configure a machine built for a check.
type MachineOptions struct {
	Set PluginSet
	// Memory is guest RAM (default 4 MiB: device state only).
	Memory uint64
	// ScratchDir holds disk images made for devices whose backend the
	// machine type leaves to the VM configuration (required when the
	// machine type has such a disk).
	ScratchDir string
	// Properties are VM-configuration overrides by device id.
	Properties map[string]map[string]any
	// Incoming opens block images inactive (the machine will load a
	// migration).
	Incoming bool
}

// Machine is a machine built for a check: every device the machine type
// places is present, with inert backends where the VM configuration would
// attach real ones (net: discard, disk: a scratch image, char: null).
type Machine struct {
	M         *machine.Machine
	Type      *config.MachineType
	Set       PluginSet
	Migration *plugin.MigrationRegistry
}

// Close releases the machine.
func (m *Machine) Close() error { return m.M.Close() }

// ScratchDiskSize is the size of the disk images made for checks.
const ScratchDiskSize = 1 << 20

// NewMachine builds machine type mt with the plugins of o.Set. The machine
// boots nothing: it is for device state (vCPUs are created, never run). A
// machine that is not Incoming is started paused; an Incoming one waits
// for StartIncoming (LoadFile and Migrate call it).
func (e *Env) NewMachine(ctx context.Context, mt *config.MachineType, o MachineOptions) (*Machine, error) {
	if err := e.CheckMachineType(ctx, mt, o.Set); err != nil {
		return nil, err
	}
	if o.Memory == 0 {
		o.Memory = 4 << 20
	}
	vm := &config.VM{Machine: config.MachineSection{Type: mt.Name, Memory: config.Size(o.Memory), CPUs: 1}}
	for _, d := range mt.Devices {
		dc := config.DeviceConfig{ID: d.ID, Backends: map[string]string{}, Properties: o.Properties[d.ID]}
		for name, spec := range d.Backends {
			if spec != machine.BackendNone {
				continue
			}
			switch name {
			case "net":
				dc.Backends[name] = "discard"
			case "disk":
				if o.ScratchDir == "" {
					return nil, fmt.Errorf("machine type %s: device %s needs a disk image: no scratch directory", mt.Name, d.ID)
				}
				img, err := os.CreateTemp(o.ScratchDir, d.ID+"-*.img")
				if err != nil {
					return nil, fmt.Errorf("scratch disk for %s: %w", d.ID, err)
				}
				err = img.Truncate(ScratchDiskSize)
				if cerr := img.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return nil, fmt.Errorf("scratch disk for %s: %w", d.ID, err)
				}
				dc.Backends[name] = filepath.Clean(img.Name())
			default:
				dc.Backends[name] = "null"
			}
		}
		vm.Devices = append(vm.Devices, dc)
	}
	for id := range o.Properties {
		found := false
		for _, d := range mt.Devices {
			found = found || d.ID == id
		}
		if !found {
			return nil, fmt.Errorf("machine type %s has no device %q", mt.Name, id)
		}
	}
	specs, err := machine.DeviceSpecs(mt, vm)
	if err != nil {
		return nil, err
	}
	migReg := plugin.NewMigrationRegistry()
	loader := &machine.PluginLoader{
		Runtime: e.Runtime,
		Find: func(name string) (string, error) {
			return pluginbuild.Find(o.Set.Resolve(name), e.PluginDirs)
		},
		Backends: func(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
			return machine.OpenBackend(device, name, spec, kind, machine.BackendOptions{Incoming: o.Incoming, Owner: "compat check"})
		},
		Migration: migReg,
		Preserved: plugin.NewFDRegistry(),
		Logger:    e.logger(),
	}
	m, err := machine.New(machine.Config{
		VM: vm, MachineType: mt, KVMPath: e.KVMPath, Logger: e.logger(),
		Devices: loader.Factory(ctx, specs), NoBoot: true,
	})
	if err != nil {
		return nil, fmt.Errorf("machine type %s with plugin set %s: %w", mt.Name, o.Set.Name, err)
	}
	if !o.Incoming {
		// vCPU threads parked (QEMU's -S): a migration can stop them.
		if err := m.Start(true); err != nil {
			m.Close()
			return nil, err
		}
	}
	return &Machine{M: m, Type: mt, Set: o.Set, Migration: migReg}, nil
}

// Registry returns the vmstate registry a migration of the machine uses.
func (m *Machine) Registry() (*vmstate.Registry, error) { return migration.Registry(m.M) }

// Device returns the plugin device with an id.
func (m *Machine) Device(id string) (*machine.PluginDevice, error) {
	for _, d := range m.M.Devices() {
		if pd, ok := d.(*machine.PluginDevice); ok && pd.ID() == id {
			return pd, nil
		}
	}
	return nil, fmt.Errorf("machine type %s has no plugin device %q", m.Type.Name, id)
}

// DumpVMState builds machine type mt with the plugins of o.Set and returns
// its dump-vmstate JSON: every section, host and device, as the machine
// type's properties make it.
func (e *Env) DumpVMState(ctx context.Context, mt *config.MachineType, o MachineOptions) ([]byte, error) {
	if o.ScratchDir == "" {
		dir, err := os.MkdirTemp("", "wasmvmm-dump-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		o.ScratchDir = dir
	}
	m, err := e.NewMachine(ctx, mt, o)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	reg, err := m.Registry()
	if err != nil {
		return nil, err
	}
	return vmstate.DumpVMState(mt.Name, reg)
}
