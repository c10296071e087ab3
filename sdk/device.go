package sdk

import (
	"reflect"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

// Device is the part every device implements. A plugin registers one
// Device from an init function with Register.
type Device interface {
	// Realize runs once after the host resolved the properties: the device
	// adds its regions, opens its backends and declares its vmstate (VMState).
	// Returning an error fails the device's creation; the error is logged.
	Realize(r *Realizer) error
	// Reset returns the device to its power-on state (system reset).
	Reset()
}

// Optional interfaces, detected by type assertion on the registered Device.
// Without one, the SDK answers the host's call itself: reads return all
// ones, writes and events are dropped, and the first such call is logged.
type (
	// MMIODevice handles accesses to the device's MMIO regions. offset is
	// relative to the region; size is 1, 2, 4 or 8.
	MMIODevice interface {
		MMIORead(region Region, offset uint64, size int) uint64
		MMIOWrite(region Region, offset uint64, size int, value uint64)
	}
	// PIODevice handles accesses to the device's port I/O regions.
	PIODevice interface {
		PIORead(region Region, offset uint32, size int) uint32
		PIOWrite(region Region, offset uint32, size int, value uint32)
	}
	// TimerHandler runs when an armed Timer's deadline passed.
	TimerHandler interface {
		TimerFired(t Timer)
	}
	// BackendHandler runs while a watched backend has watched events.
	BackendHandler interface {
		BackendReady(b *Backend, events abi.BackendEvent)
	}
	// PreSaver runs before the host reads the device's vmstate. It may run
	// while the guest runs (the host saves ahead of a migration's pause), so
	// it must leave the device able to run on, and be idempotent.
	PreSaver interface {
		PreSave() error
	}
	// PostLoader runs after the host wrote loaded vmstate into the device's
	// memory; versionID is the version of the loaded section.
	PostLoader interface {
		PostLoad(versionID uint32) error
	}
	// Idler runs when the host has nothing else for the device.
	Idler interface {
		Idle()
	}
	// MigrationHandler receives subscribed migration events (see
	// SubscribeMigration); an error at abi.MigrationSetup vetoes the
	// migration.
	MigrationHandler interface {
		MigrationEvent(event abi.MigrationEvent, mode abi.MigrationMode) error
	}
)

// Region is the id of a region the device added, in call order per device.
type Region int32

// Realizer carries the calls allowed only while the device is realized.
type Realizer struct {
	done bool
}

// AddMMIO adds an MMIO region of size bytes; the machine type places it.
func (r *Realizer) AddMMIO(size uint64) (Region, error) {
	return r.addRegion(abi.RegionMMIO, size)
}

// AddPIO adds a port I/O region of size ports; the machine type places it.
func (r *Realizer) AddPIO(size uint64) (Region, error) {
	return r.addRegion(abi.RegionPIO, size)
}

func (r *Realizer) addRegion(kind abi.RegionKind, size uint64) (Region, error) {
	if r.done {
		return -1, tinyfmt.Errorf("add region: %w", abi.ErrState)
	}
	id := hostRegionAdd(int32(kind), size)
	if id < 0 {
		return -1, tinyfmt.Errorf("add region of %d bytes: %w", size, statusError(int64(id)))
	}
	return Region(id), nil
}

// registry is the plugin's one device and everything it declared. A
// plugin instance holds exactly one device, so this is the one piece of
// package state the SDK keeps: the exports the host calls are package-level
// functions and reach the device through it.
type registry struct {
	name, version string
	dev           Device
	regErr        error
	props         []property
	sections      []*Section
	needed        []func() bool
	backends      []*Backend
	realized      bool
	warned        map[string]bool
}

var plugin registry

// Register names the plugin's device type and version (semver) and
// registers its implementation. Call it once, from an init function.
func Register(name, version string, dev Device) {
	if plugin.dev != nil {
		plugin.regErr = tinyfmt.Errorf("sdk.Register called twice (%s, then %s)", plugin.name, name)
		return
	}
	if dev == nil || (reflect.ValueOf(dev).Kind() == reflect.Pointer && reflect.ValueOf(dev).IsNil()) {
		plugin.regErr = tinyfmt.Errorf("sdk.Register(%q): nil device", name)
		return
	}
	plugin.name, plugin.version, plugin.dev = name, version, dev
}

func (g *registry) addProperty(p property) {
	for _, q := range g.props {
		if q.info().Name == p.info().Name {
			g.fail(tinyfmt.Errorf("property %q declared twice", p.info().Name))
		}
	}
	if g.realized {
		g.fail(tinyfmt.Errorf("property %q declared after realize", p.info().Name))
	}
	g.props = append(g.props, p)
}

func (g *registry) addBackend(b *Backend) {
	for int(b.id) >= len(g.backends) {
		g.backends = append(g.backends, nil)
	}
	g.backends[b.id] = b
}

func (g *registry) fail(err error) {
	if g.regErr == nil {
		g.regErr = err
	}
}

// VMState builds a section from the struct ptr points to (see NewSection
// for the tags and types) and declares it: the SDK registers it with the
// host when Realize returns. Call it at package initialization or from
// Realize. An invalid layout fails the device's realize with an error naming
// the field.
func VMState(name string, ptr any, opts ...Option) *Section {
	s, err := NewSection(name, ptr, opts...)
	if err != nil {
		plugin.fail(err)
	}
	if plugin.realized {
		plugin.fail(tinyfmt.Errorf("vmstate %s declared after realize", name))
	}
	plugin.sections = append(plugin.sections, s)
	return s
}

// warnOnce logs a message the first time key is seen.
func (g *registry) warnOnce(key, msg string) {
	if g.warned == nil {
		g.warned = map[string]bool{}
	}
	if g.warned[key] {
		return
	}
	g.warned[key] = true
	Log(abi.LogWarn, msg)
}
