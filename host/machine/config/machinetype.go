package config

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"wasmvmm/abi"
)

// MachineType is one versioned machine type from machines/*.toml.
type MachineType struct {
	Path        string          `toml:"-"`
	Name        string          `toml:"name"`        // unique, e.g. "wasmvmm-virt-1.2"
	Family      string          `toml:"family"`      // e.g. "wasmvmm-virt"
	Version     string          `toml:"version"`     // e.g. "1.2"
	Description string          `toml:"description"` // one line for listings
	Arch        string          `toml:"arch"`        // "x86_64", or another for device-state-only types
	NoCPUs      bool            `toml:"no_cpus"`     // device state only: the machine runs no vCPUs
	Next        string          `toml:"next"`        // the next newer version; its compat entries apply here too
	Devices     []MachineDevice `toml:"device"`
	Compat      []CompatEntry   `toml:"compat"`

	// Effective is this version's own compat entries after those of every
	// newer version in the chain (later entries override earlier ones).
	Effective []CompatEntry `toml:"-"`
}

// MachineDevice is a device the machine type instantiates.
type MachineDevice struct {
	ID         string            `toml:"id"`
	Plugin     string            `toml:"plugin"` // plugin (device type) name, e.g. "serial-16550" or "virtio-net@v1"
	MMIO       []uint64          `toml:"mmio"`   // one address per MMIO region, in region order
	PIO        []uint64          `toml:"pio"`    // one port per PIO region
	IRQ        []uint32          `toml:"irq"`    // the device's IRQ lines (GSIs)
	Properties map[string]any    `toml:"properties"`
	Backends   map[string]string `toml:"backends"` // default backends, e.g. console = "null"
}

// CompatEntry overrides one property of every device of a type, as QEMU's
// hw_compat_X_Y arrays do.
type CompatEntry struct {
	Device   string `toml:"device"` // device type (plugin name without version)
	Property string `toml:"property"`
	Value    any    `toml:"value"`
	From     string `toml:"-"` // the machine type file that set it
}

// Catalog holds every machine type of a directory.
type Catalog struct {
	Dir   string
	types map[string]*MachineType
}

// LoadCatalog reads every *.toml in dir, checks each file, and resolves the
// version chains.
func LoadCatalog(dir string) (*Catalog, error) {
	return LoadCatalogFS(os.DirFS(dir), dir)
}

