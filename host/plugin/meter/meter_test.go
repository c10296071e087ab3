package meter

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

const (
	i32 = 0x7f
	i64 = 0x7e
)

// loopModule has three functions (no imports):
//
//	run(n i32):  loop { n--; br_if n != 0 }          n iterations
//	tree(n i32): if n != 0 { tree(n-1); tree(n-1) }  no loop, 2^(n+1)-1 calls
//	spin():      loop { br 0 }                        endless
func loopModule() *testModule {
	return &testModule{
		types: []funcType{{params: []byte{i32}}, {}},
		funcs: []uint32{0, 0, 1},
		exports: []testExport{
			{"run", 0, 0}, {"tree", 0, 1}, {"spin", 0, 2},
		},
		bodies: [][]byte{
			{0x03, 0x40, 0x20, 0x00, 0x41, 0x01, 0x6b, 0x22, 0x00, 0x0d, 0x00, 0x0b, 0x0b},
			{0x20, 0x00, 0x04, 0x40,
				0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x01,
				0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x01,
				0x0b, 0x0b},
			{0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b},
		},
	}
}

// richModule uses an imported function and global, a defined global, an
// existing export, memory with a passive data segment, multi-value block
// types, a loop with a parameter, sign extension, saturating truncation,
// bulk memory, reference types, br_table and typed select. rich() returns
// a value that depends on all of them.
func richModule() *testModule {
	f32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32([]byte{0x43}, v) }
	body := []byte{0x10, 0x00}                                                      // call tick
	body = append(body, 0x02, 0x02, 0x41, 0x01, 0x41, 0x02, 0x0b, 0x6a, 0x21, 0x00) // block (-> i32 i32) 1 2 end; add; local.set 0
	body = append(body, 0x41, 0x05, 0x03, 0x03,                                     // 5; loop (i32 -> i32)
		0x41, 0x01, 0x6b, 0x22, 0x00, 0x20, 0x00, 0x0d, 0x00, 0x0b, 0x1a) // -1; tee 0; get 0; br_if 0; end; drop
	body = append(body, 0x41, 0x80, 0x01, 0xc0, 0x1a)                               // i32.extend8_s
	body = append(body, f32(0x3fc00000)...)                                         // 1.5
	body = append(body, 0xfc, 0x00, 0x1a)                                           // i32.trunc_sat_f32_s
	body = append(body, 0x41, 0x00, 0x41, 0x00, 0x41, 0x04, 0xfc, 0x08, 0x00, 0x00) // memory.init 0
	body = append(body, 0xfc, 0x09, 0x00)                                           // data.drop 0
	body = append(body, 0x41, 0x08, 0x41, 0x00, 0x41, 0x04, 0xfc, 0x0a, 0x00, 0x00) // memory.copy 8 <- 0, 4
	body = append(body, 0x41, 0x10, 0x41, 0x2a, 0x41, 0x04, 0xfc, 0x0b, 0x00)       // memory.fill 16, 42, 4
	body = append(body, 0xd0, 0x70, 0xd1, 0x1a)                                     // ref.null func; ref.is_null
	body = append(body, 0x02, 0x40, 0x02, 0x40, 0x41, 0x01, 0x0e, 0x01, 0x00, 0x01, 0x0b, 0x0b)
	body = append(body, 0x42, 0x7f, 0x1a)                                     // i64.const -1
	body = append(body, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0x1a)                   // f64.const 0
	body = append(body, 0x23, 0x01, 0x41, 0x01, 0x6a, 0x24, 0x01)             // global 1 += 1
	body = append(body, 0x41, 0x01, 0x41, 0x02, 0x41, 0x00, 0x1c, 0x01, 0x7f) // select (i32) -> 2
	body = append(body, 0x23, 0x00, 0x6a)                                     // + imported global
	body = append(body, 0x41, 0x08, 0x28, 0x02, 0x00, 0x6a)                   // + i32.load [8]
	body = append(body, 0x41, 0x10, 0x2d, 0x00, 0x00, 0x6a)                   // + i32.load8_u [16]
	body = append(body, 0x20, 0x00, 0x6a, 0x0b)                               // + local 0; end
	return &testModule{
		types: []funcType{{}, {results: []byte{i32}}, {results: []byte{i32, i32}}, {params: []byte{i32}, results: []byte{i32}}},
		imports: []testImport{
			{"env", "tick", 0x00, []byte{0x00}},
			{"envg", "base", 0x03, []byte{i32, 0x00}},
		},
		funcs:   []uint32{1},
		memory:  true,
		globals: [][]byte{{i32, 0x01, 0x41, 0x0a, 0x0b}},
		exports: []testExport{{"rich", 0, 1}, {"g", 3, 1}, {"memory", 2, 0}},
		data:    [][]byte{[]byte("abcd")},
		bodies:  [][]byte{body},
		locals:  [][]byte{{0x01, 0x01, i32}},
		customs: []string{"name", ".debug_info", "producers"},
	}
}

