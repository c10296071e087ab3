package machine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
)

// BackendOpener opens the backend a device's configuration names: spec is the
// configured value (e.g. "stdio", "null", "file:/tmp/log", "unix:/tmp/s").
type BackendOpener func(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error)

// PluginLoader creates a machine's devices from plugins.
type PluginLoader struct {
	Runtime   *plugin.Runtime
	Find      func(plugin string) (string, error) // plugin name -> .wasm path
	Backends  BackendOpener
	Migration *plugin.MigrationRegistry
	Preserved *plugin.FDRegistry
	Logger    hclog.Logger

	mu      sync.Mutex
	modules map[string]*moduleLoad // by plugin name
}

// moduleLoad is a module being compiled (or loaded from the cache).
type moduleLoad struct {
	done chan struct{}
	mod  *plugin.Module
	err  error
}

// Preload starts finding and compiling the plugins of specs in the
// background, one goroutine each, so compilation overlaps with creating the
// VM and RAM; Factory waits for them.
func (l *PluginLoader) Preload(ctx context.Context, specs []DeviceSpec) {
	for _, s := range specs {
		if !s.Absent() {
			l.module(ctx, s.Plugin)
		}
	}
}

// module returns the (possibly still running) load of a plugin.
func (l *PluginLoader) module(ctx context.Context, name string) *moduleLoad {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.modules == nil {
		l.modules = map[string]*moduleLoad{}
	}
	if ml, ok := l.modules[name]; ok {
		return ml
	}
	ml := &moduleLoad{done: make(chan struct{})}
	l.modules[name] = ml
	go func() {
		defer close(ml.done)
		path, err := l.Find(name)
		if err != nil {
			ml.err = err
			return
		}
		ml.mod, ml.err = l.Runtime.Load(ctx, path)
	}()
	return ml
}

// DeviceSpec is one device after merging the machine type and the VM
// configuration.
type DeviceSpec struct {
	ID       string
	Plugin   string
	MMIO     []uint64
	PIO      []uint64
	IRQ      []uint32
	Layers   []plugin.PropertyValues // machine type, compat, user
	Backends map[string]string
}

