// Package meter adds fuel metering to a WebAssembly module by rewriting
// its bytecode, so that a host can stop code that runs too long without
// any support from the engine (wazero's termination checks cost a goroutine
// per call).
//
// Instrument appends one mutable i64 global, exported as GlobalName, and
// makes the module consume one unit of that fuel at every loop header and
// on entry to every function that calls another function before it passes
// a loop header unconditionally. When a check finds the fuel below zero the
// module traps (unreachable). The host sets the fuel before each call and
// reads it after a trap: a negative value means the budget ran out.
//
// Every execution that does not end is metered: an endless run must pass
// loop headers endlessly, or make calls endlessly; a chain of calls is
// bounded by the engine's stack limit, and a tree of calls made without
// passing a loop header has every inner node metered on entry. Straight-line
// code between two checks is bounded by the size of the function. Bulk
// memory instructions run unmetered but are bounded by the size of memory.
// Tail calls would allow an endless loop with neither a loop header nor
// stack growth, so modules using them are refused, like every instruction
// the decoder does not know (SIMD, threads, GC, exception handling).
//
// The fuel check at a loop header is
//
//	global.get $fuel; i64.const 1; i64.sub; global.set $fuel
//	global.get $fuel; i64.const 0; i64.lt_s; if; unreachable; end
//
// so a budget of N lets exactly N loop iterations run and traps at the
// N+1th, leaving the fuel at -1. The global starts at 0: a start function
// (which runs at instantiation, before the host can set a budget) traps at
// its first check; Go's wasip1 reactors have none. Existing indices do not change: the global
// is appended after the module's own globals and the export after its
// exports. Custom sections are kept, except DWARF (.debug_*), whose code
// offsets the rewrite invalidates.
package meter

import (
	"errors"
	"fmt"
	"strings"
)

// GlobalName is the export name of the fuel global Instrument adds.
const GlobalName = "wasmvmm_fuel"

// ErrUnsupported is wrapped by the errors for well-formed input that uses
// a feature the instrumentation does not handle (an unknown opcode, tail
// calls, exception handling).
var ErrUnsupported = errors.New("not supported by the fuel meter")

// errImplausibleCount reports a vector count larger than its bytes.
var errImplausibleCount = errors.New("count larger than the section")

// Version identifies the instrumentation Instrument performs; caches of
// instrumented modules must key on it.
const Version = 1

// Section ids of the binary format.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionRank orders the known non-custom sections as the binary format
// requires them.
var sectionRank = map[byte]int{
	secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5, secGlobal: 6,
	secExport: 7, secStart: 8, secElement: 9, secDataCount: 10, secCode: 11, secData: 12,
}

var header = []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}

// Stats describes what Instrument did.
type Stats struct {
	Functions    int // function bodies rewritten
	Loops        int // loop headers given a fuel check
	EntryChecks  int // function entries given a fuel check
	DroppedDebug int // DWARF custom sections dropped
}

// Instrument returns a copy of the module wasm with fuel metering added
// (see the package documentation). It fails on malformed input and on
// instructions it does not know, naming the function and the opcode; it
// never panics. The output is not validated: an invalid input may give an
// invalid output, which the engine then refuses.
func Instrument(wasm []byte) ([]byte, error) {
	out, _, err := InstrumentStats(wasm)
	return out, err
}

