package plugin

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"wasmvmm/abi"
)

// PropertyValues are property overrides by name. A value is a bool, a Go
// integer (int64 and uint64 as decoded from TOML, or any other integer
// type), or a string; a string given for a bool or integer property is
// parsed ("true"/"false"/"on"/"off", decimal, 0x hex, 0o octal, 0b binary).
type PropertyValues map[string]any

// PropertyValue is a resolved property.
type PropertyValue struct {
	Type abi.PropType
	Int  uint64 // bool (0 or 1) and integer types
	Str  string // string type
}

// String formats the value as it would be written in a configuration.
func (v PropertyValue) String() string {
	switch v.Type {
	case abi.PropString:
		return strconv.Quote(v.Str)
	case abi.PropBool:
		return strconv.FormatBool(v.Int != 0)
	}
	return strconv.FormatUint(v.Int, 10)
}

// resolveProperties applies the layers of overrides, in order, over the
// declared defaults.
func resolveProperties(info *abi.DeviceInfo, layers []PropertyValues) (map[string]PropertyValue, error) {
	decl := make(map[string]abi.Property, len(info.Properties))
	out := make(map[string]PropertyValue, len(info.Properties))
	for _, p := range info.Properties {
		decl[p.Name] = p
		out[p.Name] = PropertyValue{Type: p.Type, Int: p.DefaultInt, Str: p.DefaultStr}
	}
	for _, layer := range layers {
		names := make([]string, 0, len(layer))
		for n := range layer {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p, ok := decl[n]
			if !ok {
				return nil, fmt.Errorf("device type %s has no property %q; valid properties: %s", info.Name, n, validNames(info))
			}
			v, err := convertProperty(p, layer[n])
			if err != nil {
				return nil, fmt.Errorf("device type %s: property %q: %w", info.Name, n, err)
			}
			out[n] = v
		}
	}
	return out, nil
}

func validNames(info *abi.DeviceInfo) string {
	if len(info.Properties) == 0 {
		return "(none)"
	}
	names := make([]string, len(info.Properties))
	for k, p := range info.Properties {
		names[k] = p.Name + " (" + p.Type.String() + ")"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// convertProperty checks a value against the declared type.
func convertProperty(p abi.Property, v any) (PropertyValue, error) {
	out := PropertyValue{Type: p.Type}
	switch p.Type {
	case abi.PropString:
		s, ok := v.(string)
		if !ok {
			return out, fmt.Errorf("expected string, got %T %v", v, v)
		}
		if len(s) > abi.MaxStringLen {
			return out, fmt.Errorf("string of %d bytes exceeds %d", len(s), abi.MaxStringLen)
		}
		out.Str = s
		return out, nil
	case abi.PropBool:
		switch x := v.(type) {
		case bool:
			if x {
				out.Int = 1
			}
			return out, nil
		case string:
			switch strings.ToLower(x) {
			case "true", "on", "yes":
				out.Int = 1
				return out, nil
			case "false", "off", "no":
				return out, nil
			}
			return out, fmt.Errorf("expected bool, got string %q", x)
		}
		return out, fmt.Errorf("expected bool, got %T %v", v, v)
	}
	max := p.Type.MaxInt()
	var u uint64
	switch x := v.(type) {
	case string:
		n, err := strconv.ParseUint(strings.ReplaceAll(x, "_", ""), 0, 64)
		if err != nil {
			if _, errSigned := strconv.ParseInt(x, 0, 64); errSigned == nil {
				return out, fmt.Errorf("value %s is out of range for %s (0..%d)", x, p.Type, max)
			}
			return out, fmt.Errorf("expected %s, got string %q", p.Type, x)
		}
		u = n
	case int:
		if x < 0 {
			return out, fmt.Errorf("value %d is out of range for %s (0..%d)", x, p.Type, max)
		}
		u = uint64(x)
	case int8:
		return convertProperty(p, int64(x))
	case int16:
		return convertProperty(p, int64(x))
	case int32:
		return convertProperty(p, int64(x))
	case int64:
		if x < 0 {
			return out, fmt.Errorf("value %d is out of range for %s (0..%d)", x, p.Type, max)
		}
		u = uint64(x)
	case uint:
		u = uint64(x)
	case uint8:
		u = uint64(x)
	case uint16:
		u = uint64(x)
	case uint32:
		u = uint64(x)
	case uint64:
		u = x
	case float64:
		if x != math.Trunc(x) || x < 0 || x >= 1<<64 {
			return out, fmt.Errorf("expected %s, got float %v", p.Type, x)
		}
		u = uint64(x)
	default:
		return out, fmt.Errorf("expected %s, got %T %v", p.Type, v, v)
	}
	if u > max {
		return out, fmt.Errorf("value %d is out of range for %s (0..%d)", u, p.Type, max)
	}
	out.Int = u
	return out, nil
}
