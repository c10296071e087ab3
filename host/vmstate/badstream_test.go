package vmstate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
)

const testMachine = "wasmvmm-test-1.0"

var testProps = map[string]uint64{"packed": 1, "legacy": 0}
var testNeeded = map[int32]bool{1: true, 8: true}

// baseStream is a valid stream with RAM (two blocks) and the test devices.
func baseStream(t *testing.T) []byte {
	t.Helper()
	blocks := allocBlocks(t, 4, 2)
	fill(blocks[0].Mem[PageSize:2*PageSize], 1)
	fill(blocks[1].Mem[:PageSize], 2)
	m := newMachine(t, 5, testProps, testNeeded)
	return saveStream(t, testMachine, blocks, m.reg)
}

// dest is a destination machine: zeroed RAM blocks and devices with
// patterned stores, so that any write shows.
type dest struct {
	m      *machineDevs
	blocks []*guestmem.Block
	before map[string][]byte
}

func newDest(t *testing.T) *dest {
	d := &dest{m: newMachine(t, 0x40, testProps, nil), blocks: allocBlocks(t, 4, 2)}
	d.before = snapshotStores(d.m)
	return d
}

func (d *dest) opts() LoadOptions {
	return LoadOptions{Machine: testMachine, Blocks: d.blocks, Registry: d.m.reg}
}

func (d *dest) load(b []byte) error {
	_, err := Load(bytes.NewReader(b), d.opts())
	return err
}

// TestLoadBytesMatchesLoad loads the base stream through both readers into
// fresh machines: same result, same device state.
func TestLoadBytesMatchesLoad(t *testing.T) {
	base := baseStream(t)
	a, b := newDest(t), newDest(t)
	ra, err := Load(bytes.NewReader(base), a.opts())
	if err != nil {
		t.Fatal(err)
	}
	rb, err := LoadBytes(base, b.opts())
	if err != nil {
		t.Fatal(err)
	}
	if ra.Bytes != rb.Bytes || ra.Pages != rb.Pages || ra.ZeroPages != rb.ZeroPages || ra.Devices != rb.Devices || !bytes.Equal(ra.VMDesc, rb.VMDesc) {
		t.Fatalf("Load %+v, LoadBytes %+v", ra, rb)
	}
	requireStoresEqual(t, b.m, snapshotStores(a.m))
}

// requireUntouched checks that no device store was written and no PostLoad
// ran.
func (d *dest) requireUntouched(t *testing.T) {
	t.Helper()
	requireStoresEqual(t, d.m, d.before)
	for k, h := range d.m.hooks {
		if len(h.postLoad) != 0 {
			t.Errorf("%s: post-load ran", k)
		}
	}
}

func index(t *testing.T, b []byte, pat string, nth int) int {
	t.Helper()
	off := -1
	for i := 0; i <= nth; i++ {
		j := bytes.Index(b[off+1:], []byte(pat))
		if j < 0 {
			t.Fatalf("pattern %q #%d not in stream", pat, nth)
		}
		off += 1 + j
	}
	return off
}

