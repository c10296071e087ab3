package meter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/tetratelabs/wazero"
)

// realPlugins are Go-built plugins, relative to this package's directory.
var realPlugins = map[string]string{
	"echo":         "../testdata/plugins/echo",
	"serial-16550": "../../../plugins/serial-16550",
	"virtio-blk":   "../../../plugins/virtio-blk",
}

var (
	buildOnce  sync.Once
	builtWasm  map[string][]byte
	buildError error
)

// buildRealPlugins builds the plugins of realPlugins with GOOS=wasip1
// once per test binary.
func buildRealPlugins(tb testing.TB) map[string][]byte {
	tb.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildError = fmt.Errorf("the go tool builds the real plugins: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "meter-plugins-")
		if err != nil {
			buildError = err
			return
		}
		defer os.RemoveAll(dir)
		builtWasm = map[string][]byte{}
		for name, src := range realPlugins {
			out := filepath.Join(dir, name+".wasm")
			cmd := exec.Command(goTool, "build", "-buildmode=c-shared", "-o", out, src)
			cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
			if b, err := cmd.CombinedOutput(); err != nil {
				buildError = fmt.Errorf("build %s: %v: %s", name, err, b)
				return
			}
			if builtWasm[name], err = os.ReadFile(out); err != nil {
				buildError = err
				return
			}
		}
	})
	if buildError != nil {
		tb.Fatal(buildError)
	}
	return builtWasm
}

// validator compiles modules with wazero's interpreter (which validates
// like the compiler, faster) to tell valid modules from invalid ones.
type validator struct {
	rt wazero.Runtime
}

func newValidator(tb testing.TB) *validator {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	tb.Cleanup(func() { rt.Close(ctx) })
	return &validator{rt: rt}
}

func (v *validator) check(wasm []byte) error {
	// wazero v1.12 allocates a section's vector by its declared count
	// before reading it, even past the end of the input: a 30-byte input
	// can exhaust memory. Instrument refuses such input before wazero sees
	// it; so does the validator.
	if err := framing(wasm); err != nil {
		return err
	}
	c, err := v.rt.CompileModule(context.Background(), wasm)
	if err != nil {
		return err
	}
	return c.Close(context.Background())
}

// framing checks what wazero v1.12 trusts before allocating: every
// section fits the input and no vector count exceeds its section's bytes.
func framing(wasm []byte) error {
	if len(wasm) < 8 {
		return errors.New("short")
	}
	for p := 8; p < len(wasm); {
		id := wasm[p]
		size, n := uleb(wasm[p+1:])
		if n == 0 || uint64(len(wasm)-p-1-n) < size {
			return errors.New("section past the end")
		}
		content := wasm[p+1+n : p+1+n+int(size)]
		if id != 0 && id != 8 && id != 12 {
			count, m := uleb(content)
			if m == 0 || count > uint64(len(content)-m) {
				return errors.New("implausible count")
			}
		}
		p += 1 + n + int(size)
	}
	return nil
}

// uleb decodes an unsigned LEB128 of up to 5 bytes and returns its length,
// 0 if malformed.
func uleb(b []byte) (uint64, int) {
	var v uint64
	for k := 0; k < 5 && k < len(b); k++ {
		v |= uint64(b[k]&0x7f) << (7 * k)
		if b[k]&0x80 == 0 {
			return v, k + 1
		}
	}
	return 0, 0
}

