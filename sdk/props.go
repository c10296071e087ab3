package sdk

import (
	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
)

// property is a declared device property.
type property interface {
	info() abi.Property
	// load fetches the resolved value from the host at realize.
	load() error
}

// BoolProp is a boolean device property.
type BoolProp struct {
	name, doc string
	def, val  bool
}

// Bool declares a boolean property with its default. Call it at package
// initialization (a package-level variable); the value the host resolved is
// available from Get once the device is realized.
func Bool(name string, def bool, doc string) *BoolProp {
	p := &BoolProp{name: name, doc: doc, def: def, val: def}
	plugin.addProperty(p)
	return p
}

// Get returns the property's value (the default before realize).
func (p *BoolProp) Get() bool { return p.val }

// Name returns the property's name.
func (p *BoolProp) Name() string { return p.name }

func (p *BoolProp) info() abi.Property {
	var d uint64
	if p.def {
		d = 1
	}
	return abi.Property{Name: p.name, Type: abi.PropBool, DefaultInt: d, Doc: p.doc}
}

func (p *BoolProp) load() error {
	v, err := propGetInt(p.name)
	if err != nil {
		return err
	}
	p.val = v != 0
	return nil
}

// Unsigned lists the integer types a property can have.
type Unsigned interface {
	~uint8 | ~uint16 | ~uint32 | ~uint64
}

// IntProp is an unsigned integer device property.
type IntProp[T Unsigned] struct {
	name, doc string
	typ       abi.PropType
	def, val  T
}

func newInt[T Unsigned](name string, typ abi.PropType, def T, doc string) *IntProp[T] {
	p := &IntProp[T]{name: name, doc: doc, typ: typ, def: def, val: def}
	plugin.addProperty(p)
	return p
}

// U8 declares a uint8 property with its default (see Bool).
func U8(name string, def uint8, doc string) *IntProp[uint8] {
	return newInt(name, abi.PropU8, def, doc)
}

// U16 declares a uint16 property with its default (see Bool).
func U16(name string, def uint16, doc string) *IntProp[uint16] {
	return newInt(name, abi.PropU16, def, doc)
}

// U32 declares a uint32 property with its default (see Bool).
func U32(name string, def uint32, doc string) *IntProp[uint32] {
	return newInt(name, abi.PropU32, def, doc)
}

// U64 declares a uint64 property with its default (see Bool).
func U64(name string, def uint64, doc string) *IntProp[uint64] {
	return newInt(name, abi.PropU64, def, doc)
}

// Get returns the property's value (the default before realize).
func (p *IntProp[T]) Get() T { return p.val }

// Name returns the property's name.
func (p *IntProp[T]) Name() string { return p.name }

func (p *IntProp[T]) info() abi.Property {
	return abi.Property{Name: p.name, Type: p.typ, DefaultInt: uint64(p.def), Doc: p.doc}
}

func (p *IntProp[T]) load() error {
	v, err := propGetInt(p.name)
	if err != nil {
		return err
	}
	if v > p.typ.MaxInt() {
		return tinyfmt.Errorf("property %s: host value %d does not fit %s", p.name, v, p.typ)
	}
	p.val = T(v)
	return nil
}

// StringProp is a string device property.
type StringProp struct {
	name, doc string
	def, val  string
}

// String declares a string property with its default (see Bool).
func String(name, def, doc string) *StringProp {
	p := &StringProp{name: name, doc: doc, def: def, val: def}
	plugin.addProperty(p)
	return p
}

// Get returns the property's value (the default before realize).
func (p *StringProp) Get() string { return p.val }

// Name returns the property's name.
func (p *StringProp) Name() string { return p.name }

func (p *StringProp) info() abi.Property {
	return abi.Property{Name: p.name, Type: abi.PropString, DefaultStr: p.def, Doc: p.doc}
}

func (p *StringProp) load() error {
	v, err := propGetString(p.name)
	if err != nil {
		return err
	}
	p.val = v
	return nil
}
