package vmstate

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"wasmvmm/abi"
)

// Store is the byte store a device's schema offsets point into: a plugin
// instance's linear memory, or a ByteStore for host-side state. Integers are
// little endian in the store.
type Store interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// Sizer is implemented by stores that know their size; Register then checks
// every field lies inside the store.
type Sizer interface {
	Size() int64
}

// ByteStore is a Store over a fixed byte slice, for host-side state: the
// host encodes its Go structs into it before saving and decodes them after
// loading.
type ByteStore []byte

// ReadAt copies from the store (io.ReaderAt).
func (s ByteStore) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(s)) || int64(len(p)) > int64(len(s))-off {
		return 0, fmt.Errorf("byte store: read [%#x, +%#x) outside %#x bytes", off, len(p), len(s))
	}
	return copy(p, s[off:]), nil
}

// WriteAt copies into the store (io.WriterAt).
func (s ByteStore) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(s)) || int64(len(p)) > int64(len(s))-off {
		return 0, fmt.Errorf("byte store: write [%#x, +%#x) outside %#x bytes", off, len(p), len(s))
	}
	return copy(s[off:], p), nil
}

// Size returns the store's size.
func (s ByteStore) Size() int64 { return int64(len(s)) }

// Hooks are a device's callbacks around save and load. For a plugin they
// call dev_pre_save, dev_post_load and dev_subsection_needed.
type Hooks interface {
	// PreSave runs before the device's fields are read for saving.
	PreSave() error
	// PostLoad runs after the loaded state was written to the store, with
	// the version the section was loaded at.
	PostLoad(version uint32) error
	// SubsectionNeeded says whether the subsection with this NeededID is
	// sent.
	SubsectionNeeded(neededID int32) bool
}

// ChangeCounter is implemented by Hooks whose device can tell that nothing
// touched its state: StateChanges returns a count that moves whenever the
// store's bytes, or the answers PreSave and SubsectionNeeded would give,
// may have changed. Running the save hooks themselves must not move it
// unless they consulted something outside the store. A plugin instance
// implements it (plugin.Instance.StateChanges). The registry then reuses a
// section body saved ahead of time (Registry.SaveAhead) while the count
// stands still, so the pause does not pay for it again.
type ChangeCounter interface {
	StateChanges() uint64
}

// Device registers one piece of migratable state.
type Device struct {
	// Name is the section idstr; empty means Schema.Name.
	Name string
	// InstanceID tells instances of the same Name apart; abi.InstanceAny
	// takes the next free id for Name.
	InstanceID int32
	// Schema describes the fields; offsets point into Store.
	Schema *abi.Section
	// Store holds the state bytes.
	Store Store
	// Props holds the property values that property-gated fields test
	// (bool as 0 or 1). A field gated on a property missing here is a
	// registration error.
	Props map[string]uint64
	// Hooks may be nil: no hooks, and every subsection is sent.
	Hooks Hooks
}

// entry is a registered device with its compiled schema.
type entry struct {
	dev       Device // Name and InstanceID resolved
	sectionID uint32
	plan      *plan
	saved     *savedBody // the last body encoded, for a ChangeCounter device
}

// savedBody is a device's section body as last encoded, with the device's
// change count, read before and found unchanged after the encoding.
type savedBody struct {
	changes uint64
	body    []byte
	st      *sectionState
}

// Registry is the set of devices of a machine, in registration order.
// It is not safe for concurrent use.
type Registry struct {
	entries       []*entry
	nextSectionID uint32
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{nextSectionID: RAMSectionID + 1} }

// Register validates d's schema against its store and properties and adds
// it. It returns the instance id, resolved when d.InstanceID is
// abi.InstanceAny (one above the highest id taken for that name). A
// duplicate (name, instance) is an error.
func (r *Registry) Register(d Device) (int32, error) {
	if d.Schema == nil {
		return 0, errors.New("vmstate register: no schema")
	}
	if d.Name == "" {
		d.Name = d.Schema.Name
	}
	if d.Name == "" || len(d.Name) > 255 {
		return 0, fmt.Errorf("vmstate register: section name %q must have 1 to 255 bytes", d.Name)
	}
	if d.Name == RAMSectionName || d.Name == configurationName {
		return 0, fmt.Errorf("vmstate register %s: name is reserved", d.Name)
	}
	if d.Store == nil {
		return 0, fmt.Errorf("vmstate register %s: no store", d.Name)
	}
	var memSize uint64
	if s, ok := d.Store.(Sizer); ok {
		if s.Size() <= 0 {
			return 0, fmt.Errorf("vmstate register %s: store is empty", d.Name)
		}
		memSize = uint64(s.Size())
	}
	if err := d.Schema.Validate(memSize); err != nil {
		return 0, fmt.Errorf("vmstate register %s: %w", d.Name, err)
	}
	if d.InstanceID < 0 && d.InstanceID != abi.InstanceAny {
		return 0, fmt.Errorf("vmstate register %s: invalid instance id %d", d.Name, d.InstanceID)
	}
	if d.InstanceID == abi.InstanceAny {
		next := int32(0)
		for _, e := range r.entries {
			if e.dev.Name == d.Name && e.dev.InstanceID >= next {
				next = e.dev.InstanceID + 1
			}
		}
		if next < 0 {
			return 0, fmt.Errorf("vmstate register %s: instance ids exhausted", d.Name)
		}
		d.InstanceID = next
	} else if r.lookup(d.Name, uint32(d.InstanceID)) != nil {
		return 0, fmt.Errorf("vmstate register %s: instance %d is already registered", d.Name, d.InstanceID)
	}
	p, err := compile(d.Schema, d.Schema.Name, d.Props, true)
	if err != nil {
		return 0, fmt.Errorf("vmstate register %s: %w", d.Name, err)
	}
	if p.maxState() > MaxDeviceStateLen {
		return 0, fmt.Errorf("vmstate register %s: state of %d bytes exceeds %d", d.Name, p.maxState(), MaxDeviceStateLen)
	}
	r.entries = append(r.entries, &entry{dev: d, sectionID: r.nextSectionID, plan: p})
	r.nextSectionID++
	return d.InstanceID, nil
}

