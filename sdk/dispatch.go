package sdk

//lint:file-ignore U1000 the handlers here are called from the go:wasmexport functions of exports_wasip1.go, which static analysis does not see as entry points

import (
	"reflect"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

func statusOf(err error) abi.Status {
	if err == nil {
		return abi.OK
	}
	if s, ok := findStatus(err); ok && s < 0 {
		return s
	}
	return abi.ErrFailed
}

// findStatus is errors.As(err, &status), walked by hand: errors.As's
// reflection-based matching adds to every plugin's module.
func findStatus(err error) (abi.Status, bool) {
	for err != nil {
		if s, ok := err.(abi.Status); ok {
			return s, true
		}
		switch e := err.(type) {
		case interface{ Unwrap() error }:
			err = e.Unwrap()
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				if s, ok := findStatus(inner); ok {
					return s, true
				}
			}
			return 0, false
		default:
			return 0, false
		}
	}
	return 0, false
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
			return tinyfmt.Errorf("vmstate_register %s: %w", sec.Name, err)
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
				return tinyfmt.Errorf("vmstate %s.%s: if= names property %q, which the device does not declare", s.Name, f.Name, f.Exists.Prop)
			}
			if t == abi.PropString {
				return tinyfmt.Errorf("vmstate %s.%s: if= names string property %q; conditions need a bool or integer property", s.Name, f.Name, f.Exists.Prop)
			}
		}
		if f.Struct != nil {
			if err := checkConditions(f.Struct, types); err != nil {
				return tinyfmt.Errorf("vmstate %s.%s: %w", s.Name, f.Name, err)
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
		return 0, tinyfmt.Errorf("address %#x is not a 32-bit linear-memory address (register sections only inside a plugin)", a)
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
