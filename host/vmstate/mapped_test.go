package vmstate

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasmvmm/host/guestmem"
)

// mappedSource fills two blocks (every third page of block 0, every second
// of block 1) and returns them with a patterned device registry.
func mappedSource(t testing.TB) ([]*guestmem.Block, *machineDevs) {
	t.Helper()
	src := allocBlocks(t, 70, 33)
	for i, b := range src {
		for p := uint64(0); p < b.Pages(); p++ {
			if p%uint64(3-i) == 0 {
				fill(b.Mem[p*PageSize:(p+1)*PageSize], byte(p)+byte(i)+1)
			}
		}
	}
	return src, newMachine(t, 9, testProps, testNeeded)
}

// writeMapped writes a mapped-ram stream of blocks and reg into a new file
// after prefix bytes of other data, and returns the file's bytes.
func writeMapped(t testing.TB, blocks []*guestmem.Block, reg *Registry, prefix int) []byte {
	t.Helper()
	return writeMappedAligned(t, blocks, reg, prefix, 0)
}

// writeMappedAligned is writeMapped with the pages regions aligned to align
// bytes (0: MappedRAMAlign), for compact fuzz seeds.
func writeMappedAligned(t testing.TB, blocks []*guestmem.Block, reg *Registry, prefix int, align int64) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mapped.bin")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{0xee}, prefix)); err != nil {
		t.Fatal(err)
	}
	w, err := NewMappedWriter(f, f, int64(prefix), testMachine)
	if err != nil {
		t.Fatal(err)
	}
	w.align = align
	w.MappedWorkers = 1 + prefix%2 // both the one- and the two-worker save
	st, err := w.RAMMapped(blocks)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(24 + 17); blocks[0].Pages() == 70 && st.Pages != want {
		t.Errorf("RAMMapped stats %+v, want %d pages", st, want)
	}
	if err := w.Complete(reg); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// mappedOpt is the load of a mapped-ram file held in data whose stream
// starts at base.
func mappedOpt(data []byte, base int, blocks []*guestmem.Block, reg *Registry) LoadOptions {
	return LoadOptions{Machine: testMachine, Blocks: blocks, Registry: reg,
		MappedRAM: &MappedRAM{File: bytes.NewReader(data), Base: int64(base), Size: int64(len(data)), Workers: 2}}
}

// headerAt returns the file offset of the mapped-ram header of the block
// named name.
func headerAt(t testing.TB, data []byte, name string) int {
	t.Helper()
	i := bytes.Index(data, append([]byte{byte(len(name))}, name...))
	if i < 0 {
		t.Fatalf("block %q not in the file", name)
	}
	return i + 1 + len(name) + 8
}

func TestMappedRoundTrip(t *testing.T) {
	src, m := mappedSource(t)
	// The devices as a normal stream loads them.
	want := newMachine(t, 0, testProps, testNeeded)
	if _, err := LoadBytes(saveStream(t, testMachine, src, m.reg), LoadOptions{Machine: testMachine, Blocks: allocBlocks(t, 70, 33), Registry: want.reg}); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []int{0, 4096 + 17} {
		data := writeMapped(t, src, m.reg, prefix)
		h := headerAt(t, data, "pc.ram")
		if v := binary.BigEndian.Uint32(data[h:]); v != MappedRAMHeaderVersion {
			t.Fatalf("header version %d", v)
		}
		bitmapOff := binary.BigEndian.Uint64(data[h+12:])
		pagesOff := binary.BigEndian.Uint64(data[h+20:])
		if bitmapOff != uint64(h+MappedRAMHeaderLen) || pagesOff%MappedRAMAlign != 0 {
			t.Errorf("layout: header at %#x, bitmap at %#x, pages at %#x", h, bitmapOff, pagesOff)
		}
		if !bytes.Equal(data[pagesOff+3*PageSize:pagesOff+4*PageSize], src[0].Mem[3*PageSize:4*PageSize]) {
			t.Errorf("page 3 of pc.ram is not at its offset")
		}
		for name, load := range map[string]func(LoadOptions) (*LoadResult, error){
			"Load":      func(o LoadOptions) (*LoadResult, error) { return Load(bytes.NewReader(data[prefix:]), o) },
			"LoadBytes": func(o LoadOptions) (*LoadResult, error) { return LoadBytes(data[prefix:], o) },
		} {
			dst := allocBlocks(t, 70, 33)
			// Destination garbage where the source is zero must be cleared.
			fill(dst[0].Mem[1*PageSize:2*PageSize], 0x55)
			fill(dst[1].Mem[5*PageSize:6*PageSize], 0x66)
			d := newMachine(t, 0, testProps, testNeeded)
			res, err := load(mappedOpt(data, prefix, dst, d.reg))
			if err != nil {
				t.Fatalf("%s (prefix %d): %v", name, prefix, err)
			}
			if res.Pages != 24+17 || res.ZeroPages != 46+16 || res.Devices != 4 {
				t.Errorf("%s: result %+v", name, res)
			}
			for i := range src {
				if !bytes.Equal(src[i].Mem, dst[i].Mem) {
					t.Errorf("%s: block %s differs", name, src[i].Name)
				}
			}
			requireStoresEqual(t, d, snapshotStores(want))
		}
	}
}

