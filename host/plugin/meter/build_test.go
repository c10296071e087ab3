package meter

// A minimal module writer for the tests: every byte of the function bodies
// is written by hand in the tests; this only frames sections.

type funcType struct{ params, results []byte }

type testImport struct {
	module, name string
	kind         byte
	desc         []byte // encoded description after the kind byte
}

type testExport struct {
	name  string
	kind  byte
	index uint32
}

type testModule struct {
	types   []funcType
	imports []testImport
	funcs   []uint32 // type index of each defined function
	memory  bool     // one memory of 1 page
	globals [][]byte // encoded global entries (type, mut, init expr)
	exports []testExport
	start   *uint32  // start function
	data    [][]byte // passive data segments
	bodies  [][]byte // instructions of each function, final end included
	locals  [][]byte // encoded locals vector of each function (nil: none)
	customs []string // custom section names (empty contents)
}

func vec(items ...[]byte) []byte {
	out := appendU32(nil, uint32(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func name(s string) []byte { return append(appendU32(nil, uint32(len(s))), s...) }

func (m *testModule) bytes() []byte {
	out := append([]byte(nil), header...)
	if len(m.types) > 0 {
		var ts [][]byte
		for _, t := range m.types {
			e := []byte{0x60}
			e = append(e, appendU32(nil, uint32(len(t.params)))...)
			e = append(e, t.params...)
			e = append(e, appendU32(nil, uint32(len(t.results)))...)
			e = append(e, t.results...)
			ts = append(ts, e)
		}
		out = appendSection(out, secType, vec(ts...))
	}
	if len(m.imports) > 0 {
		var is [][]byte
		for _, im := range m.imports {
			e := append(name(im.module), name(im.name)...)
			e = append(e, im.kind)
			is = append(is, append(e, im.desc...))
		}
		out = appendSection(out, secImport, vec(is...))
	}
	if len(m.funcs) > 0 {
		var fs [][]byte
		for _, f := range m.funcs {
			fs = append(fs, appendU32(nil, f))
		}
		out = appendSection(out, secFunction, vec(fs...))
	}
	if m.memory {
		out = appendSection(out, secMemory, vec([]byte{0x00, 0x01}))
	}
	if len(m.globals) > 0 {
		out = appendSection(out, secGlobal, vec(m.globals...))
	}
	if len(m.exports) > 0 {
		var es [][]byte
		for _, e := range m.exports {
			es = append(es, append(append(name(e.name), e.kind), appendU32(nil, e.index)...))
		}
		out = appendSection(out, secExport, vec(es...))
	}
	if m.start != nil {
		out = appendSection(out, secStart, appendU32(nil, *m.start))
	}
	if len(m.data) > 0 {
		out = appendSection(out, secDataCount, appendU32(nil, uint32(len(m.data))))
	}
	for _, c := range m.customs {
		out = appendSection(out, secCustom, name(c))
	}
	if len(m.bodies) > 0 {
		var bs [][]byte
		for k, b := range m.bodies {
			locals := []byte{0x00}
			if k < len(m.locals) && m.locals[k] != nil {
				locals = m.locals[k]
			}
			body := append(append([]byte(nil), locals...), b...)
			bs = append(bs, append(appendU32(nil, uint32(len(body))), body...))
		}
		out = appendSection(out, secCode, vec(bs...))
	}
	if len(m.data) > 0 {
		var ds [][]byte
		for _, d := range m.data {
			ds = append(ds, append([]byte{0x01}, append(appendU32(nil, uint32(len(d))), d...)...))
		}
		out = appendSection(out, secData, vec(ds...))
	}
	return out
}