// richResult is what rich() returns with env.base = 1000.
const richResult = 2 + 1000 + 0x64636261 + 42

// instance instantiates wasm in a fresh compiler runtime with env.tick and
// env.base.
func instance(t *testing.T, wasm []byte, ticks *int) api.Module {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	t.Cleanup(func() { rt.Close(ctx) })
	env := rt.NewHostModuleBuilder("env").
		NewFunctionBuilder().WithFunc(func() { *ticks++ }).Export("tick")
	if _, err := env.Instantiate(ctx); err != nil {
		t.Fatal(err)
	}
	// An imported global needs a module exporting it: a tiny one by hand.
	base := (&testModule{
		globals: [][]byte{{i32, 0x00, 0x41, 0xe8, 0x07, 0x0b}}, // 1000
		exports: []testExport{{"base", 3, 0}},
	}).bytes()
	if _, err := rt.InstantiateWithConfig(ctx, base, wazero.NewModuleConfig().WithName("envg")); err != nil {
		t.Fatal(err)
	}
	compiled, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatalf("wazero refuses the module: %v", err)
	}
	m, err := rt.InstantiateModule(ctx, compiled, wazero.NewModuleConfig())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func fuelOf(t *testing.T, m api.Module) api.MutableGlobal {
	t.Helper()
	g, ok := m.ExportedGlobal(GlobalName).(api.MutableGlobal)
	if !ok {
		t.Fatalf("no mutable global %s exported", GlobalName)
	}
	if g.Type() != api.ValueTypeI64 {
		t.Fatalf("%s has type %s", GlobalName, api.ValueTypeName(g.Type()))
	}
	return g
}

func call(t *testing.T, m api.Module, fn string, args ...uint64) ([]uint64, error) {
	t.Helper()
	f := m.ExportedFunction(fn)
	if f == nil {
		t.Fatalf("no export %s", fn)
	}
	return f.Call(context.Background(), args...)
}

func TestLoopConsumesOneFuelPerIteration(t *testing.T) {
	out, st, err := InstrumentStats(loopModule().bytes())
	if err != nil {
		t.Fatal(err)
	}
	if st.Loops != 2 || st.EntryChecks != 1 || st.Functions != 3 {
		t.Errorf("stats %+v, want 2 loops, 1 entry check (tree), 3 functions", st)
	}
	var ticks int
	m := instance(t, out, &ticks)
	fuel := fuelOf(t, m)
	for _, n := range []uint64{1, 7, 1000, 123456} {
		fuel.Set(5_000_000)
		if _, err := call(t, m, "run", n); err != nil {
			t.Fatalf("run(%d): %v", n, err)
		}
		if used := 5_000_000 - int64(fuel.Get()); used != int64(n) {
			t.Errorf("run(%d) used %d fuel, want %d", n, used, n)
		}
	}
	// A budget of exactly n lets n iterations run; n-1 traps with the fuel
	// at -1.
	fuel.Set(1000)
	if _, err := call(t, m, "run", 1000); err != nil {
		t.Fatalf("run(1000) with 1000 fuel: %v", err)
	}
	if got := fuel.Get(); got != 0 {
		t.Errorf("fuel after an exact budget = %d, want 0", int64(got))
	}
	fuel.Set(999)
	_, err = call(t, m, "run", 1000)
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("run(1000) with 999 fuel: %v, want an unreachable trap", err)
	}
	if got := int64(fuel.Get()); got != -1 {
		t.Errorf("fuel after running out = %d, want -1", got)
	}
	// The module still works after the trap.
	fuel.Set(10)
	if _, err := call(t, m, "run", 3); err != nil || fuel.Get() != 7 {
		t.Errorf("run(3) after a trap: %v, fuel %d", err, fuel.Get())
	}
}

func TestEndlessLoopTraps(t *testing.T) {
	out, err := Instrument(loopModule().bytes())
	if err != nil {
		t.Fatal(err)
	}
	var ticks int
	m := instance(t, out, &ticks)
	fuel := fuelOf(t, m)
	fuel.Set(50_000_000)
	_, err = call(t, m, "spin")
	if err == nil {
		t.Fatal("endless loop returned")
	}
	if got := int64(fuel.Get()); got != -1 {
		t.Errorf("fuel after the endless loop = %d, want -1", got)
	}
}

