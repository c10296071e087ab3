package migration

import (
	"errors"
	"fmt"

	"wasmvmm/abi"
	"wasmvmm/host/machine"
)

// ownedDisk is a block backend whose ownership migration hands over
// (blockdev.Image).
type ownedDisk interface {
	Activate() error
	Inactivate() error
	Active() bool
	Path() string
}

// disks returns the block backends of the machine's plugin devices that
// carry ownership.
func disks(m *machine.Machine) []ownedDisk {
	var out []ownedDisk
	for _, d := range m.Devices() {
		pd, ok := d.(*machine.PluginDevice)
		if !ok || pd.Instance == nil {
			continue
		}
		for _, ref := range pd.Instance.Backends() {
			if ref.Kind != abi.BackendBlock {
				continue
			}
			b, err := pd.Backend(ref.Kind, ref.Name)
			if err != nil {
				continue
			}
			if od, ok := b.(ownedDisk); ok {
				out = append(out, od)
			}
		}
	}
	return out
}

// inactivateDisks gives up every disk this machine still owns and returns
// the ones it gave up, so a failure hands back exactly those. Disks that
// were already inactive (a paused guest migrated a second time, QEMU's
// issue 2395) are left alone.
func inactivateDisks(m *machine.Machine) ([]ownedDisk, error) {
	var done []ownedDisk
	for _, d := range disks(m) {
		if !d.Active() {
			continue
		}
		if err := d.Inactivate(); err != nil {
			return done, fmt.Errorf("inactivate disk %s: %w", d.Path(), err)
		}
		done = append(done, d)
	}
	return done, nil
}

// activateDisks takes ownership of ds.
func activateDisks(ds []ownedDisk) error {
	var errs []error
	for _, d := range ds {
		if err := d.Activate(); err != nil {
			errs = append(errs, fmt.Errorf("activate disk %s: %w", d.Path(), err))
		}
	}
	return errors.Join(errs...)
}

// ResumeAfterMigration is QMP cont on a source in postmigrate: like QEMU,
// it takes back the disks the migration gave up before the guest runs
// again. If another VMM (the destination) owns a disk, nothing resumes and
// the error names the holder.
func (g *Migrator) ResumeAfterMigration() error {
	m := g.cfg.Machine
	if st, _ := m.State(); st != machine.StatePostMigrate {
		return fmt.Errorf("the machine is %s, not postmigrate", st)
	}
	if g.Status().Running() {
		return errors.New("a migration is running")
	}
	if g.HandedOver() {
		return errHandedOver
	}
	var inactive []ownedDisk
	for _, d := range disks(m) {
		if !d.Active() {
			inactive = append(inactive, d)
		}
	}
	for i, d := range inactive {
		if err := d.Activate(); err != nil {
			// Give back what this call took, so nothing is half-owned.
			for _, t := range inactive[:i] {
				t.Inactivate()
			}
			return fmt.Errorf("cannot resume: activate disk %s: %w", d.Path(), err)
		}
	}
	return m.EnterRunState(machine.StateRunning)
}
