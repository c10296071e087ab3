package sdk

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"

	"wasmvmm/abi"
)

// wasmType maps a Go parameter type of a wasmimport/wasmexport declaration
// to its WebAssembly value type.
func wasmType(t *testing.T, e ast.Expr) abi.ValType {
	t.Helper()
	switch x := e.(type) {
	case *ast.Ident:
		switch x.Name {
		case "int32", "uint32":
			return abi.I32
		case "int64", "uint64":
			return abi.I64
		}
	case *ast.SelectorExpr:
		if x.Sel.Name == "Pointer" {
			return abi.I32 // linear memory addresses are 32-bit
		}
	}
	t.Fatalf("unexpected boundary type %#v", e)
	return 0
}

func fieldTypes(t *testing.T, fl *ast.FieldList) []abi.ValType {
	var out []abi.ValType
	if fl == nil {
		return out
	}
	for _, f := range fl.List {
		n := len(f.Names)
		if n == 0 {
			n = 1
		}
		for i := 0; i < n; i++ {
			out = append(out, wasmType(t, f.Type))
		}
	}
	return out
}

func sameTypes(a, b []abi.ValType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// directives returns, for each function in file, the argument of the
// named //go: directive and the function's signature.
func directives(t *testing.T, file, directive string) map[string]*ast.FuncType {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*ast.FuncType{}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Doc == nil {
			continue
		}
		for _, c := range fn.Doc.List {
			if rest, ok := strings.CutPrefix(c.Text, "//go:"+directive+" "); ok {
				out[strings.Fields(rest)[len(strings.Fields(rest))-1]] = fn.Type
				if directive == "wasmimport" && strings.Fields(rest)[0] != abi.HostModule {
					t.Errorf("%s imports from module %s, want %s", fn.Name.Name, strings.Fields(rest)[0], abi.HostModule)
				}
			}
		}
	}
	return out
}

// TestImportsMatchABI checks every wasmimport against abi.HostFunctions.
func TestImportsMatchABI(t *testing.T) {
	got := directives(t, "hostcalls_wasip1.go", "wasmimport")
	for name, sig := range abi.HostFunctions {
		ft, ok := got[name]
		if !ok {
			t.Errorf("host function %s has no wasmimport", name)
			continue
		}
		var results *ast.FieldList = ft.Results
		if p := fieldTypes(t, ft.Params); !sameTypes(p, sig.Params) {
			t.Errorf("%s params %v, ABI %v", name, p, sig.Params)
		}
		if r := fieldTypes(t, results); !sameTypes(r, sig.Results) {
			t.Errorf("%s results %v, ABI %v", name, r, sig.Results)
		}
	}
	for name := range got {
		if _, ok := abi.HostFunctions[name]; !ok {
			t.Errorf("wasmimport %s is not an ABI host function", name)
		}
	}
}

// TestExportsMatchABI checks every wasmexport against abi.PluginExports
// and the version marker against abi.MarkerName.
func TestExportsMatchABI(t *testing.T) {
	got := directives(t, "exports_wasip1.go", "wasmexport")
	marker := abi.MarkerName(abi.Major, abi.Minor)
	if ft, ok := got[marker]; !ok {
		t.Errorf("no marker export %s", marker)
	} else if len(fieldTypes(t, ft.Params))+len(fieldTypes(t, ft.Results)) != 0 {
		t.Errorf("marker %s must take and return nothing", marker)
	}
	for name, ex := range abi.PluginExports {
		ft, ok := got[name]
		if !ok {
			t.Errorf("plugin export %s (required %v) is missing", name, ex.Required)
			continue
		}
		if p := fieldTypes(t, ft.Params); !sameTypes(p, ex.Signature.Params) {
			t.Errorf("%s params %v, ABI %v", name, p, ex.Signature.Params)
		}
		if r := fieldTypes(t, ft.Results); !sameTypes(r, ex.Signature.Results) {
			t.Errorf("%s results %v, ABI %v", name, r, ex.Signature.Results)
		}
	}
	for name := range got {
		if _, ok := abi.PluginExports[name]; !ok && name != marker {
			t.Errorf("export %s is not in the ABI", name)
		}
	}
}

func TestStatusError(t *testing.T) {
	if statusError(0) != nil || statusError(5) != nil {
		t.Fatal("non-negative result is an error")
	}
	for s := abi.ErrInvalid; s >= abi.ErrType; s-- {
		if err := statusError(int64(s)); err != s {
			t.Errorf("status %d -> %v", s, err)
		}
	}
	if err := statusError(-99); err != abi.Status(-99) {
		t.Errorf("unknown status -> %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = statusError(int64(abi.ErrAgain)) }); n != 0 {
		t.Errorf("statusError allocates %v times", n)
	}
}

func TestAllOnes(t *testing.T) {
	for size, want := range map[int32]uint64{1: 0xff, 2: 0xffff, 4: 0xffffffff, 8: ^uint64(0)} {
		if got := allOnes(size); got != want {
			t.Errorf("allOnes(%d) = %#x", size, got)
		}
	}
}

type pioOnly struct{ last uint32 }

func (d *pioOnly) Realize(*Realizer) error { return nil }
func (d *pioOnly) Reset()                  {}
func (d *pioOnly) PIORead(_ Region, off uint32, _ int) uint32 {
	return d.last + off
}
func (d *pioOnly) PIOWrite(_ Region, _ uint32, _ int, v uint32) { d.last = v }

// TestDispatchDoesNotAllocate: the export handlers add no allocation to
// register accesses, with or without a handler for the access kind.
func TestDispatchDoesNotAllocate(t *testing.T) {
	g := &registry{dev: &pioOnly{}}
	g.mmioRead(0, 0, 4) // the first call without a handler logs once
	allocs := testing.AllocsPerRun(1000, func() {
		g.pioWrite(0, 1, 1, 5)
		if g.pioRead(0, 1, 1) != 6 {
			panic("wrong value")
		}
		g.mmioWrite(0, 0, 4, 1)
		if g.mmioRead(0, 0, 4) != 0xffffffff {
			panic("wrong value")
		}
	})
	if allocs != 0 {
		t.Fatalf("dispatch allocates %v times per access", allocs)
	}
}
