package migration

import "fmt"

// Parameters are the migrate-set-parameters settings, with QEMU's names.
type Parameters struct {
	Mode            Mode  `json:"mode"`
	DowntimeLimit   int64 `json:"downtime-limit"`   // milliseconds
	MaxBandwidth    int64 `json:"max-bandwidth"`    // bytes per second during precopy (0: unlimited); the switchover always goes at full speed
	MultifdChannels int64 `json:"multifd-channels"` // parallel RAM connections when the multifd capability is on (multifd.go)
	CPUThrottleInit int64 `json:"cpu-throttle-initial"`
	CPUThrottleInc  int64 `json:"cpu-throttle-increment"`
	MaxCPUThrottle  int64 `json:"max-cpu-throttle"`
	// IOTimeout (milliseconds, wasmvmm's own) fails a live migration whose
	// socket makes no progress that long: a cut network. 0 waits forever,
	// as QEMU does.
	IOTimeout int64 `json:"x-io-timeout"`
}

// DefaultParameters returns QEMU's defaults.
func DefaultParameters() Parameters {
	return Parameters{
		Mode: ModeNormal, DowntimeLimit: 300, MaxBandwidth: 128 << 20, MultifdChannels: 2,
		CPUThrottleInit: 20, CPUThrottleInc: 10, MaxCPUThrottle: 99,
		IOTimeout: 10000,
	}
}

// ParameterUpdate is migrate-set-parameters' argument: only the members
// given change.
type ParameterUpdate struct {
	Mode            *Mode  `json:"mode,omitempty"`
	DowntimeLimit   *int64 `json:"downtime-limit,omitempty"`
	MaxBandwidth    *int64 `json:"max-bandwidth,omitempty"`
	MultifdChannels *int64 `json:"multifd-channels,omitempty"`
	CPUThrottleInit *int64 `json:"cpu-throttle-initial,omitempty"`
	CPUThrottleInc  *int64 `json:"cpu-throttle-increment,omitempty"`
	MaxCPUThrottle  *int64 `json:"max-cpu-throttle,omitempty"`
	IOTimeout       *int64 `json:"x-io-timeout,omitempty"`
}

// Parameters returns the current parameters.
func (g *Migrator) Parameters() Parameters {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.params
}

// SetParameters validates and applies an update, all or nothing.
func (g *Migrator) SetParameters(u ParameterUpdate) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.params
	if u.Mode != nil {
		if *u.Mode != ModeNormal && *u.Mode != ModeCPRTransfer {
			return fmt.Errorf("Parameter 'mode' does not accept value '%s'", *u.Mode)
		}
		p.Mode = *u.Mode
	}
	set := func(dst *int64, v *int64, name string, lo, hi int64) error {
		if v == nil {
			return nil
		}
		if *v < lo || *v > hi {
			return fmt.Errorf("Parameter '%s' expects a value between %d and %d", name, lo, hi)
		}
		*dst = *v
		return nil
	}
	for _, s := range []struct {
		dst    *int64
		v      *int64
		name   string
		lo, hi int64
	}{
		{&p.DowntimeLimit, u.DowntimeLimit, "downtime-limit", 0, 2000000},
		{&p.MaxBandwidth, u.MaxBandwidth, "max-bandwidth", 0, 1 << 62},
		{&p.MultifdChannels, u.MultifdChannels, "multifd-channels", 1, 255},
		{&p.CPUThrottleInit, u.CPUThrottleInit, "cpu-throttle-initial", 1, 99},
		{&p.CPUThrottleInc, u.CPUThrottleInc, "cpu-throttle-increment", 1, 99},
		{&p.MaxCPUThrottle, u.MaxCPUThrottle, "max-cpu-throttle", 1, 99},
		{&p.IOTimeout, u.IOTimeout, "x-io-timeout", 0, 3600000},
	} {
		if err := set(s.dst, s.v, s.name, s.lo, s.hi); err != nil {
			return err
		}
	}
	if g.status.Running() && p.Mode != g.params.Mode {
		return fmt.Errorf("cannot change the migration mode while a migration is running")
	}
	g.params = p
	return nil
}

// Capabilities are the migrate-set-capabilities switches.
type Capabilities struct {
	Events       bool `json:"events"`
	AutoConverge bool `json:"auto-converge"`
	// Multifd (off by default, as in QEMU) sends RAM pages over
	// multifd-channels parallel connections; both sides must have it on
	// and it needs x-preflight and a unix or tcp channel (multifd.go).
	Multifd               bool `json:"multifd"`
	PauseBeforeSwitchover bool `json:"pause-before-switchover"`
	// Preflight (wasmvmm's "x-preflight", on by default) frames a live
	// migration with the schema check and the destination's completion
	// verdict; off, the socket carries the plain QEMU stream.
	Preflight bool `json:"x-preflight"`
	// MappedRAM (off by default, as in QEMU) writes a file: snapshot in
	// QEMU's mapped-ram layout: every page at a fixed offset of the file,
	// written and read straight from and to guest memory (mapped.go). It
	// needs a file: URI, and the destination must have it on too.
	MappedRAM bool `json:"mapped-ram"`
}

// CapabilityState is one entry of migrate-set-capabilities and
// query-migrate-capabilities.
type CapabilityState struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

// QueryCapabilities lists the capabilities and their states.
func (g *Migrator) QueryCapabilities() []CapabilityState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return []CapabilityState{
		{"events", g.caps.Events}, {"auto-converge", g.caps.AutoConverge}, {"multifd", g.caps.Multifd},
		{"pause-before-switchover", g.caps.PauseBeforeSwitchover}, {"x-preflight", g.caps.Preflight},
		{"mapped-ram", g.caps.MappedRAM},
	}
}

// SetCapabilities applies capability changes, all or nothing; refused while
// a migration runs, as QEMU does.
func (g *Migrator) SetCapabilities(list []CapabilityState) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.status.Running() {
		return fmt.Errorf("There's a migration process in progress")
	}
	c := g.caps
	for _, e := range list {
		switch e.Capability {
		case "events":
			c.Events = e.State
		case "auto-converge":
			c.AutoConverge = e.State
		case "multifd":
			c.Multifd = e.State
		case "pause-before-switchover":
			c.PauseBeforeSwitchover = e.State
		case "x-preflight":
			c.Preflight = e.State
		case "mapped-ram":
			c.MappedRAM = e.State
		default:
			return fmt.Errorf("Parameter 'capability' does not accept value '%s'", e.Capability)
		}
	}
	g.caps = c
	return nil
}