// LoadCatalogFS reads every *.toml at the top of fsys; dir names the
// location in messages.
func LoadCatalogFS(fsys fs.FS, dir string) (*Catalog, error) {
	files, err := fs.Glob(fsys, "*.toml")
	if err != nil {
		return nil, fmt.Errorf("machine types in %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no machine types (*.toml) in %s", dir)
	}
	c := &Catalog{Dir: dir, types: map[string]*MachineType{}}
	for _, f := range files {
		src, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, fmt.Errorf("machine type %s: %w", f, err)
		}
		mt, err := loadMachineType(filepath.Join(dir, f), src)
		if err != nil {
			return nil, err
		}
		if prev, ok := c.types[mt.Name]; ok {
			return nil, fmt.Errorf("%s: machine type %q is also defined in %s", f, mt.Name, prev.Path)
		}
		c.types[mt.Name] = mt
	}
	for _, mt := range c.types {
		if err := c.resolve(mt); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func loadMachineType(path string, src []byte) (*MachineType, error) {
	var mt MachineType
	if err := decodeStrictBytes(path, src, &mt); err != nil {
		return nil, err
	}
	mt.Path = path
	if mt.Name == "" {
		return nil, fmt.Errorf("%s:1: machine type needs a name", path)
	}
	if mt.Arch == "" {
		mt.Arch = "x86_64"
	}
	ids := map[string]bool{}
	for i, d := range mt.Devices {
		switch {
		case d.ID == "":
			return nil, locate(path, src, "device", i, "id", "a [[device]] needs an id")
		case ids[d.ID]:
			return nil, locate(path, src, "device", i, "id", fmt.Sprintf("device id %q appears twice", d.ID))
		case d.Plugin == "":
			return nil, locate(path, src, "device", i, "plugin", fmt.Sprintf("device %q names no plugin", d.ID))
		}
		ids[d.ID] = true
	}
	for i := range mt.Compat {
		e := &mt.Compat[i]
		e.From = path
		if e.Device == "" || e.Property == "" || e.Value == nil {
			return nil, locate(path, src, "compat", i, "device", "a [[compat]] entry needs device, property and value")
		}
	}
	return &mt, nil
}

// resolve computes mt.Effective along the chain of newer versions.
func (c *Catalog) resolve(mt *MachineType) error {
	var chain []*MachineType
	seen := map[string]bool{}
	for cur := mt; cur != nil; {
		if seen[cur.Name] {
			names := make([]string, 0, len(chain)+1)
			for _, m := range chain {
				names = append(names, m.Name)
			}
			return fmt.Errorf("%s: machine type version chain has a cycle: %s -> %s", mt.Path, strings.Join(names, " -> "), cur.Name)
		}
		seen[cur.Name] = true
		chain = append(chain, cur)
		if cur.Next == "" {
			break
		}
		next, ok := c.types[cur.Next]
		if !ok {
			return fmt.Errorf("%s: next = %q: no such machine type in %s", cur.Path, cur.Next, c.Dir)
		}
		cur = next
	}
	mt.Effective = nil
	for i := len(chain) - 1; i >= 0; i-- {
		mt.Effective = append(mt.Effective, chain[i].Compat...)
	}
	return nil
}

// Get returns a machine type by name, or an error listing the known ones.
func (c *Catalog) Get(name string) (*MachineType, error) {
	if mt, ok := c.types[name]; ok {
		return mt, nil
	}
	return nil, fmt.Errorf("unknown machine type %q; known in %s: %s", name, c.Dir, strings.Join(c.Names(), ", "))
}

// Names returns every machine type name, sorted.
func (c *Catalog) Names() []string { return sortedKeys(c.types) }

// PluginType returns the device type of a plugin name: "virtio-net@v1" is of
// type "virtio-net".
func PluginType(plugin string) string {
	t, _, _ := strings.Cut(plugin, "@")
	return t
}

// DescribeFunc returns the declared device info of a plugin.
type DescribeFunc func(plugin string) (*abi.DeviceInfo, error)

// Check verifies every device and compat entry of every machine type against
// the plugins' declarations: unknown plugins, unknown properties and values
// of the wrong type are refused with the file and entry named.
func (c *Catalog) Check(describe DescribeFunc) error {
	for _, name := range c.Names() {
		if err := c.types[name].Check(describe); err != nil {
			return err
		}
	}
	return nil
}

// Check verifies one machine type against the plugins' declarations.
func (mt *MachineType) Check(describe DescribeFunc) error {
	types := map[string]*abi.DeviceInfo{}
	for _, d := range mt.Devices {
		info, err := describe(d.Plugin)
		if err != nil {
			return fmt.Errorf("%s: device %q: %w", mt.Path, d.ID, err)
		}
		types[PluginType(d.Plugin)] = info
		for _, k := range sortedKeys(d.Properties) {
			if _, err := ResolveProperty(info, k, d.Properties[k]); err != nil {
				return fmt.Errorf("%s: device %q: %w", mt.Path, d.ID, err)
			}
		}
	}
	for _, e := range mt.Effective {
		info, ok := types[e.Device]
		if !ok {
			// A compat entry for a device this machine does not place is
			// still checked against the plugin, so typos are caught.
			var err error
			if info, err = describe(e.Device); err != nil {
				return fmt.Errorf("%s: [[compat]] device %q property %q: unknown device: %w", e.From, e.Device, e.Property, err)
			}
		}
		if _, err := ResolveProperty(info, e.Property, e.Value); err != nil {
			return fmt.Errorf("%s: [[compat]] device %q: %w", e.From, e.Device, err)
		}
	}
	return nil
}

// PropertyValue is a resolved property: an integer (bool as 0/1) or a string.
type PropertyValue struct {
	Type abi.PropType
	Int  uint64
	Str  string
}

// ResolveProperty checks a TOML value against a declared property and
// converts it. Integers may be given as TOML integers or as strings with a
// size suffix; bools as true/false.
func ResolveProperty(info *abi.DeviceInfo, name string, v any) (PropertyValue, error) {
	var decl *abi.Property
	for i := range info.Properties {
		if info.Properties[i].Name == name {
			decl = &info.Properties[i]
		}
	}
	if decl == nil {
		names := make([]string, 0, len(info.Properties))
		for _, p := range info.Properties {
			names = append(names, p.Name)
		}
		sort.Strings(names)
		return PropertyValue{}, fmt.Errorf("device type %s has no property %q (it has: %s)", info.Name, name, strings.Join(names, ", "))
	}
	pv := PropertyValue{Type: decl.Type}
	bad := func() (PropertyValue, error) {
		return PropertyValue{}, fmt.Errorf("property %s.%s is %s; %v (%T) does not fit", info.Name, name, decl.Type, v, v)
	}
	switch decl.Type {
	case abi.PropBool:
		b, ok := v.(bool)
		if !ok {
			return bad()
		}
		if b {
			pv.Int = 1
		}
	case abi.PropString:
		s, ok := v.(string)
		if !ok {
			return bad()
		}
		pv.Str = s
	default:
		switch x := v.(type) {
		case int64:
			if x < 0 {
				return bad()
			}
			pv.Int = uint64(x)
		case uint64:
			pv.Int = x
		case int:
			if x < 0 {
				return bad()
			}
			pv.Int = uint64(x)
		case string:
			n, err := ParseSize(x)
			if err != nil {
				return bad()
			}
			pv.Int = n
		default:
			return bad()
		}
		if pv.Int > decl.Type.MaxInt() {
			return bad()
		}
	}
	return pv, nil
}
