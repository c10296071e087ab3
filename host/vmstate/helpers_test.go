package vmstate

import (
	"bytes"
	"fmt"
	"testing"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
)

// recHooks records hook calls and answers SubsectionNeeded from a map.
type recHooks struct {
	needed   map[int32]bool
	preSave  int
	postLoad []uint32
	failPre  error
	failPost error
}

func (h *recHooks) PreSave() error { h.preSave++; return h.failPre }
func (h *recHooks) PostLoad(v uint32) error {
	h.postLoad = append(h.postLoad, v)
	return h.failPost
}
func (h *recHooks) SubsectionNeeded(id int32) bool { return h.needed[id] }

// serialSchema: scalars, a bool array, a buffer, a field of version 2 and a
// subsection.
func serialSchema() *abi.Section {
	return &abi.Section{
		Name: "serial", InstanceID: 0, VersionID: 2, MinimumVersionID: 1,
		Fields: []abi.Field{
			{Name: "ier", Type: abi.FieldU8, Offset: 0, Size: 1, Count: 1},
			{Name: "lcr", Type: abi.FieldU8, Offset: 1, Size: 1, Count: 1},
			{Name: "divisor", Type: abi.FieldU16, Offset: 2, Size: 2, Count: 1},
			{Name: "scratch", Type: abi.FieldU32, Offset: 4, Size: 4, Count: 1, VersionID: 2},
			{Name: "flags", Type: abi.FieldBool, Offset: 8, Size: 1, Count: 4},
			{Name: "fifo", Type: abi.FieldBuffer, Offset: 16, Size: 16, Count: 1},
			{Name: "timer", Type: abi.FieldI64, Offset: 40, Size: 8, Count: 1},
		},
		Subsections: []abi.Section{{
			Name: "fifo-level", VersionID: 1, MinimumVersionID: 1, NeededID: 1,
			Fields: []abi.Field{{Name: "level", Type: abi.FieldU32, Offset: 48, Size: 4, Count: 1}},
		}},
	}
}

// virtioSchema: a nested struct array with a property-gated member, a
// gated top-level field, and a subsection with two needed ids.
func virtioSchema() *abi.Section {
	queue := &abi.Section{Name: "virtqueue", VersionID: 1, Fields: []abi.Field{
		{Name: "desc", Type: abi.FieldU64, Offset: 0, Size: 8, Count: 1},
		{Name: "avail", Type: abi.FieldU32, Offset: 8, Size: 4, Count: 1},
		{Name: "used_idx", Type: abi.FieldU16, Offset: 12, Size: 2, Count: 1},
		{Name: "event", Type: abi.FieldBool, Offset: 14, Size: 1, Count: 1, Exists: &abi.Condition{Prop: "packed", Op: abi.CondEQ, Value: 1}},
	}}
	plain := &abi.Section{Name: "vring", VersionID: 1, Fields: []abi.Field{
		{Name: "num", Type: abi.FieldU16, Offset: 0, Size: 2, Count: 1},
		{Name: "pad", Type: abi.FieldI16, Offset: 2, Size: 2, Count: 1},
	}}
	return &abi.Section{
		Name: "virtio-dev", InstanceID: abi.InstanceAny, VersionID: 3, MinimumVersionID: 2,
		Fields: []abi.Field{
			{Name: "queues", Type: abi.FieldStruct, Offset: 0, Size: 16, Count: 3, Struct: queue},
			{Name: "features", Type: abi.FieldU64, Offset: 56, Size: 8, Count: 1},
			{Name: "legacy_isr", Type: abi.FieldU32, Offset: 64, Size: 4, Count: 1, Exists: &abi.Condition{Prop: "legacy", Op: abi.CondEQ, Value: 1}},
			{Name: "rings", Type: abi.FieldStruct, Offset: 72, Size: 4, Count: 2, Struct: plain},
			{Name: "status", Type: abi.FieldI32, Offset: 80, Size: 4, Count: 2},
		},
		Subsections: []abi.Section{
			{Name: "virtio-dev/extra", VersionID: 1, NeededID: 7, Fields: []abi.Field{
				{Name: "x", Type: abi.FieldU16, Offset: 96, Size: 2, Count: 1}}},
			{Name: "shm", VersionID: 2, MinimumVersionID: 1, NeededID: 8, Fields: []abi.Field{
				{Name: "base", Type: abi.FieldU64, Offset: 104, Size: 8, Count: 1},
				{Name: "len", Type: abi.FieldU32, Offset: 112, Size: 4, Count: 1, VersionID: 2}}},
		},
	}
}