func TestCallTreeIsMetered(t *testing.T) {
	out, err := Instrument(loopModule().bytes())
	if err != nil {
		t.Fatal(err)
	}
	var ticks int
	m := instance(t, out, &ticks)
	fuel := fuelOf(t, m)
	fuel.Set(1 << 20)
	if _, err := call(t, m, "tree", 3); err != nil {
		t.Fatal(err)
	}
	if used := 1<<20 - fuel.Get(); used != 15 {
		t.Errorf("tree(3) used %d fuel, want 15 (one per call)", used)
	}
	// tree(60) would make 2^61 calls without a single loop header.
	fuel.Set(100_000)
	if _, err := call(t, m, "tree", 60); err == nil {
		t.Fatal("tree(60) returned")
	}
	if got := int64(fuel.Get()); got != -1 {
		t.Errorf("fuel after the call tree = %d, want -1", got)
	}
}

func TestBehaviourUnchanged(t *testing.T) {
	orig := richModule().bytes()
	out, st, err := InstrumentStats(orig)
	if err != nil {
		t.Fatal(err)
	}
	if st.Loops != 1 || st.EntryChecks != 1 || st.DroppedDebug != 1 {
		t.Errorf("stats %+v, want 1 loop, 1 entry check, 1 dropped .debug_info", st)
	}
	var ticksOrig, ticksInst int
	mo := instance(t, orig, &ticksOrig)
	mi := instance(t, out, &ticksInst)
	fuel := fuelOf(t, mi)
	fuel.Set(100)
	ro, err := call(t, mo, "rich")
	if err != nil {
		t.Fatal(err)
	}
	ri, err := call(t, mi, "rich")
	if err != nil {
		t.Fatal(err)
	}
	if ro[0] != richResult || ri[0] != ro[0] {
		t.Errorf("rich() = %#x original, %#x instrumented, want %#x", ro[0], ri[0], richResult)
	}
	if used := 100 - fuel.Get(); used != 6 {
		t.Errorf("rich() used %d fuel, want 6 (entry + 5 iterations)", used)
	}
	if ticksOrig != 1 || ticksInst != 1 {
		t.Errorf("tick called %d and %d times", ticksOrig, ticksInst)
	}
	// The module's own global and exports keep their indices.
	if g := mi.ExportedGlobal("g"); g == nil || g.Get() != 11 {
		t.Errorf("exported global g = %v, want 11", g)
	}
	mem, ok := mi.Memory().Read(0, 20)
	if !ok || string(mem[8:12]) != "abcd" || mem[16] != 42 {
		t.Errorf("memory after rich() = %q", mem)
	}
	// Custom sections other than DWARF are kept.
	names := customNames(t, out)
	if strings.Join(names, ",") != "name,producers" {
		t.Errorf("custom sections %v, want name,producers", names)
	}
}

func customNames(t *testing.T, wasm []byte) []string {
	t.Helper()
	var names []string
	r := &reader{b: wasm, pos: len(header)}
	for !r.eof() {
		id, _ := r.byte()
		size, err := r.u32()
		if err != nil {
			t.Fatal(err)
		}
		content, err := r.bytes(int(size))
		if err != nil {
			t.Fatal(err)
		}
		if id == secCustom {
			n, err := (&reader{b: content}).name()
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
	}
	return names
}

func TestModuleWithoutGlobalsOrExports(t *testing.T) {
	// Only a type, a function and its code: Instrument must create the
	// global and export sections in the right order.
	mod := &testModule{
		types:  []funcType{{}},
		funcs:  []uint32{0},
		bodies: [][]byte{{0x03, 0x40, 0x0b, 0x0b}},
	}
	out, err := Instrument(mod.bytes())
	if err != nil {
		t.Fatal(err)
	}
	var ticks int
	m := instance(t, out, &ticks)
	if g := fuelOf(t, m); g.Get() != 0 {
		t.Errorf("initial fuel %d, want 0", g.Get())
	}
	// The smallest module: the header alone.
	out, err = Instrument(header)
	if err != nil {
		t.Fatal(err)
	}
	instance(t, out, &ticks)
}

// TestStartFunctionHasNoFuel: the fuel starts at 0, so a start function
// that reaches a loop header traps at instantiation instead of running
// unbounded before the host can set a budget.
func TestStartFunctionHasNoFuel(t *testing.T) {
	zero := uint32(0)
	mod := &testModule{
		types:  []funcType{{}},
		funcs:  []uint32{0},
		start:  &zero,
		bodies: [][]byte{{0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b}}, // loop { br 0 }
	}
	out, err := Instrument(mod.bytes())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	defer rt.Close(ctx)
	if _, err := rt.Instantiate(ctx, out); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("instantiating an endless start function: %v, want an unreachable trap", err)
	}
}

