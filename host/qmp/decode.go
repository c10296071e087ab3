package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// Decode decodes QMP command arguments into v, a non-nil pointer to a struct
// (or to a map with string keys), as strictly as QEMU's input visitor:
//
//   - a member the struct does not declare is refused ("Parameter 'x' is unexpected");
//   - a member is required unless its field is a pointer or its json tag says
//     omitempty or omitzero ("Parameter 'x' is missing");
//   - JSON types must match the Go types: string, boolean, integer (no
//     fraction, no exponent, in range for the Go type), number, array
//     (slices), object (structs and maps); JSON null matches nothing but an
//     interface or a json.Unmarshaler;
//   - types implementing json.Unmarshaler decode themselves; their error
//     becomes "Invalid parameter 'x': <error>" unless it is an *Error.
//
// Nested members are named like QEMU names them: "a.b", "list[2]". An empty
// args (or JSON null) is an empty object. Decode returns an *Error whose text
// can go to the client unchanged.
func Decode(args json.RawMessage, v any) error {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() {
		return genericf("internal error: arguments decoded into %T, not a non-nil pointer", v)
	}
	trimmed := bytes.TrimSpace(args)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		trimmed = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return genericf("JSON parse error, %s", err.Error())
	}
	if dec.More() {
		return genericf("JSON parse error, trailing data after arguments")
	}
	if _, ok := tree.(map[string]any); !ok {
		return genericf("QMP input member 'arguments' must be an object")
	}
	return decodeValue("", tree, rv.Elem())
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// memberName joins a parent name and a member name the way QEMU prints them.
func memberName(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// displayName is the name used in a message about the value at path.
func displayName(path string) string {
	if path == "" {
		return "<anonymous>"
	}
	return path
}

func typeError(path, expected string) *Error {
	return genericf("Invalid parameter type for '%s', expected: %s", displayName(path), expected)
}

func decodeValue(path string, val any, dst reflect.Value) error {
	if dst.CanAddr() && dst.Addr().Type().Implements(unmarshalerType) {
		raw, err := json.Marshal(val)
		if err != nil {
			return genericf("internal error: re-encoding '%s': %v", displayName(path), err)
		}
		if err := dst.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(raw); err != nil {
			var qerr *Error
			if errors.As(err, &qerr) {
				return qerr
			}
			return genericf("Invalid parameter '%s': %v", displayName(path), err)
		}
		return nil
	}

	switch dst.Kind() {
	case reflect.Pointer:
		if dst.IsNil() {
			dst.Set(reflect.New(dst.Type().Elem()))
		}
		return decodeValue(path, val, dst.Elem())

	case reflect.Interface:
		if dst.NumMethod() != 0 {
			return genericf("internal error: cannot decode '%s' into %s", displayName(path), dst.Type())
		}
		if val == nil {
			dst.SetZero()
			return nil
		}
		dst.Set(reflect.ValueOf(val))
		return nil

	case reflect.String:
		s, ok := val.(string)
		if !ok {
			return typeError(path, "string")
		}
		dst.SetString(s)
		return nil

	case reflect.Bool:
		b, ok := val.(bool)
		if !ok {
			return typeError(path, "boolean")
		}
		dst.SetBool(b)
		return nil

	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := val.(json.Number)
		if !ok {
			return typeError(path, "integer")
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return typeError(path, "integer")
		}
		if dst.OverflowInt(i) {
			return genericf("Parameter '%s' expects int%d", displayName(path), dst.Type().Bits())
		}
		dst.SetInt(i)
		return nil

	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		n, ok := val.(json.Number)
		if !ok {
			return genericf("Parameter '%s' expects uint64", displayName(path))
		}
		u, err := strconv.ParseUint(string(n), 10, 64)
		if err != nil {
			return genericf("Parameter '%s' expects uint64", displayName(path))
		}
		if dst.OverflowUint(u) {
			return genericf("Parameter '%s' expects uint%d", displayName(path), dst.Type().Bits())
		}
		dst.SetUint(u)
		return nil

	case reflect.Float32, reflect.Float64:
		n, ok := val.(json.Number)
		if !ok {
			return typeError(path, "number")
		}
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil || math.IsInf(f, 0) || dst.OverflowFloat(f) {
			return typeError(path, "number")
		}
		dst.SetFloat(f)
		return nil

	case reflect.Slice:
		list, ok := val.([]any)
		if !ok {
			return typeError(path, "array")
		}
		out := reflect.MakeSlice(dst.Type(), len(list), len(list))
		for i, elem := range list {
			if err := decodeValue(fmt.Sprintf("%s[%d]", path, i), elem, out.Index(i)); err != nil {
				return err
			}
		}
		dst.Set(out)
		return nil

	case reflect.Map:
		if dst.Type().Key().Kind() != reflect.String {
			return genericf("internal error: cannot decode '%s' into %s", displayName(path), dst.Type())
		}
		obj, ok := val.(map[string]any)
		if !ok {
			return typeError(path, "object")
		}
		out := reflect.MakeMapWithSize(dst.Type(), len(obj))
		keys := sortedKeys(obj)
		for _, k := range keys {
			elem := reflect.New(dst.Type().Elem()).Elem()
			if err := decodeValue(memberName(path, k), obj[k], elem); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k).Convert(dst.Type().Key()), elem)
		}
		dst.Set(out)
		return nil

	case reflect.Struct:
		obj, ok := val.(map[string]any)
		if !ok {
			return typeError(path, "object")
		}
		return decodeStruct(path, obj, dst)
	}
	return genericf("internal error: cannot decode '%s' into %s", displayName(path), dst.Type())
}

// structField is one JSON member of a Go struct, possibly promoted from an
// embedded struct.
type structField struct {
	name     string
	index    []int
	optional bool
}

// structFields lists the JSON members of struct type t in declaration order,
// flattening embedded structs that carry no json name.
func structFields(t reflect.Type) []structField {
	var fields []structField
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), index...), i)
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			optional := f.Type.Kind() == reflect.Pointer
			for _, o := range strings.Split(opts, ",") {
				if o == "omitempty" || o == "omitzero" {
					optional = true
				}
			}
			fields = append(fields, structField{name: name, index: idx, optional: optional})
		}
	}
	walk(t, nil)
	return fields
}

func decodeStruct(path string, obj map[string]any, dst reflect.Value) error {
	fields := structFields(dst.Type())
	known := make(map[string]bool, len(fields))
	for _, f := range fields {
		known[f.name] = true
		val, present := obj[f.name]
		if !present {
			if f.optional {
				continue
			}
			return genericf("Parameter '%s' is missing", memberName(path, f.name))
		}
		if err := decodeValue(memberName(path, f.name), val, dst.FieldByIndex(f.index)); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(obj) {
		if !known[k] {
			return genericf("Parameter '%s' is unexpected", memberName(path, k))
		}
	}
	return nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Typed wraps a handler that takes decoded arguments of type A: the request's
// arguments are decoded with Decode before fn runs, and a decoding failure is
// returned to the client without calling fn. Use struct{} for a command that
// takes no arguments, so that any argument is refused.
func Typed[A any](fn func(ctx context.Context, args A) (any, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var args A
		if err := Decode(raw, &args); err != nil {
			return nil, err
		}
		return fn(ctx, args)
	}
}

// NoArgs wraps a handler for a command that takes no arguments; any argument
// the client passes is refused as unexpected.
func NoArgs(fn func(ctx context.Context) (any, error)) Handler {
	return Typed(func(ctx context.Context, _ struct{}) (any, error) {
		return fn(ctx)
	})
}