// Unregister removes a device; it reports whether it was registered.
func (r *Registry) Unregister(name string, instanceID int32) bool {
	for i, e := range r.entries {
		if e.dev.Name == name && e.dev.InstanceID == instanceID {
			r.entries = append(r.entries[:i], r.entries[i+1:]...)
			return true
		}
	}
	return false
}

// SaveAhead encodes, while the guest still runs, every device whose hooks
// count its changes (ChangeCounter), and keeps each body for the next save
// (Writer.Complete), which sends it again without running the device's
// hooks if the device's count has not moved since. It takes the device
// work out of a migration's pause for devices the guest leaves alone in
// between. Their PreSave hooks run now, on a live device: the ABI allows
// that (dev_pre_save must leave the device able to run on). An error
// keeps nothing for that device and is returned after the others were
// tried; the next save runs its hooks again and reports what it finds.
func (r *Registry) SaveAhead() error {
	var errs []error
	var scratch []byte
	for _, e := range r.entries {
		if _, ok := e.dev.Hooks.(ChangeCounter); !ok {
			continue
		}
		var err error
		if scratch, _, err = e.encodeDevice(scratch[:0]); err != nil {
			errs = append(errs, fmt.Errorf("save %s (instance %d) ahead: %w", e.dev.Name, e.dev.InstanceID, err))
		}
	}
	return errors.Join(errs...)
}

// Devices returns the registered devices in registration order, with their
// names and instance ids resolved.
func (r *Registry) Devices() []Device {
	out := make([]Device, len(r.entries))
	for i, e := range r.entries {
		out[i] = e.dev
	}
	return out
}

func (r *Registry) lookup(name string, instanceID uint32) *entry {
	for _, e := range r.entries {
		if e.dev.Name == name && uint32(e.dev.InstanceID) == instanceID {
			return e
		}
	}
	return nil
}

// plan is a section compiled for one device: property conditions evaluated,
// subsection wire names resolved, sizes precomputed.
type plan struct {
	sec      *abi.Section
	wireName string // vmsd name on the wire and in the vmdesc
	fields   []planField
	subs     []*plan
}

type planField struct {
	f        *abi.Field
	propOK   bool  // the existence condition holds (or there is none)
	nested   *plan // element layout of a struct field
	compress bool  // the vmdesc describes the array by its first element
	elemWire int64 // wire bytes of one element (structs: at the nested version)
}

// exists says whether the field is on the wire at a section version.
func (pf *planField) exists(version uint32) bool {
	return pf.propOK && pf.f.VersionID <= version
}

// wireSize returns the bytes the section's own fields take on the wire at a
// version (subsections excluded).
func (p *plan) wireSize(version uint32) int64 {
	var n int64
	for i := range p.fields {
		pf := &p.fields[i]
		if pf.exists(version) {
			n += pf.elemWire * int64(pf.f.Count)
		}
	}
	return n
}

// maxState bounds the bytes a section and its subsections can write.
func (p *plan) maxState() int64 {
	var n int64
	for i := range p.fields {
		n += int64(p.fields[i].f.Size) * int64(p.fields[i].f.Count)
	}
	for _, s := range p.subs {
		n += s.maxState()
	}
	return n
}

func compile(s *abi.Section, wireName string, props map[string]uint64, top bool) (*plan, error) {
	p := &plan{sec: s, wireName: wireName}
	for i := range s.Fields {
		f := &s.Fields[i]
		pf := planField{f: f, propOK: true, compress: f.Exists == nil}
		if f.Exists != nil {
			v, ok := props[f.Exists.Prop]
			if !ok {
				return nil, fmt.Errorf("field %s.%s is gated on property %q, which the device does not have", s.Name, f.Name, f.Exists.Prop)
			}
			pf.propOK = f.Exists.Holds(v)
		}
		if f.Type == abi.FieldStruct {
			n, err := compile(f.Struct, f.Struct.Name, props, false)
			if err != nil {
				return nil, err
			}
			pf.nested = n
			pf.elemWire = n.wireSize(f.Struct.VersionID)
			for j := range n.fields {
				if !n.fields[j].compress {
					pf.compress = false
				}
			}
		} else {
			pf.elemWire = int64(f.Size)
		}
		p.fields = append(p.fields, pf)
	}
	if !top && len(s.Subsections) > 0 {
		return nil, fmt.Errorf("nested struct %s cannot have subsections", s.Name)
	}
	seen := map[string]bool{}
	for i := range s.Subsections {
		sub := &s.Subsections[i]
		name := subsectionWireName(wireName, sub.Name)
		if len(name) > 255 {
			return nil, fmt.Errorf("subsection name %q is longer than 255 bytes", name)
		}
		if seen[name] {
			return nil, fmt.Errorf("subsection %q declared twice", name)
		}
		seen[name] = true
		sp, err := compile(sub, name, props, true)
		if err != nil {
			return nil, err
		}
		p.subs = append(p.subs, sp)
	}
	return p, nil
}

// subsectionWireName gives a subsection the name QEMU requires on the wire:
// its parent's name, a slash, and its own (unless it already starts so).
func subsectionWireName(parent, sub string) string {
	if strings.HasPrefix(sub, parent+"/") {
		return sub
	}
	return parent + "/" + sub
}

// sortedNames returns the names of a set, sorted, for messages.
func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