func TestMappedAnalyze(t *testing.T) {
	src, m := mappedSource(t)
	data := writeMapped(t, src, m.reg, 0)
	a, err := Analyze(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	js, err := a.State.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"mapped-ram"`, `"pages":41`, `"zero pages":62`, `"serial (1)"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("analysis lacks %s:\n%s", want, js)
		}
	}
}

// TestMappedRefused damages a mapped-ram file in the ways a bad disk or a
// bad writer would: each is refused with an error naming the block and
// the offset, and neither guest RAM nor any device was written.
func TestMappedRefused(t *testing.T) {
	src, m := mappedSource(t)
	const prefix = 100
	good := writeMapped(t, src, m.reg, prefix)
	h0 := headerAt(t, good, "pc.ram")
	h1 := headerAt(t, good, "pc.ram.high")
	pages1 := binary.BigEndian.Uint64(good[h1+20:])
	put64 := func(at int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint64(b[at:], v); return b }
	}
	cases := []struct {
		name   string
		damage func([]byte) []byte
		want   string
		noMap  bool // load without the capability
	}{
		{"version", func(b []byte) []byte { b[h0+3] = 2; return b }, `RAM block "pc.ram": mapped-ram header version 2, want 1`, false},
		{"page size", put64(h0+4, 65536), `RAM block "pc.ram": mapped-ram page size 65536, want 4096`, false},
		{"bitmap past the end", put64(h0+12, 1<<40), `RAM block "pc.ram": bitmap of 16 bytes at file offset 0x10000000000 is not between`, false},
		{"bitmap before the header", put64(h0+12, 8), `RAM block "pc.ram": bitmap of 16 bytes at file offset 0x8 is not between`, false},
		{"pages unaligned", put64(h1+20, pages1+8), `RAM block "pc.ram.high": pages region at file offset 0x` + "", false},
		{"pages past the end", put64(h1+20, 1<<40), `RAM block "pc.ram.high": pages region [0x10000000000, 0x10000021000) does not end before the file's end`, false},
		{"bitmap marks pages past the block", func(b []byte) []byte {
			bm := binary.BigEndian.Uint64(b[h1+12:])
			b[bm+4] |= 0x80 // page 39 of a 33-page block
			return b
		}, `RAM block "pc.ram.high": the bitmap at file offset`, false},
		{"truncated in the pages", func(b []byte) []byte { return b[:pages1+PageSize] }, `RAM block "pc.ram.high": pages region`, false},
		{"truncated in the devices", func(b []byte) []byte {
			return b[:int(pages1)+bytes.Index(b[pages1:], []byte("\x06serial"))+10]
		}, `stream truncated`, false},
		{"without the capability here", func(b []byte) []byte { return b }, `capability "mapped-ram" is off here, but the stream was written with it on`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.damage(bytes.Clone(good))
			dst := allocBlocks(t, 70, 33)
			fill(dst[0].Mem, 0x33)
			before := bytes.Clone(dst[0].Mem)
			d := newMachine(t, 0x40, testProps, testNeeded)
			stores := snapshotStores(d)
			opt := mappedOpt(data, prefix, dst, d.reg)
			if c.noMap {
				opt.MappedRAM = nil
			}
			for _, load := range []func() error{
				func() error { _, err := Load(bytes.NewReader(data[prefix:]), opt); return err },
				func() error { _, err := LoadBytes(data[prefix:], opt); return err },
			} {
				err := load()
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "offset 0x") {
					t.Fatalf("error %v, want one containing %q", err, c.want)
				}
				t.Log(err)
				if !bytes.Equal(dst[0].Mem, before) || !bytes.Equal(dst[1].Mem, make([]byte, len(dst[1].Mem))) {
					t.Fatalf("a refused file wrote guest RAM: %v", err)
				}
				requireStoresEqual(t, d, stores)
			}
		})
	}
	// A normal stream loaded with the capability on is refused too.
	d := newMachine(t, 0x40, testProps, testNeeded)
	plain := saveStream(t, testMachine, src, m.reg)
	_, err := LoadBytes(plain, mappedOpt(plain, 0, allocBlocks(t, 70, 33), d.reg))
	if err == nil || !strings.Contains(err.Error(), `capability "mapped-ram" is on here, but the stream was written without it`) {
		t.Errorf("plain stream with mapped-ram on: %v", err)
	}
}

func TestMappedWriterErrors(t *testing.T) {
	blocks := allocBlocks(t, 4, 4)
	var out bytes.Buffer
	w, _ := NewWriter(&out, "m")
	if _, err := w.RAMMapped(blocks); err == nil || !strings.Contains(err.Error(), "RAMMapped needs a writer from NewMappedWriter") {
		t.Errorf("RAMMapped on a plain writer: %v", err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mw, _ := NewMappedWriter(f, f, 0, "m")
	if err := mw.RAMStart(blocks); err == nil || !strings.Contains(err.Error(), "writes RAM with RAMMapped") {
		t.Errorf("RAMStart on a mapped writer: %v", err)
	}
}