func mutate(b []byte, f func(c []byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}

func TestLoadBaseStream(t *testing.T) {
	d := newDest(t)
	if err := d.load(baseStream(t)); err != nil {
		t.Fatal(err)
	}
}

func TestBadStreams(t *testing.T) {
	base := baseStream(t)
	// Offsets of landmarks in the base stream.
	serialHdr := index(t, base, "\x06serial", 0) - 5 // type, id, len byte
	cpuHdr := index(t, base, "\x03cpu", 1) - 5       // the second cpu section (instance 1)
	vmdescAt := bytes.LastIndex(base, []byte("\x00\x06\x00\x00")) + 1
	fifoSub := index(t, base, "serial/fifo-level", 0) - 2
	ramPage := index(t, base, "\x06pc.ram", 1) - 8 // first page record (after the block list)

	cases := []struct {
		name string
		b    []byte
		opt  func(*LoadOptions)
		want string
		pipe bool // read through a non-seekable reader (no vmdesc read-ahead)
	}{
		{"wrong magic", mutate(base, func(c []byte) { c[0] = 'X' }), nil,
			`offset 0x0: bad file magic 0x5845564d, want 0x5145564d ("QEVM")`, false},
		{"wrong version", mutate(base, func(c []byte) { c[7] = 2 }), nil,
			`offset 0x4: unsupported stream version 2, want 3`, false},
		{"other machine type", base, func(o *LoadOptions) { o.Machine = "pc-q35-7.2" },
			`offset 0xd: section "configuration": machine type "wasmvmm-test-1.0" in the stream, this machine is "pc-q35-7.2"`, false},
		{"unknown section type", mutate(base, func(c []byte) { c[serialHdr] = 0x09 }), nil,
			fmt.Sprintf(`offset %#x: unknown section type 0x09`, serialHdr), false},
		{"section for an unknown device", mutate(base, func(c []byte) { c[serialHdr+6] = 'S' }), nil,
			fmt.Sprintf(`offset %#x: section "Serial" (id 1): no device "Serial" instance 0 on this machine`, serialHdr), false},
		{"device this machine lacks", base, func(o *LoadOptions) {
			r := NewRegistry()
			for _, d := range o.Registry.Devices() {
				if d.Name != "serial" {
					r.Register(d)
				}
			}
			o.Registry = r
		}, fmt.Sprintf(`offset %#x: section "serial" (id 1): no device "serial" instance 0 on this machine`, serialHdr), false},
		{"device missing from the stream", base, func(o *LoadOptions) {
			o.Registry.Register(Device{Name: "extra", Schema: cpuSchema(), InstanceID: 0, Store: make(ByteStore, 136)})
		}, `EOF, but device "extra" instance 0 of this machine had no section`, false},
		{"footer names another section", mutate(base, func(c []byte) { c[cpuHdr-1] ^= 0x10 }), nil,
			fmt.Sprintf(`offset %#x: section "cpu" (id 3): section footer names section id 19, want 3`, cpuHdr-5), false},
		{"unknown RAM flags", mutate(base, func(c []byte) { c[ramPage+7] |= 0x40 }), nil,
			fmt.Sprintf(`offset %#x: section "ram" (id 0): unsupported RAM record flags 0x42`, ramPage), false},
		{"nonzero fill byte", mutate(base, func(c []byte) {
			c[ramPage+15] = 7
		}), nil, fmt.Sprintf(`offset %#x: section "ram" (id 0): zero page of RAM block "pc.ram" at 0x0 has fill byte 0x07, want 0`, ramPage+15), false},
		{"unknown subsection", base, func(o *LoadOptions) {
			r := NewRegistry()
			for _, d := range o.Registry.Devices() {
				if d.Name == "serial" {
					s := *d.Schema
					s.Subsections = nil
					d.Schema = &s
				}
				r.Register(d)
			}
			o.Registry = r
		}, fmt.Sprintf(`offset %#x: section "serial" (id 1) subsection "serial/fifo-level": unknown subsection (this machine knows none)`, fifoSub), false},
		{"field of another size (footer)", base, func(o *LoadOptions) {
			o.Registry = replaceSchema(o.Registry, "serial", func(s *abi.Section) { s.Fields[5].Size = 17 })
		}, `section "serial" (id 1): expected the section footer (0x7e) after field "timer", found 0x11: the source's field layout differs`, true},
		{"field of another size (read ahead)", base, func(o *LoadOptions) {
			o.Registry = replaceSchema(o.Registry, "serial", func(s *abi.Section) { s.Fields[5].Size = 17 })
		}, fmt.Sprintf(`offset %#x: section "serial" (id 1) field "fifo": the source describes size 16 (as "fifo"), this machine expects 17`, serialHdr), false},
		{"field of another type (vmdesc after EOF)", base, func(o *LoadOptions) {
			o.Registry = replaceSchema(o.Registry, "serial", func(s *abi.Section) {
				s.Fields[0] = abi.Field{Name: "ier", Type: abi.FieldU16, Offset: 0, Size: 2, Count: 1}
				s.Fields = append(s.Fields[:1], s.Fields[2:]...)
			})
		}, `section "serial" (id 1) field "ier": vmdesc: the source describes type uint8 (as "ier"), this machine expects uint16`, true},
		{"field of another type (read ahead)", base, func(o *LoadOptions) {
			o.Registry = replaceSchema(o.Registry, "serial", func(s *abi.Section) {
				s.Fields[0] = abi.Field{Name: "ier", Type: abi.FieldU16, Offset: 0, Size: 2, Count: 1}
				s.Fields = append(s.Fields[:1], s.Fields[2:]...)
			})
		}, fmt.Sprintf(`offset %#x: section "serial" (id 1) field "ier": the source describes type uint8 (as "ier"), this machine expects uint16`, serialHdr), false},
		{"subsection field of another size (read ahead)", base, func(o *LoadOptions) {
			o.Registry = replaceSchema(o.Registry, "serial", func(s *abi.Section) {
				s.Subsections = []abi.Section{s.Subsections[0]}
				s.Subsections[0].Fields = []abi.Field{{Name: "level", Type: abi.FieldU16, Offset: 48, Size: 2, Count: 1}}
			})
		}, fmt.Sprintf(`offset %#x: section "serial" (id 1) subsection "serial/fifo-level" field "level": the source describes type uint32 (as "level"), this machine expects uint16`, fifoSub), false},
		{"RAM block unknown", base, func(o *LoadOptions) { o.Blocks = o.Blocks[:1] },
			`section "ram" (id 0): RAM block "pc.ram.high" is not on this machine (it has pc.ram)`, false},
		{"RAM block size", base, func(o *LoadOptions) {
			o.Blocks = []*guestmem.Block{o.Blocks[0], allocBlocks(t, 4, 3)[1]}
		}, `section "ram" (id 0): RAM block "pc.ram.high" has 0x2000 bytes in the stream, 0x3000 on this machine`, false},
		{"RAM not expected", base, func(o *LoadOptions) { o.Blocks = nil },
			`offset 0x1d: section "ram" (id 0): the stream carries RAM, but this load has no RAM blocks to fill (cpr-transfer keeps RAM in place)`, false},
		{"vmdesc corrupt", mutate(base, func(c []byte) { c[vmdescAt+5] = '[' }), nil,
			fmt.Sprintf(`offset %#x: section "vmdesc": malformed JSON`, vmdescAt+5), false},
		{"vmdesc marker", mutate(base, func(c []byte) { c[vmdescAt] = 0x07 }), nil,
			fmt.Sprintf(`offset %#x: section "vmdesc": expected the vmdesc (0x06) after EOF, found 0x07`, vmdescAt), false},
		{"JSON cut short", mutate(base, func(c []byte) { c[len(c)-1] = ' ' }), nil,
			`malformed JSON`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newDest(t)
			o := d.opts()
			if c.opt != nil {
				c.opt(&o)
			}
			var r io.Reader = bytes.NewReader(c.b)
			if c.pipe {
				r = io.MultiReader(r)
			}
			_, err := Load(r, o)
			if err == nil {
				t.Fatalf("loaded")
			}
			var se *StreamError
			if !errors.As(err, &se) {
				t.Errorf("not a StreamError: %T", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error\n got %s\nwant %s", err, c.want)
			}
			d.requireUntouched(t)
			if c.pipe {
				return
			}
			// The in-memory reader (mapped snapshot files) fails alike.
			_, merr := LoadBytes(c.b, o)
			if merr == nil || merr.Error() != err.Error() {
				t.Errorf("LoadBytes error\n got %v\nwant %v", merr, err)
			}
			d.requireUntouched(t)
		})
	}
}

// replaceSchema returns a copy of reg in which the named device's schema is
// modified by f.
func replaceSchema(reg *Registry, name string, f func(*abi.Section)) *Registry {
	r := NewRegistry()
	for _, d := range reg.Devices() {
		if d.Name == name {
			s := *d.Schema
			s.Fields = append([]abi.Field(nil), s.Fields...)
			f(&s)
			d.Schema = &s
		}
		if _, err := r.Register(d); err != nil {
			panic(err)
		}
	}
	return r
}

// TestTruncatedEverywhere cuts the stream at every offset: each cut is a
// truncation error with an offset, and no device store is written.
func TestTruncatedEverywhere(t *testing.T) {
	base := baseStream(t)
	d := newDest(t)
	for n := 0; n < len(base); n++ {
		_, err := Load(bytes.NewReader(base[:n]), d.opts())
		if err == nil {
			t.Fatalf("cut at %d loaded", n)
		}
		if !errors.Is(err, ErrTruncated) || !strings.HasPrefix(err.Error(), "offset 0x") {
			t.Fatalf("cut at %d: %v", n, err)
		}
		if _, merr := LoadBytes(base[:n], d.opts()); merr == nil || merr.Error() != err.Error() {
			t.Fatalf("cut at %d: LoadBytes error\n got %v\nwant %v", n, merr, err)
		}
	}
	d.requireUntouched(t)
	if err := d.load(base); err != nil {
		t.Fatal(err)
	}
}

// TestNeverHalfApplies corrupts the footer of the last device section: the
// devices before it decoded fine, but nothing is applied.
func TestNeverHalfApplies(t *testing.T) {
	base := baseStream(t)
	vmdescAt := bytes.LastIndex(base, []byte("\x00\x06\x00\x00"))
	lastFooter := vmdescAt - 5
	if base[lastFooter] != SectionFooter {
		t.Fatalf("no footer at %d", lastFooter)
	}
	d := newDest(t)
	err := d.load(mutate(base, func(c []byte) { c[lastFooter] = 0x7f }))
	want := fmt.Sprintf(`offset %#x: section "cpu" (id 4): expected the section footer (0x7e) after field "rflags", found 0x7f`, lastFooter)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v\nwant %s...", err, want)
	}
	d.requireUntouched(t)
	// A bad vmdesc (after every section decoded) applies nothing either.
	err = d.load(mutate(base, func(c []byte) { c[len(c)-2] = 'x' }))
	if err == nil || !strings.Contains(err.Error(), `section "vmdesc": malformed JSON`) {
		t.Fatalf("vmdesc: %v", err)
	}
	d.requireUntouched(t)
	// The good stream applies everything.
	if err := d.load(base); err != nil {
		t.Fatal(err)
	}
	for k, h := range d.m.hooks {
		if len(h.postLoad) != 1 {
			t.Errorf("%s: post-load %v", k, h.postLoad)
		}
	}
}