// DeviceSpecs merges the machine type's devices with the VM configuration's
// adjustments and additions. Unknown ids without a plugin are refused.
func DeviceSpecs(mt *config.MachineType, vm *config.VM) ([]DeviceSpec, error) {
	var specs []DeviceSpec
	index := map[string]int{}
	for _, d := range mt.Devices {
		compat := plugin.PropertyValues{}
		for _, e := range mt.Effective {
			if e.Device == config.PluginType(d.Plugin) {
				compat[e.Property] = e.Value
			}
		}
		index[d.ID] = len(specs)
		specs = append(specs, DeviceSpec{
			ID: d.ID, Plugin: d.Plugin, MMIO: d.MMIO, PIO: d.PIO, IRQ: d.IRQ,
			Layers:   []plugin.PropertyValues{plugin.PropertyValues(d.Properties), compat},
			Backends: copyMap(d.Backends),
		})
	}
	for _, d := range vm.Devices {
		i, ok := index[d.ID]
		if !ok {
			if d.Plugin == "" {
				return nil, fmt.Errorf("%s: device %q is not in machine type %s and names no plugin", vm.Path, d.ID, mt.Name)
			}
			index[d.ID] = len(specs)
			specs = append(specs, DeviceSpec{ID: d.ID, Plugin: d.Plugin, MMIO: d.MMIO, PIO: d.PIO, IRQ: d.IRQ, Backends: map[string]string{}})
			i = len(specs) - 1
		} else if d.Plugin != "" && d.Plugin != specs[i].Plugin {
			return nil, fmt.Errorf("%s: device %q: machine type %s fixes its plugin to %s", vm.Path, d.ID, mt.Name, specs[i].Plugin)
		} else if len(d.MMIO)+len(d.PIO)+len(d.IRQ) > 0 {
			return nil, fmt.Errorf("%s: device %q: machine type %s places it; its mmio, pio and irq cannot be changed", vm.Path, d.ID, mt.Name)
		}
		s := &specs[i]
		if d.Properties != nil {
			s.Layers = append(s.Layers, plugin.PropertyValues(d.Properties))
		}
		for k, v := range d.Backends {
			s.Backends[k] = v
		}
	}
	return specs, nil
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Factory returns the DeviceFactory that instantiates specs.
func (l *PluginLoader) Factory(ctx context.Context, specs []DeviceSpec) DeviceFactory {
	return func(m *Machine) ([]Device, error) {
		var devs []Device
		for _, s := range specs {
			if s.Absent() {
				continue
			}
			d, err := l.create(ctx, m, s)
			if err != nil {
				for _, d := range devs {
					d.Close()
				}
				return nil, fmt.Errorf("device %s (%s): %w", s.ID, s.Plugin, err)
			}
			devs = append(devs, d)
		}
		return devs, nil
	}
}

func (l *PluginLoader) create(ctx context.Context, m *Machine, s DeviceSpec) (Device, error) {
	ml := l.module(ctx, s.Plugin)
	<-ml.done
	if ml.err != nil {
		return nil, ml.err
	}
	mod := ml.mod
	log := l.Logger
	if log == nil {
		log = m.log
	}
	d := &PluginDevice{spec: s, m: m, backends: map[string]plugin.Backend{}, open: l.Backends}
	inst, err := mod.Instantiate(ctx, plugin.InstanceConfig{
		Name: s.ID, Host: d, Logger: log.Named(s.ID), Migration: l.Migration, Preserved: l.Preserved,
	})
	if err != nil {
		return nil, err
	}
	d.Instance = inst
	if err := inst.Realize(s.Layers...); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.place(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// PluginDevice is a plugin instance placed on the machine's buses.
type PluginDevice struct {
	*plugin.Instance
	spec     DeviceSpec
	m        *Machine
	open     BackendOpener
	backends map[string]plugin.Backend
}

// ID returns the device id from the machine type or VM configuration.
func (d *PluginDevice) ID() string { return d.spec.ID }

// Spec returns how the device was configured.
func (d *PluginDevice) Spec() DeviceSpec { return d.spec }

// Reset resets the device; a failed device stays failed.
func (d *PluginDevice) Reset() {
	if err := d.Instance.Reset(); err != nil {
		d.m.log.Warn("device reset failed", "device", d.spec.ID, "error", err)
	}
}

// Close closes the instance and the backends it opened.
func (d *PluginDevice) Close() error {
	var errs []error
	if d.Instance != nil {
		errs = append(errs, d.Instance.Close())
	}
	for _, b := range d.backends {
		if c, ok := b.(interface{ Close() error }); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// place puts each region the plugin added at the address the machine type
// gives for it.
func (d *PluginDevice) place() error {
	var nMMIO, nPIO int
	for id, r := range d.Regions() {
		switch r.Kind {
		case abi.RegionMMIO:
			if nMMIO >= len(d.spec.MMIO) {
				return fmt.Errorf("the plugin adds MMIO region %d but the machine type gives %d MMIO address(es)", nMMIO, len(d.spec.MMIO))
			}
			if err := d.m.MMIO.Add(d.spec.MMIO[nMMIO], r.Size, d.spec.ID, mmioAdapter{d.Instance}, id); err != nil {
				return err
			}
			nMMIO++
		case abi.RegionPIO:
			if nPIO >= len(d.spec.PIO) {
				return fmt.Errorf("the plugin adds PIO region %d but the machine type gives %d port(s)", nPIO, len(d.spec.PIO))
			}
			if err := d.m.PIO.Add(d.spec.PIO[nPIO], r.Size, d.spec.ID, pioAdapter{d.Instance}, id); err != nil {
				return err
			}
			nPIO++
		}
	}
	if nMMIO != len(d.spec.MMIO) || nPIO != len(d.spec.PIO) {
		return fmt.Errorf("the machine type gives %d MMIO and %d PIO addresses; the plugin added %d and %d regions", len(d.spec.MMIO), len(d.spec.PIO), nMMIO, nPIO)
	}
	return nil
}

// Memory implements plugin.Host.
func (d *PluginDevice) Memory() *guestmem.Memory { return d.m.mem }

// SetIRQ implements plugin.Host: line indexes the device's IRQ list.
func (d *PluginDevice) SetIRQ(line int, level bool) error {
	if line < 0 || line >= len(d.spec.IRQ) {
		return fmt.Errorf("device %s has %d IRQ line(s); line %d does not exist", d.spec.ID, len(d.spec.IRQ), line)
	}
	return d.m.SetIRQ(d.spec.IRQ[line], level)
}

// Clock implements plugin.Host.
func (d *PluginDevice) Clock() plugin.Clock { return d.m.Clock }

// Backend implements plugin.Host: the backend configured under name.
func (d *PluginDevice) Backend(kind abi.BackendKind, name string) (plugin.Backend, error) {
	if b, ok := d.backends[name]; ok {
		return b, nil
	}
	spec, ok := d.spec.Backends[name]
	if !ok {
		names := make([]string, 0, len(d.spec.Backends))
		for n := range d.spec.Backends {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("%w: device %s has no backend %q configured (configured: %s)", plugin.ErrNoBackend, d.spec.ID, name, strings.Join(names, ", "))
	}
	if d.open == nil {
		return nil, fmt.Errorf("device %s: no backend opener for %q", d.spec.ID, spec)
	}
	b, err := d.open(d.spec.ID, name, spec, kind)
	if err != nil {
		return nil, err
	}
	d.backends[name] = b
	return b, nil
}

type mmioAdapter struct{ i *plugin.Instance }

func (a mmioAdapter) Read(region int, off uint64, size int) uint64 {
	return a.i.MMIORead(region, off, size)
}

func (a mmioAdapter) Write(region int, off uint64, size int, v uint64) {
	a.i.MMIOWrite(region, off, size, v)
}

type pioAdapter struct{ i *plugin.Instance }

func (a pioAdapter) Read(region int, off uint64, size int) uint64 {
	return uint64(a.i.PIORead(region, uint32(off), size))
}

func (a pioAdapter) Write(region int, off uint64, size int, v uint64) {
	a.i.PIOWrite(region, uint32(off), size, uint32(v))
}