// opcodes returns the set of opcodes (with the 0xFC sub-opcode) the code
// section of wasm uses.
func opcodes(tb testing.TB, wasm []byte) []string {
	m, err := parseModule(wasm)
	if err != nil {
		tb.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range m.sections {
		if s.id != secCode {
			continue
		}
		r := &reader{b: s.content}
		n, _ := r.u32()
		for range n {
			size, _ := r.u32()
			code, _ := r.bytes(int(size))
			var loops []int
			_, start, err := scanBody(code, &loops)
			if err != nil {
				tb.Fatal(err)
			}
			br := &reader{b: code, pos: start}
			for !br.eof() {
				at := br.pos
				info, _ := br.instr()
				if info.op == opPrefixFC {
					sub, _ := (&reader{b: code, pos: at + 1}).u32()
					seen[fmt.Sprintf("0xfc %d", sub)] = true
				} else {
					seen[fmt.Sprintf("%#02x", info.op)] = true
				}
			}
		}
	}
	var ops []string
	for op := range seen {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	return ops
}

// TestRealPlugins instruments the Go-built plugins, checks wazero accepts
// the result, and logs which opcodes Go's wasip1 output uses.
func TestRealPlugins(t *testing.T) {
	v := newValidator(t)
	for name, wasm := range buildRealPlugins(t) {
		out, st, err := InstrumentStats(wasm)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := v.check(out); err != nil {
			t.Fatalf("%s: wazero refuses the instrumented module: %v", name, err)
		}
		if st.Loops == 0 || st.Functions == 0 {
			t.Errorf("%s: stats %+v", name, st)
		}
		t.Logf("%s: %d -> %d bytes, %+v", name, len(wasm), len(out), st)
		t.Logf("%s: opcodes %s", name, strings.Join(opcodes(t, wasm), " "))
	}
}

// genModule returns a valid module with one function whose body is a
// random nest of stack-neutral statements: loops, blocks, if/else,
// multi-value blocks, branches, calls.
func genModule(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var body []byte
	var stmts func(depth, labels int)
	stmts = func(depth, labels int) {
		for range rng.IntN(4) {
			switch k := rng.IntN(9); {
			case k == 0 && depth < 6:
				body = append(body, opLoop, blockTypeEmpty)
				stmts(depth+1, labels+1)
				body = append(body, opEnd)
			case k == 1 && depth < 6:
				body = append(body, opBlock, blockTypeEmpty)
				stmts(depth+1, labels+1)
				body = append(body, opEnd)
			case k == 2 && depth < 6:
				body = append(body, 0x41, byte(rng.IntN(2)), opIf, blockTypeEmpty)
				stmts(depth+1, labels+1)
				body = append(body, 0x05)
				stmts(depth+1, labels+1)
				body = append(body, opEnd)
			case k == 3 && labels > 0:
				body = append(body, 0x41, 0x00, 0x0d)
				body = appendU32(body, uint32(rng.IntN(labels)))
			case k == 4:
				body = append(body, opCall, 0x00)
			case k == 5:
				body = append(body, opBlock, 0x01, 0x41, 0x01, 0x41, 0x02, opEnd, 0x1a, 0x1a) // type 1: -> (i32 i32)
			case k == 6:
				body = append(body, opI64Const)
				body = appendS64(body, int64(rng.Uint64()))
				body = append(body, 0x1a)
			case k == 7:
				body = append(body, 0x41, 0x05, opLoop, 0x02, 0x41, 0x01, 0x6b, opEnd, 0x1a) // type 2: i32 -> i32
			default:
				body = append(body, 0x01)
			}
		}
	}
	stmts(0, 0)
	body = append(body, opEnd)
	return (&testModule{
		types:  []funcType{{}, {results: []byte{i32, i32}}, {params: []byte{i32}, results: []byte{i32}}},
		funcs:  []uint32{0},
		bodies: [][]byte{body},
	}).bytes()
}

func TestGeneratedModules(t *testing.T) {
	v := newValidator(t)
	for seed := range uint64(200) {
		wasm := genModule(seed)
		if err := v.check(wasm); err != nil {
			t.Fatalf("seed %d: the generator made an invalid module: %v", seed, err)
		}
		out, err := Instrument(wasm)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if err := v.check(out); err != nil {
			t.Fatalf("seed %d: wazero refuses the instrumented module: %v", seed, err)
		}
	}
}

// FuzzInstrument checks that Instrument never panics, and that a module
// wazero accepts is either instrumented into a module wazero accepts too
// or refused for an unsupported feature.
func FuzzInstrument(f *testing.F) {
	f.Add(loopModule().bytes())
	f.Add(richModule().bytes())
	f.Add(header)
	for seed := range uint64(8) {
		f.Add(genModule(seed))
	}
	if os.Getenv("METER_FUZZ_REAL") != "" || !testing.Short() {
		names := make([]string, 0, len(realPlugins))
		plugins := buildRealPlugins(f)
		for name := range plugins {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			f.Add(plugins[name])
		}
	}
	v := newValidator(f)
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, err := Instrument(wasm)
		valid := v.check(wasm) == nil
		if err != nil {
			if valid && !errors.Is(err, ErrUnsupported) && !strings.Contains(err.Error(), "already exports") {
				t.Fatalf("refused a module wazero accepts: %v", err)
			}
			return
		}
		if valid {
			if err := v.check(out); err != nil {
				t.Fatalf("wazero accepts the module but not its instrumented form: %v", err)
			}
		}
	})
}