func TestRefusals(t *testing.T) {
	withBody := func(body ...byte) []byte {
		return (&testModule{
			types:   []funcType{{}},
			imports: []testImport{{"env", "tick", 0x00, []byte{0x00}}},
			funcs:   []uint32{0, 0},
			bodies:  [][]byte{{0x0b}, body},
		}).bytes()
	}
	for _, tc := range []struct {
		name string
		wasm []byte
		want string
	}{
		{"simd", withBody(0xfd, 0x0c, 0x0b), "function 2: instruction at body offset 1: unsupported opcode 0xfd (SIMD prefix)"},
		{"gc", withBody(0xfb, 0x00, 0x0b), "function 2: instruction at body offset 1: unsupported opcode 0xfb"},
		{"atomics", withBody(0x01, 0xfe, 0x00, 0x0b), "function 2: instruction at body offset 2: unsupported opcode 0xfe"},
		{"tail call", withBody(0x12, 0x00, 0x0b), "unsupported opcode 0x12 (tail calls"},
		{"try_table", withBody(0x1f, 0x40, 0x00, 0x0b, 0x0b), "unsupported opcode 0x1f (exception handling)"},
		{"unknown fc", withBody(0xfc, 0x12, 0x0b), "unsupported opcode 0xfc 18"},
		{"unknown", withBody(0xe0, 0x0b), "unsupported opcode 0xe0"},
		{"truncated", withBody(0x41), "function 2: instruction at body offset 1: unexpected end of input"},
		{"no end", withBody(0x01), "function 2: body does not end with end"},
		{"after end", withBody(0x0b, 0x01, 0x0b), "instructions after the function's final end"},
		{"magic", []byte("\x00asx\x01\x00\x00\x00"), "no \\0asm magic"},
		{"version", []byte("\x00asm\x02\x00\x00\x00"), "unsupported binary format version"},
		{"section size", []byte("\x00asm\x01\x00\x00\x00\x01\x05\x00"), "runs past the end"},
		{"order", append((&testModule{types: []funcType{{}}}).bytes(), 0x01, 0x01, 0x00), "out of order or repeated"},
		{"fuel export", (&testModule{
			types: []funcType{{}}, funcs: []uint32{0}, bodies: [][]byte{{0x0b}},
			exports: []testExport{{GlobalName, 0, 0}},
		}).bytes(), `already exports "wasmvmm_fuel"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Instrument(tc.wasm)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(tc.name, "simd") && !errors.Is(err, ErrUnsupported) {
				t.Errorf("%v does not wrap ErrUnsupported", err)
			}
		})
	}
}

func TestLEB128(t *testing.T) {
	for _, v := range []uint32{0, 1, 0x7f, 0x80, 0x3fff, 0x4000, 1<<28 - 1, 1 << 28, 0xffffffff} {
		r := &reader{b: appendU32(nil, v)}
		if got, err := r.u32(); err != nil || got != v || !r.eof() {
			t.Errorf("u32 %#x: got %#x, %v", v, got, err)
		}
	}
	for _, v := range []int64{0, 1, -1, 63, 64, -64, -65, 1<<31 - 1, -1 << 31, 1<<63 - 1, -1 << 63} {
		r := &reader{b: appendS64(nil, v)}
		if got, err := r.signed(64); err != nil || got != v || !r.eof() {
			t.Errorf("s64 %d: got %d, %v", v, got, err)
		}
		r = &reader{b: appendS64(nil, v)}
		got, err := r.signed(32)
		if fits := v == int64(int32(v)); fits != (err == nil) || (fits && got != v) {
			t.Errorf("s32 %d: got %d, %v", v, got, err)
		}
	}
	for _, bad := range [][]byte{
		{0x80, 0x80, 0x80, 0x80, 0x10},       // u32 over 32 bits
		{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, // u32 too long
		{0x80},                               // truncated
	} {
		r := &reader{b: bad}
		if _, err := r.u32(); err == nil {
			t.Errorf("u32 % x accepted", bad)
		}
	}
	r := &reader{b: []byte{0xff, 0xff, 0xff, 0xff, 0x4f}} // s32 with bad sign bits
	if _, err := r.signed(32); err == nil {
		t.Error("s32 with inconsistent high bits accepted")
	}
}