// InstrumentStats is Instrument that also reports what it rewrote.
func InstrumentStats(wasm []byte) ([]byte, Stats, error) {
	var st Stats
	m, err := parseModule(wasm)
	if err != nil {
		return nil, st, fmt.Errorf("meter: %w", err)
	}
	fuel := m.importedGlobals + m.definedGlobals

	out := make([]byte, 0, len(wasm)+len(wasm)/8+64)
	out = append(out, header...)
	globalDone, exportDone := false, false
	emitGlobal := func() {
		var body []byte
		body = appendU32(body, m.definedGlobals+1)
		if m.global != nil {
			body = append(body, m.global.rest...)
		}
		body = append(body, 0x7e, 0x01, opI64Const, 0x00, opEnd) // mut i64 = 0
		out = appendSection(out, secGlobal, body)
		globalDone = true
	}
	emitExport := func() {
		var body []byte
		body = appendU32(body, m.exports+1)
		if m.export != nil {
			body = append(body, m.export.rest...)
		}
		body = appendU32(body, uint32(len(GlobalName)))
		body = append(body, GlobalName...)
		body = append(body, 0x03) // global
		body = appendU32(body, fuel)
		out = appendSection(out, secExport, body)
		exportDone = true
	}
	for _, s := range m.sections {
		if s.id == secCustom {
			if strings.HasPrefix(s.name, ".debug_") {
				st.DroppedDebug++
				continue
			}
			out = appendSection(out, secCustom, s.content)
			continue
		}
		rank := sectionRank[s.id]
		if !globalDone && rank >= sectionRank[secGlobal] {
			emitGlobal()
		}
		if !exportDone && rank >= sectionRank[secExport] {
			emitExport()
		}
		switch s.id {
		case secGlobal, secExport:
			// emitted above from the parsed contents
		case secCode:
			body, err := m.instrumentCode(s.content, fuel, &st)
			if err != nil {
				return nil, st, fmt.Errorf("meter: %w", err)
			}
			out = appendSection(out, secCode, body)
		default:
			out = appendSection(out, s.id, s.content)
		}
	}
	if !globalDone {
		emitGlobal()
	}
	if !exportDone {
		emitExport()
	}
	return out, st, nil
}

// section is one section of the input.
type section struct {
	id      byte
	name    string // custom sections
	content []byte
}

// vecSection is a parsed vector section: its count and the bytes after it.
type vecSection struct {
	count uint32
	rest  []byte
}

// module is what Instrument needs to know of the input.
type module struct {
	sections        []section
	importedFuncs   uint32
	importedGlobals uint32
	definedGlobals  uint32
	exports         uint32
	global          *vecSection
	export          *vecSection
}

