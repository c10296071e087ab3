package sdk

import (
	"errors"
	"fmt"
	"reflect"

	"wasmvmm/abi"
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
	// PreSaver runs before the host reads the device's vmstate.
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
		return -1, fmt.Errorf("add region: %w", abi.ErrState)
	}
	id := hostRegionAdd(int32(kind), size)
	if id < 0 {
		return -1, fmt.Errorf("add region of %d bytes: %w", size, statusError(int64(id)))
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
		plugin.regErr = fmt.Errorf("sdk.Register called twice (%s, then %s)", plugin.name, name)
		return
	}
	if dev == nil || (reflect.ValueOf(dev).Kind() == reflect.Pointer && reflect.ValueOf(dev).IsNil()) {
		plugin.regErr = fmt.Errorf("sdk.Register(%q): nil device", name)
		return
	}
	plugin.name, plugin.version, plugin.dev = name, version, dev
}

func (g *registry) addProperty(p property) {
	for _, q := range g.props {
		if q.info().Name == p.info().Name {
			g.fail(fmt.Errorf("property %q declared twice", p.info().Name))
		}
	}
	if g.realized {
		g.fail(fmt.Errorf("property %q declared after realize", p.info().Name))
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
		plugin.fail(fmt.Errorf("vmstate %s declared after realize", name))
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

func statusOf(err error) abi.Status {
	if err == nil {
		return abi.OK
	}
	var s abi.Status
	if errors.As(err, &s) && s < 0 {
		return s
	}
	return abi.ErrFailed
}

func (g *registry) describe() abi.Status {
	if g.regErr != nil {
		Logf(abi.LogError, "describe: %v", g.regErr)
		return abi.ErrFailed
	}
	if g.dev == nil {
		Log(abi.LogError, "describe: the plugin registered no device (call sdk.Register from init)")
		return abi.ErrFailed
	}
	info := &abi.DeviceInfo{Name: g.name, Version: g.version}
	for _, p := range g.props {
		info.Properties = append(info.Properties, p.info())
	}
	if err := info.Validate(); err != nil {
		Logf(abi.LogError, "describe: %v", err)
		return abi.ErrInvalid
	}
	b := abi.MarshalDeviceInfo(info)
	if err := statusError(int64(hostDeviceDeclare(bytesPtr(b), uint32(len(b))))); err != nil {
		Logf(abi.LogError, "describe: device_declare: %v", err)
		return statusOf(err)
	}
	return abi.OK
}

func (g *registry) realize() abi.Status {
	if g.dev == nil || g.regErr != nil {
		return g.describe() // logs why
	}
	if g.realized {
		Log(abi.LogError, "realize called twice")
		return abi.ErrState
	}
	for _, p := range g.props {
		if err := p.load(); err != nil {
			Logf(abi.LogError, "realize %s: %v", g.name, err)
			return statusOf(err)
		}
	}
	r := &Realizer{}
	err := g.dev.Realize(r)
	if err == nil {
		err = g.regErr // e.g. a bad VMState declared inside Realize
	}
	if err == nil {
		err = g.registerSections()
	}
	r.done = true
	g.realized = true
	if err != nil {
		Logf(abi.LogError, "realize %s: %v", g.name, err)
		return statusOf(err)
	}
	return abi.OK
}

func (g *registry) registerSections() error {
	types := map[string]abi.PropType{}
	for _, p := range g.props {
		types[p.info().Name] = p.info().Type
	}
	for _, s := range g.sections {
		if s.err != nil {
			return s.err
		}
		if err := checkConditions(s.Layout(), types); err != nil {
			return err
		}
		sec, err := s.resolve(addressOf, func(needed func() bool) int32 {
			g.needed = append(g.needed, needed)
			return int32(len(g.needed) - 1)
		})
		if err != nil {
			return err
		}
		b := abi.MarshalSection(sec)
		if err := statusError(int64(hostVMStateRegister(bytesPtr(b), uint32(len(b))))); err != nil {
			return fmt.Errorf("vmstate_register %s: %w", sec.Name, err)
		}
	}
	return nil
}

// checkConditions verifies that every if= names a declared integer or
// bool property.
func checkConditions(s *abi.Section, types map[string]abi.PropType) error {
	for _, f := range s.Fields {
		if f.Exists != nil {
			t, ok := types[f.Exists.Prop]
			if !ok {
				return fmt.Errorf("vmstate %s.%s: if= names property %q, which the device does not declare", s.Name, f.Name, f.Exists.Prop)
			}
			if t == abi.PropString {
				return fmt.Errorf("vmstate %s.%s: if= names string property %q; conditions need a bool or integer property", s.Name, f.Name, f.Exists.Prop)
			}
		}
		if f.Struct != nil {
			if err := checkConditions(f.Struct, types); err != nil {
				return fmt.Errorf("vmstate %s.%s: %w", s.Name, f.Name, err)
			}
		}
	}
	for i := range s.Subsections {
		if err := checkConditions(&s.Subsections[i], types); err != nil {
			return err
		}
	}
	return nil
}

// addressOf returns the linear-memory address of the struct ptr points to.
func addressOf(ptr any) (uint32, error) {
	a := reflect.ValueOf(ptr).Pointer()
	if uint64(a) > 0xffffffff {
		return 0, fmt.Errorf("address %#x is not a 32-bit linear-memory address (register sections only inside a plugin)", a)
	}
	return uint32(a), nil
}

func (g *registry) reset() {
	if g.dev != nil {
		g.dev.Reset()
	}
}

func allOnes(size int32) uint64 {
	if size >= 8 || size <= 0 {
		return ^uint64(0)
	}
	return (uint64(1) << (8 * uint(size))) - 1
}

func (g *registry) mmioRead(region int32, offset uint64, size int32) uint64 {
	if d, ok := g.dev.(MMIODevice); ok {
		return d.MMIORead(Region(region), offset, int(size))
	}
	g.warnOnce("mmio", "device has no MMIO handler: reads return all ones, writes are ignored")
	return allOnes(size)
}

func (g *registry) mmioWrite(region int32, offset uint64, size int32, value uint64) {
	if d, ok := g.dev.(MMIODevice); ok {
		d.MMIOWrite(Region(region), offset, int(size), value)
		return
	}
	g.warnOnce("mmio", "device has no MMIO handler: reads return all ones, writes are ignored")
}

func (g *registry) pioRead(region int32, offset uint32, size int32) uint32 {
	if d, ok := g.dev.(PIODevice); ok {
		return d.PIORead(Region(region), offset, int(size))
	}
	g.warnOnce("pio", "device has no port I/O handler: reads return all ones, writes are ignored")
	return uint32(allOnes(size))
}

func (g *registry) pioWrite(region int32, offset uint32, size int32, value uint32) {
	if d, ok := g.dev.(PIODevice); ok {
		d.PIOWrite(Region(region), offset, int(size), value)
		return
	}
	g.warnOnce("pio", "device has no port I/O handler: reads return all ones, writes are ignored")
}

func (g *registry) timer(id int32) {
	if d, ok := g.dev.(TimerHandler); ok {
		d.TimerFired(Timer(id))
		return
	}
	g.warnOnce("timer", "device has no timer handler: timer events are dropped")
}

func (g *registry) backendReady(id int32, events int32) {
	d, ok := g.dev.(BackendHandler)
	if !ok {
		g.warnOnce("backend", "device has no backend handler: readiness events are dropped")
		return
	}
	if id < 0 || int(id) >= len(g.backends) || g.backends[id] == nil {
		g.warnOnce("backend-id", "readiness event for a backend the device did not open")
		return
	}
	d.BackendReady(g.backends[id], abi.BackendEvent(events))
}

func (g *registry) preSave() abi.Status {
	if d, ok := g.dev.(PreSaver); ok {
		if err := d.PreSave(); err != nil {
			Logf(abi.LogError, "pre-save %s: %v", g.name, err)
			return statusOf(err)
		}
	}
	return abi.OK
}

func (g *registry) postLoad(version int32) abi.Status {
	if d, ok := g.dev.(PostLoader); ok {
		if err := d.PostLoad(uint32(version)); err != nil {
			Logf(abi.LogError, "post-load %s (version %d): %v", g.name, version, err)
			return statusOf(err)
		}
	}
	return abi.OK
}

func (g *registry) subsectionNeeded(id int32) int32 {
	if id < 0 || int(id) >= len(g.needed) {
		Logf(abi.LogError, "subsection needed: unknown id %d", id)
		return 0
	}
	if f := g.needed[id]; f != nil && !f() {
		return 0
	}
	return 1
}

func (g *registry) idle() {
	if d, ok := g.dev.(Idler); ok {
		d.Idle()
	}
}

func (g *registry) migrationEvent(event, mode int32) abi.Status {
	d, ok := g.dev.(MigrationHandler)
	if !ok {
		g.warnOnce("migration", "device has no migration event handler: events are ignored")
		return abi.OK
	}
	if err := d.MigrationEvent(abi.MigrationEvent(event), abi.MigrationMode(mode)); err != nil {
		Logf(abi.LogError, "migration event %d: %v", event, err)
		return statusOf(err)
	}
	return abi.OK
}