// cpuSchema: host-side state, registered with InstanceAny.
func cpuSchema() *abi.Section {
	return &abi.Section{Name: "cpu", InstanceID: abi.InstanceAny, VersionID: 1, MinimumVersionID: 1,
		Fields: []abi.Field{
			{Name: "regs", Type: abi.FieldU64, Offset: 0, Size: 8, Count: 16},
			{Name: "rflags", Type: abi.FieldU64, Offset: 128, Size: 8, Count: 1},
		}}
}

// machineDevs is a registry plus the stores and hooks behind it.
type machineDevs struct {
	reg    *Registry
	stores map[string]ByteStore
	hooks  map[string]*recHooks
}

// fillEvery gives data to every every(i)-th page of block i, a pattern
// that differs from page to page and from block to block.
func fillEvery(blocks []*guestmem.Block, every func(i int) uint64) {
	for i, b := range blocks {
		for p := uint64(0); p < b.Pages(); p++ {
			if p%every(i) == 0 {
				fill(b.Mem[p*PageSize:(p+1)*PageSize], byte(p)+byte(i)+1)
			}
		}
	}
}

// newRAMWriter starts a stream into out for the test machine type with a
// RAM section over src.
func newRAMWriter(t testing.TB, out *bytes.Buffer, src []*guestmem.Block) *Writer {
	t.Helper()
	w, err := NewWriter(out, "wasmvmm-test-1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.RAMStart(src); err != nil {
		t.Fatal(err)
	}
	return w
}

func fill(b []byte, seed byte) {
	for i := range b {
		b[i] = seed + byte(i*7)
	}
}

// newMachine builds a registry of serial, virtio-dev (props as given) and
// two cpus. With seed != 0 the stores hold patterned data.
func newMachine(t testing.TB, seed byte, virtioProps map[string]uint64, needed map[int32]bool) *machineDevs {
	t.Helper()
	m := &machineDevs{reg: NewRegistry(), stores: map[string]ByteStore{}, hooks: map[string]*recHooks{}}
	add := func(key string, s *abi.Section, size int, props map[string]uint64) {
		st := make(ByteStore, size)
		if seed != 0 {
			fill(st, seed+byte(len(key)))
		}
		h := &recHooks{needed: needed}
		if _, err := m.reg.Register(Device{Schema: s, InstanceID: s.InstanceID, Store: st, Props: props, Hooks: h}); err != nil {
			t.Fatalf("register %s: %v", key, err)
		}
		m.stores[key], m.hooks[key] = st, h
	}
	add("serial", serialSchema(), 64, nil)
	add("virtio", virtioSchema(), 128, virtioProps)
	add("cpu0", cpuSchema(), 136, nil)
	add("cpu1", cpuSchema(), 136, nil)
	return m
}

// allocBlocks maps two RAM blocks: "pc.ram" of pages0 pages and
// "pc.ram.high" of pages1 pages.
func allocBlocks(t testing.TB, pages0, pages1 uint64) []*guestmem.Block {
	t.Helper()
	a, err := guestmem.Alloc("pc.ram", 0, pages0*PageSize, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := guestmem.Alloc("pc.ram.high", 1<<32, pages1*PageSize, guestmem.AllocOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return []*guestmem.Block{a, b}
}

// saveStream writes a complete stream with all RAM pages and all devices.
func saveStream(t testing.TB, machine string, blocks []*guestmem.Block, reg *Registry) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Save(&buf, machine, blocks, reg); err != nil {
		t.Fatalf("save: %v", err)
	}
	return buf.Bytes()
}

func snapshotStores(m *machineDevs) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range m.stores {
		out[k] = append([]byte(nil), v...)
	}
	return out
}

func requireStoresEqual(t *testing.T, m *machineDevs, want map[string][]byte) {
	t.Helper()
	for k, v := range m.stores {
		if !bytes.Equal(v, want[k]) {
			t.Errorf("store %s changed:\n got %x\nwant %x", k, []byte(v), want[k])
		}
	}
}

func hexRange(b []byte, lo, n int) string { return fmt.Sprintf("%x", b[lo:lo+n]) }