func parseModule(wasm []byte) (*module, error) {
	if len(wasm) < len(header) || string(wasm[:4]) != "\x00asm" {
		return nil, errors.New("not a WebAssembly module (no \\0asm magic)")
	}
	if string(wasm[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("unsupported binary format version %x", wasm[4:8])
	}
	m := &module{}
	r := &reader{b: wasm, pos: len(header)}
	lastRank := 0
	for !r.eof() {
		start := r.pos
		id, _ := r.byte()
		size, err := r.u32()
		if err != nil {
			return nil, fmt.Errorf("section header at offset %d: %w", start, err)
		}
		content, err := r.bytes(int(size))
		if err != nil {
			return nil, fmt.Errorf("section %d at offset %d: size %d runs past the end", id, start, size)
		}
		s := section{id: id, content: content}
		if id == secCustom {
			cr := &reader{b: content}
			if s.name, err = cr.name(); err != nil {
				return nil, fmt.Errorf("custom section at offset %d: name: %w", start, err)
			}
			m.sections = append(m.sections, s)
			continue
		}
		if id == secTag {
			return nil, fmt.Errorf("tag section (exception handling): %w", ErrUnsupported)
		}
		rank, ok := sectionRank[id]
		if !ok {
			return nil, fmt.Errorf("unknown section id %d at offset %d", id, start)
		}
		if rank <= lastRank {
			return nil, fmt.Errorf("section %d at offset %d is out of order or repeated", id, start)
		}
		lastRank = rank
		if id != secStart && id != secDataCount {
			// Every element of a vector takes at least one byte: a larger
			// count is malformed (and would make wazero v1.12 allocate
			// for it before noticing).
			cr := &reader{b: content}
			n, err := cr.u32()
			if err != nil {
				return nil, fmt.Errorf("section %d at offset %d: count: %w", id, start, err)
			}
			if int64(n) > int64(len(content)-cr.pos) {
				return nil, fmt.Errorf("section %d at offset %d: %d elements in %d bytes: %w", id, start, n, len(content)-cr.pos, errImplausibleCount)
			}
		}
		switch id {
		case secImport:
			if err := m.parseImports(content); err != nil {
				return nil, fmt.Errorf("import section: %w", err)
			}
		case secGlobal:
			v, err := parseVec(content)
			if err != nil {
				return nil, fmt.Errorf("global section: %w", err)
			}
			m.global, m.definedGlobals = v, v.count
		case secExport:
			v, err := parseVec(content)
			if err != nil {
				return nil, fmt.Errorf("export section: %w", err)
			}
			if err := checkExports(v); err != nil {
				return nil, fmt.Errorf("export section: %w", err)
			}
			m.export, m.exports = v, v.count
		}
		m.sections = append(m.sections, s)
	}
	if m.importedGlobals+m.definedGlobals < m.importedGlobals || m.exports == ^uint32(0) {
		return nil, errors.New("too many globals or exports")
	}
	return m, nil
}

func parseVec(content []byte) (*vecSection, error) {
	r := &reader{b: content}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if n == ^uint32(0) {
		return nil, fmt.Errorf("count %d leaves no room for one more", n)
	}
	return &vecSection{count: n, rest: content[r.pos:]}, nil
}

func (m *module) parseImports(content []byte) error {
	r := &reader{b: content}
	n, err := r.u32()
	if err != nil {
		return err
	}
	for k := uint32(0); k < n; k++ {
		if _, err := r.name(); err != nil {
			return fmt.Errorf("import %d: module name: %w", k, err)
		}
		if _, err := r.name(); err != nil {
			return fmt.Errorf("import %d: name: %w", k, err)
		}
		kind, err := r.byte()
		if err != nil {
			return fmt.Errorf("import %d: %w", k, err)
		}
		switch kind {
		case 0x00: // function: type index
			_, err = r.u32()
			m.importedFuncs++
		case 0x01: // table: reference type, limits
			if _, err = r.byte(); err == nil {
				err = r.limits()
			}
		case 0x02: // memory
			err = r.limits()
		case 0x03: // global: value type, mutability
			_, err = r.bytes(2)
			m.importedGlobals++
		case 0x04:
			return fmt.Errorf("import %d: tag import (exception handling): %w", k, ErrUnsupported)
		default:
			return fmt.Errorf("import %d: unknown import kind %#x", k, kind)
		}
		if err != nil {
			return fmt.Errorf("import %d: %w", k, err)
		}
	}
	if !r.eof() {
		return fmt.Errorf("%d bytes after the last import", len(content)-r.pos)
	}
	return nil
}

// checkExports refuses a module that already exports GlobalName.
func checkExports(v *vecSection) error {
	r := &reader{b: v.rest}
	for k := uint32(0); k < v.count; k++ {
		name, err := r.name()
		if err != nil {
			return fmt.Errorf("export %d: %w", k, err)
		}
		if name == GlobalName {
			return fmt.Errorf("the module already exports %q", GlobalName)
		}
		if _, err := r.byte(); err != nil {
			return fmt.Errorf("export %d: %w", k, err)
		}
		if _, err := r.u32(); err != nil {
			return fmt.Errorf("export %d: %w", k, err)
		}
	}
	return nil
}

func appendSection(out []byte, id byte, content []byte) []byte {
	out = append(out, id)
	out = appendU32(out, uint32(len(content)))
	return append(out, content...)
}

// fuelCheck returns the instructions that consume one unit of fuel from
// global fuel and trap when it goes below zero.
func fuelCheck(fuel uint32) []byte {
	var c []byte
	c = append(c, opGlobalGet)
	c = appendU32(c, fuel)
	c = append(c, opI64Const, 0x01, opI64Sub, opGlobalSet)
	c = appendU32(c, fuel)
	c = append(c, opGlobalGet)
	c = appendU32(c, fuel)
	c = append(c, opI64Const, 0x00, opI64LtS, opIf, blockTypeEmpty, opUnreachable, opEnd)
	return c
}

const opI64LtS = 0x53

// instrumentCode rewrites the code section.
func (m *module) instrumentCode(content []byte, fuel uint32, st *Stats) ([]byte, error) {
	r := &reader{b: content}
	n, err := r.u32()
	if err != nil {
		return nil, fmt.Errorf("code section: %w", err)
	}
	check := fuelCheck(fuel)
	out := make([]byte, 0, len(content)+len(content)/4)
	out = appendU32(out, n)
	var loops []int // offsets in the body just after each loop instruction
	var body []byte
	for k := uint32(0); k < n; k++ {
		fn := m.importedFuncs + k
		size, err := r.u32()
		if err != nil {
			return nil, fmt.Errorf("function %d: body size: %w", fn, err)
		}
		code, err := r.bytes(int(size))
		if err != nil {
			return nil, fmt.Errorf("function %d: body of %d bytes runs past the code section", fn, size)
		}
		loops = loops[:0]
		entry, start, err := scanBody(code, &loops)
		if err != nil {
			return nil, fmt.Errorf("function %d: %w", fn, err)
		}
		body = body[:0]
		body = append(body, code[:start]...) // locals
		if entry {
			body = append(body, check...)
			st.EntryChecks++
		}
		prev := start
		for _, at := range loops {
			body = append(body, code[prev:at]...)
			body = append(body, check...)
			prev = at
		}
		body = append(body, code[prev:]...)
		st.Loops += len(loops)
		st.Functions++
		if uint64(len(body)) > 0xffffffff {
			return nil, fmt.Errorf("function %d: instrumented body too large", fn)
		}
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	if !r.eof() {
		return nil, fmt.Errorf("code section: %d bytes after the last function body", len(content)-r.pos)
	}
	return out, nil
}

// scanBody decodes one function body: it returns the offset where the
// instructions start (after the locals), appends to loops the offset just
// after each loop instruction, and reports whether the entry needs a fuel
// check: the body calls a function and does not reach a loop header on
// every entry before any call or branch.
func scanBody(code []byte, loops *[]int) (entry bool, start int, err error) {
	r := &reader{b: code}
	groups, err := r.u32()
	if err != nil {
		return false, 0, fmt.Errorf("locals: %w", err)
	}
	for g := uint32(0); g < groups; g++ {
		if _, err := r.u32(); err != nil {
			return false, 0, fmt.Errorf("locals: %w", err)
		}
		c, err := r.byte()
		if err != nil {
			return false, 0, fmt.Errorf("locals: %w", err)
		}
		if !isValType(c) {
			return false, 0, fmt.Errorf("locals: unknown value type %#x", c)
		}
	}
	start = r.pos
	prefix := true // on the straight-line path every entry runs
	entryMetered, calls := false, false
	depth := 0
	for !r.eof() {
		at := r.pos
		info, err := r.instr()
		if err != nil {
			return false, 0, fmt.Errorf("instruction at body offset %d: %w", at, err)
		}
		if info.op == opLoop {
			*loops = append(*loops, r.pos)
			if prefix {
				entryMetered = true
			}
		}
		if info.call || info.control {
			prefix = false
		}
		calls = calls || info.call
		switch info.op {
		case opBlock, opLoop, opIf:
			depth++
		case opEnd:
			depth--
			if depth < 0 && !r.eof() {
				return false, 0, fmt.Errorf("instructions after the function's final end at body offset %d", r.pos)
			}
		}
	}
	if depth != -1 {
		return false, 0, errors.New("body does not end with end")
	}
	return calls && !entryMetered, start, nil
}
