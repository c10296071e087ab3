// Package config reads the two TOML inputs of a VM: the user's VM
// configuration and the machine types under machines/. Every error names the
// file, the line where it can be found, and the key; unknown keys are errors.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// VM is a VM configuration file.
type VM struct {
	Path    string         `toml:"-"`
	Machine MachineSection `toml:"machine"`
	Boot    BootSection    `toml:"boot"`
	Devices []DeviceConfig `toml:"device"`
}

// MachineSection selects the machine type and sizes the VM.
type MachineSection struct {
	Type        string `toml:"type"`         // machine type name, e.g. "wasmvmm-virt-1.2"
	Memory      Size   `toml:"memory"`       // guest RAM, e.g. "512M"
	CPUs        int    `toml:"cpus"`         // vCPU count
	ShareMemory bool   `toml:"share_memory"` // back RAM with memfds (needed for cpr-transfer)
}

// BootSection names what to boot.
type BootSection struct {
	Kernel  string `toml:"kernel"`  // ELF (test guest, vmlinux) or bzImage
	Initrd  string `toml:"initrd"`  // optional
	Cmdline string `toml:"cmdline"` // kernel command line
}

// DeviceConfig adjusts a device of the machine type (matched by ID) or adds one.
type DeviceConfig struct {
	ID         string            `toml:"id"`
	Plugin     string            `toml:"plugin"` // only for devices the machine type lacks
	MMIO       []uint64          `toml:"mmio"`
	PIO        []uint64          `toml:"pio"`
	IRQ        []uint32          `toml:"irq"`
	Properties map[string]any    `toml:"properties"`
	Backends   map[string]string `toml:"backends"` // backend name -> spec, e.g. console = "stdio"
}

// Size is a byte count written as an integer or a string with a K, M, G or T
// suffix (powers of 1024).
type Size uint64

// UnmarshalTOML implements toml.Unmarshaler.
func (s *Size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("size %d is negative", x)
		}
		*s = Size(x)
		return nil
	case string:
		n, err := ParseSize(x)
		if err != nil {
			return err
		}
		*s = Size(n)
		return nil
	}
	return fmt.Errorf("size must be an integer or a string like \"512M\", not %T", v)
}

// ParseSize parses "4096", "512K", "256M", "4G", "1T" (powers of 1024).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n * mult, nil
}

// LoadVM reads and checks a VM configuration file.
func LoadVM(path string) (*VM, error) {
	var vm VM
	if err := decodeStrict(path, &vm); err != nil {
		return nil, err
	}
	vm.Path = path
	vm.Boot.Kernel = abs(path, vm.Boot.Kernel)
	vm.Boot.Initrd = abs(path, vm.Boot.Initrd)
	src, _ := os.ReadFile(path)
	seen := map[string]bool{}
	for i, d := range vm.Devices {
		if d.ID == "" {
			return nil, locate(path, src, "device", i, "id", "a [[device]] needs an id")
		}
		if seen[d.ID] {
			return nil, locate(path, src, "device", i, "id", fmt.Sprintf("device id %q appears twice", d.ID))
		}
		seen[d.ID] = true
	}
	if vm.Machine.CPUs < 0 {
		return nil, locate(path, src, "machine", -1, "cpus", "cpus must not be negative")
	}
	return &vm, nil
}

// decodeStrict decodes a TOML file into v and refuses keys v has no place for.
func decodeStrict(path string, v any) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return decodeStrictBytes(path, src, v)
}

// decodeStrictBytes decodes TOML text; path names it in messages.
func decodeStrictBytes(path string, src []byte, v any) error {
	md, err := toml.NewDecoder(bytes.NewReader(src)).Decode(v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d:%d: %s", path, pe.Position.Line, pe.Position.Col, pe.Message)
		}
		// Type errors from Unmarshalers and field decoding name the key but
		// not the line; find the line from the key path.
		return keyError(path, src, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		line := findKeyLine(src, k)
		return fmt.Errorf("%s:%d: unknown key %q", path, line, k.String())
	}
	return nil
}

var keyInErr = regexp.MustCompile(`toml: (?:line (\d+) )?\(?(?:last key|key) "?([^"\s)]+)"?`)

func keyError(path string, src []byte, err error) error {
	msg := err.Error()
	if m := keyInErr.FindStringSubmatch(msg); m != nil {
		if m[1] != "" {
			return fmt.Errorf("%s:%s: %s", path, m[1], msg)
		}
		key := toml.Key(strings.Split(m[2], "."))
		return fmt.Errorf("%s:%d: key %q: %s", path, findKeyLine(src, key), m[2], msg)
	}
	return fmt.Errorf("%s: %s", path, msg)
}

// findKeyLine returns the line of the last component of key inside its table,
// or the table header's line, or 1. Array-of-tables indexes in the key are
// not recorded by the TOML library, so the first match in any instance of the
// table is reported.
func findKeyLine(src []byte, key toml.Key) int {
	lines := strings.Split(string(src), "\n")
	table := strings.Join(key[:max(len(key)-1, 0)], ".")
	last := ""
	if len(key) > 0 {
		last = key[len(key)-1]
	}
	cur := ""
	headerLine := 0
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			cur = strings.Trim(strings.SplitN(t, "#", 2)[0], "[] \t")
			if cur == table || cur == strings.Join(key, ".") {
				headerLine = i + 1
			}
			continue
		}
		name := strings.TrimSpace(strings.SplitN(t, "=", 2)[0])
		name = strings.Trim(name, `"'`)
		if !strings.Contains(t, "=") {
			continue
		}
		full := name
		if cur != "" {
			full = cur + "." + name
		}
		if full == key.String() || (cur == table && name == last) {
			return i + 1
		}
		// Inline tables: key = { sub = ... }
		if strings.HasPrefix(table, full) && strings.Contains(t, last) {
			return i + 1
		}
	}
	if headerLine > 0 {
		return headerLine
	}
	return 1
}

// locate builds an error for the i-th instance of array table (or the plain
// table when i < 0) at key.
func locate(path string, src []byte, table string, i int, key, msg string) error {
	lines := strings.Split(string(src), "\n")
	n := -1
	in := false
	for li, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			h := strings.Trim(strings.SplitN(t, "#", 2)[0], "[] \t")
			in = h == table
			if in {
				n++
			}
			continue
		}
		if in && (i < 0 || n == i) && strings.HasPrefix(t, key) {
			rest := strings.TrimSpace(strings.TrimPrefix(t, key))
			if strings.HasPrefix(rest, "=") {
				return fmt.Errorf("%s:%d: %s.%s: %s", path, li+1, table, key, msg)
			}
		}
	}
	line := 1
	n = -1
	for li, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") && strings.Trim(strings.SplitN(t, "#", 2)[0], "[] \t") == table {
			n++
			if i < 0 || n == i {
				line = li + 1
				break
			}
		}
	}
	return fmt.Errorf("%s:%d: %s: %s", path, line, table, msg)
}

// sortedKeys returns a map's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// abs resolves p relative to the directory of the file that named it.
func abs(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(base), p)
}
