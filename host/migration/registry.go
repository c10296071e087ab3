package migration

import (
	"fmt"

	"wasmvmm/host/machine"
	"wasmvmm/host/plugin"
	"wasmvmm/host/vmstate"
)

// pluginStore is a plugin instance's linear memory as a vmstate store.
type pluginStore struct{ i *plugin.Instance }

func (s pluginStore) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > 1<<32 {
		return 0, fmt.Errorf("plugin memory offset %d out of range", off)
	}
	b, err := s.i.ReadMemory(uint32(off), uint32(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, b), nil
}

func (s pluginStore) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > 1<<32 {
		return 0, fmt.Errorf("plugin memory offset %d out of range", off)
	}
	if err := s.i.WriteMemory(uint32(off), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Size reports the plugin's memory size (vmstate.Sizer).
func (s pluginStore) Size() int64 { return int64(s.i.MemorySize()) }

// pluginHooks calls the plugin's dev_pre_save, dev_post_load and
// dev_subsection_needed.
type pluginHooks struct{ i *plugin.Instance }

func (h pluginHooks) PreSave() error                 { return h.i.PreSave() }
func (h pluginHooks) PostLoad(version uint32) error  { return h.i.PostLoad(version) }
func (h pluginHooks) SubsectionNeeded(id int32) bool { return h.i.SubsectionNeeded(id) }

// StateChanges lets the registry reuse a body saved ahead
// (vmstate.ChangeCounter).
func (h pluginHooks) StateChanges() uint64 { return h.i.StateChanges() }

// instanceOf returns the plugin instance behind a machine device, if any.
func instanceOf(d machine.Device) *plugin.Instance {
	if pd, ok := d.(*machine.PluginDevice); ok {
		return pd.Instance
	}
	return nil
}

// buildRegistry registers the host sections and every plugin device's
// sections, in a fixed order (host state first, then devices in machine
// order), so source and destination number them alike.
func buildRegistry(m *machine.Machine, host *hostState) (*vmstate.Registry, error) {
	reg := vmstate.NewRegistry()
	for _, d := range host.devices {
		if _, err := reg.Register(d); err != nil {
			return nil, err
		}
	}
	for _, d := range m.Devices() {
		inst := instanceOf(d)
		if inst == nil {
			continue
		}
		props := map[string]uint64{}
		for name, v := range inst.Properties() {
			props[name] = v.Int
		}
		for _, sec := range inst.Sections() {
			dev := vmstate.Device{
				Name: sec.Name, InstanceID: sec.InstanceID, Schema: sec,
				Store: pluginStore{inst}, Props: props, Hooks: pluginHooks{inst},
			}
			if _, err := reg.Register(dev); err != nil {
				return nil, fmt.Errorf("device %s: %w", d.ID(), err)
			}
		}
	}
	return reg, nil
}

// machineRegistry builds the host sections for m's vCPUs and the registry
// of every section m migrates.
func machineRegistry(m *machine.Machine) (*hostState, *vmstate.Registry, error) {
	host, err := newHostState(len(m.VCPUs()))
	if err != nil {
		return nil, nil, err
	}
	reg, err := buildRegistry(m, host)
	if err != nil {
		return nil, nil, err
	}
	return host, reg, nil
}
