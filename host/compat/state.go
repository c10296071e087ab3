package compat

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/migration"
	"wasmvmm/host/vmstate"
)

// DeviceState returns every migrated field of the machine's plugin
// devices, keyed "section#instance/field[i]/member" (subsection fields
// under the subsection's name), with the bytes the field has in the
// plugin's memory. Property-gated fields whose condition does not hold
// are left out, as are the placeholders of legacy sections ("unused"),
// whose content is discarded.
func DeviceState(m *Machine) (map[string][]byte, error) {
	reg, err := m.Registry()
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, d := range reg.Devices() {
		if d.Hooks == nil {
			continue // host sections: not device state
		}
		prefix := fmt.Sprintf("%s#%d", d.Name, d.InstanceID)
		if err := readSection(d, d.Schema, prefix, 0, out); err != nil {
			return nil, fmt.Errorf("%s: %w", prefix, err)
		}
		for i := range d.Schema.Subsections {
			sub := &d.Schema.Subsections[i]
			if err := readSection(d, sub, prefix+"/"+sub.Name, 0, out); err != nil {
				return nil, fmt.Errorf("%s: %w", prefix, err)
			}
		}
	}
	return out, nil
}

func readSection(d vmstate.Device, s *abi.Section, prefix string, base uint32, out map[string][]byte) error {
	for i := range s.Fields {
		f := &s.Fields[i]
		if isUnused(f.Name) {
			continue
		}
		if f.Exists != nil && !f.Exists.Holds(d.Props[f.Exists.Prop]) {
			continue
		}
		key := prefix + "/" + f.Name
		if f.Type == abi.FieldStruct && f.Struct != nil {
			for e := uint32(0); e < f.Count; e++ {
				if err := readSection(d, f.Struct, fmt.Sprintf("%s[%d]", key, e), base+f.Offset+e*f.Size, out); err != nil {
					return err
				}
			}
			continue
		}
		b := make([]byte, int(f.Size)*int(f.Count))
		if _, err := d.Store.ReadAt(b, int64(base)+int64(f.Offset)); err != nil {
			return fmt.Errorf("field %s: %w", key, err)
		}
		out[key] = b
	}
	return nil
}

// DiffState lists the fields present in both states whose bytes differ,
// sorted, at most limit of them (0: all).
func DiffState(a, b map[string][]byte, limit int) []string {
	var diffs []string
	for k, va := range a {
		if vb, ok := b[k]; ok && !bytes.Equal(va, vb) {
			diffs = append(diffs, fmt.Sprintf("%s: % x != % x", k, clip(va), clip(vb)))
		}
	}
	sort.Strings(diffs)
	if limit > 0 && len(diffs) > limit {
		diffs = append(diffs[:limit], fmt.Sprintf("... %d more", len(diffs)-limit))
	}
	return diffs
}

func clip(b []byte) []byte {
	if len(b) > 16 {
		return b[:16]
	}
	return b
}

// commonKeys counts the fields present in both states.
func commonKeys(a, b map[string][]byte) int {
	n := 0
	for k := range a {
		if _, ok := b[k]; ok {
			n++
		}
	}
	return n
}

// Migrate live-migrates src into dst over a unix socket at sock (QEMU's
// precopy with the pre-flight schema check) and waits for both ends. dst
// must have been built with Incoming set.
func Migrate(ctx context.Context, src, dst *Machine, sock string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := dst.M.StartIncoming(); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	ch := migration.Channel{Type: "main", Transport: "unix", Path: sock}
	gd := migration.New(migration.Config{Machine: dst.M, MachineType: dst.Type.Name, Plugins: dst.Migration})
	res, err := gd.ListenIncoming(ctx, ch)
	if err != nil {
		return fmt.Errorf("destination listen: %w", err)
	}
	gs := migration.New(migration.Config{Machine: src.M, MachineType: src.Type.Name, Plugins: src.Migration})
	if err := gs.Start(ch); err != nil {
		cancel()
		<-res
		return fmt.Errorf("source: %w", err)
	}
	if err := gs.Wait(ctx); err != nil {
		cancel()
		<-res
		return fmt.Errorf("source: %w", err)
	}
	srcInfo := gs.Query()
	var dstErr error
	select {
	case dstErr = <-res:
	case <-time.After(timeout):
		dstErr = fmt.Errorf("no outcome after %v", timeout)
	}
	var errs []string
	if srcInfo.Status != migration.StatusCompleted {
		errs = append(errs, fmt.Sprintf("source %s: %s", srcInfo.Status, srcInfo.ErrorDesc))
	}
	if dstErr != nil {
		errs = append(errs, fmt.Sprintf("destination: %v", dstErr))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// SaveFile writes a snapshot of the machine to path (a migration to a
// file: RAM, vCPU and device state), leaving the machine in postmigrate.
func SaveFile(ctx context.Context, m *Machine, path string) error {
	g := migration.New(migration.Config{Machine: m.M, MachineType: m.Type.Name, Plugins: m.Migration})
	if err := g.Start(migration.Channel{Type: "main", Transport: "file", Path: path}); err != nil {
		return err
	}
	if err := g.Wait(ctx); err != nil {
		return err
	}
	if info := g.Query(); info.Status != migration.StatusCompleted {
		return fmt.Errorf("snapshot %s: %s", info.Status, info.ErrorDesc)
	}
	return nil
}

// LoadFile loads a snapshot into m, which must have been built with
// Incoming set.
func LoadFile(ctx context.Context, m *Machine, path string) error {
	if err := m.M.StartIncoming(); err != nil {
		return err
	}
	g := migration.New(migration.Config{Machine: m.M, MachineType: m.Type.Name, Plugins: m.Migration})
	return g.Incoming(ctx, migration.Channel{Type: "main", Transport: "file", Path: path})
}
