package vmstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"wasmvmm/abi"
)

// expectedAfterLoad computes what a zeroed destination store holds after a
// load: the source bytes of every field that exists on the destination.
func copyField(dst, src []byte, off, n int) { copy(dst[off:off+n], src[off:off+n]) }

func TestRoundTripDevices(t *testing.T) {
	for _, tc := range []struct {
		name   string
		props  map[string]uint64
		needed map[int32]bool
	}{
		{"packed-all-subsections", map[string]uint64{"packed": 1, "legacy": 1}, map[int32]bool{1: true, 7: true, 8: true}},
		{"split-no-subsections", map[string]uint64{"packed": 0, "legacy": 0}, map[int32]bool{}},
		{"mixed", map[string]uint64{"packed": 1, "legacy": 0}, map[int32]bool{8: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newMachine(t, 0x11, tc.props, tc.needed)
			// Bools in the source must be 0/1 to compare bytewise.
			for i := 8; i < 12; i++ {
				src.stores["serial"][i] = byte(i & 1)
			}
			for q := 0; q < 3; q++ {
				src.stores["virtio"][q*16+14] = 1
			}
			stream := saveStream(t, "wasmvmm-test-1.0", nil, src.reg)
			dst := newMachine(t, 0, tc.props, map[int32]bool{})
			res, err := Load(bytes.NewReader(stream), LoadOptions{Machine: "wasmvmm-test-1.0", Registry: dst.reg})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if res.Devices != 4 || res.Bytes != int64(len(stream)) {
				t.Fatalf("result %+v, stream %d bytes", res, len(stream))
			}
			// serial: every field at version 2; subsection only if needed.
			s, d := src.stores["serial"], dst.stores["serial"]
			want := make([]byte, 64)
			for _, r := range [][2]int{{0, 1}, {1, 1}, {2, 2}, {4, 4}, {8, 4}, {16, 16}, {40, 8}} {
				copyField(want, s, r[0], r[1])
			}
			if tc.needed[1] {
				copyField(want, s, 48, 4)
			}
			if !bytes.Equal(d, want) {
				t.Errorf("serial:\n got %x\nwant %x", []byte(d), want)
			}
			// virtio: queues (event only when packed), features, legacy_isr
			// only when legacy, rings, status, subsections when needed.
			s, d = src.stores["virtio"], dst.stores["virtio"]
			want = make([]byte, 128)
			for q := 0; q < 3; q++ {
				copyField(want, s, q*16, 8)
				copyField(want, s, q*16+8, 4)
				copyField(want, s, q*16+12, 2)
				if tc.props["packed"] == 1 {
					copyField(want, s, q*16+14, 1)
				}
			}
			copyField(want, s, 56, 8)
			if tc.props["legacy"] == 1 {
				copyField(want, s, 64, 4)
			}
			copyField(want, s, 72, 8)
			copyField(want, s, 80, 8)
			if tc.needed[7] {
				copyField(want, s, 96, 2)
			}
			if tc.needed[8] {
				copyField(want, s, 104, 8)
				copyField(want, s, 112, 4)
			}
			if !bytes.Equal(d, want) {
				t.Errorf("virtio:\n got %x\nwant %x", []byte(d), want)
			}
			for _, k := range []string{"cpu0", "cpu1"} {
				if !bytes.Equal(src.stores[k], dst.stores[k]) {
					t.Errorf("%s differs", k)
				}
			}
			for k, h := range dst.hooks {
				if len(h.postLoad) != 1 {
					t.Errorf("%s: post-load calls %v", k, h.postLoad)
				}
			}
			if got := dst.hooks["virtio"].postLoad[0]; got != 3 {
				t.Errorf("virtio post-load version %d", got)
			}
			for k, h := range src.hooks {
				if h.preSave != 1 {
					t.Errorf("%s: pre-save ran %d times", k, h.preSave)
				}
			}
		})
	}
}

// TestWireLayout pins the exact bytes of a small stream, worked out by hand
// from QEMU's format.
func TestWireLayout(t *testing.T) {
	reg := NewRegistry()
	st := ByteStore{0x34, 0x12, 0x01, 0xff}
	sec := &abi.Section{Name: "dev", VersionID: 1, Fields: []abi.Field{
		{Name: "w", Type: abi.FieldU16, Offset: 0, Size: 2, Count: 1},
		{Name: "b", Type: abi.FieldBool, Offset: 2, Size: 1, Count: 1},
		{Name: "i", Type: abi.FieldI8, Offset: 3, Size: 1, Count: 1},
	}}
	if _, err := reg.Register(Device{Schema: sec, Store: st, InstanceID: 5}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Save(&buf, "m", nil, reg); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	want := []byte{
		0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, // magic, version
		0x07, 0, 0, 0, 1, 'm', // configuration
		0x04, 0, 0, 0, 1, 3, 'd', 'e', 'v', 0, 0, 0, 5, 0, 0, 0, 1, // FULL id 1 "dev" inst 5 v1
		0x12, 0x34, 0x01, 0xff, // fields
		0x7e, 0, 0, 0, 1, // footer
		0x00, 0x06, // EOF, vmdesc
	}
	if !bytes.Equal(b[:len(want)], want) {
		t.Fatalf("stream head\n got % x\nwant % x", b[:len(want)], want)
	}
	n := binary.BigEndian.Uint32(b[len(want):])
	js := string(b[len(want)+4:])
	if int(n) != len(js) {
		t.Fatalf("vmdesc length %d, have %d bytes", n, len(js))
	}
	const wantJS = `{"configuration":{"vmsd_name":"configuration","version":1,"fields":[{"name":"len","type":"uint32","size":4},{"name":"name","type":"buffer","size":1}]},"page_size":4096,"devices":[{"name":"dev","instance_id":5,"vmsd_name":"dev","version":1,"fields":[{"name":"w","type":"uint16","size":2},{"name":"b","type":"bool","size":1},{"name":"i","type":"int8","size":1}]}]}`
	if js != wantJS {
		t.Fatalf("vmdesc\n got %s\nwant %s", js, wantJS)
	}
}

func TestInstanceIDs(t *testing.T) {
	reg := NewRegistry()
	reg1 := func(inst int32) (int32, error) {
		return reg.Register(Device{Schema: cpuSchema(), InstanceID: inst, Store: make(ByteStore, 136)})
	}
	for want := int32(0); want < 3; want++ {
		got, err := reg1(abi.InstanceAny)
		if err != nil || got != want {
			t.Fatalf("any: got %d, %v; want %d", got, err, want)
		}
	}
	if got, err := reg1(7); err != nil || got != 7 {
		t.Fatalf("explicit 7: %d %v", got, err)
	}
	if got, _ := reg1(abi.InstanceAny); got != 8 {
		t.Fatalf("any after 7: %d, want 8", got)
	}
	if _, err := reg1(1); err == nil || err.Error() != "vmstate register cpu: instance 1 is already registered" {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := reg1(-2); err == nil {
		t.Fatal("negative instance id accepted")
	}
	// Another name has its own numbering.
	got, err := reg.Register(Device{Name: "cpu-other", Schema: cpuSchema(), InstanceID: abi.InstanceAny, Store: make(ByteStore, 136)})
	if err != nil || got != 0 {
		t.Fatalf("other name: %d %v", got, err)
	}
	if !reg.Unregister("cpu", 8) || reg.Unregister("cpu", 8) {
		t.Fatal("unregister")
	}
	if got, _ := reg1(abi.InstanceAny); got != 8 {
		t.Fatalf("any after unregister: %d", got)
	}
}

func TestRegisterErrors(t *testing.T) {
	gated := virtioSchema()
	for _, c := range []struct {
		name string
		dev  Device
		want string
	}{
		{"store too small", Device{Schema: cpuSchema(), Store: make(ByteStore, 100)},
			"vmstate register cpu: vmstate cpu.regs: bytes [0x0, 0x80) outside memory of 0x64 bytes"},
		{"missing property", Device{Schema: gated, Store: make(ByteStore, 128), Props: map[string]uint64{"packed": 1}},
			`vmstate register virtio-dev: field virtio-dev.legacy_isr is gated on property "legacy", which the device does not have`},
		{"reserved name", Device{Name: "ram", Schema: cpuSchema(), Store: make(ByteStore, 136)},
			"vmstate register ram: name is reserved"},
		{"no store", Device{Schema: cpuSchema()}, "vmstate register cpu: no store"},
	} {
		_, err := NewRegistry().Register(c.dev)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: got %v\nwant %s", c.name, err, c.want)
		}
	}
}

// TestVersions loads an old-version stream (fields of newer versions are
// absent and keep their value) and refuses too new and too old ones.
func TestVersions(t *testing.T) {
	old := serialSchema()
	old.VersionID = 1
	old.Fields = append(old.Fields[:3:3], old.Fields[4:]...) // no "scratch" in v1
	src := NewRegistry()
	sst := make(ByteStore, 64)
	fill(sst, 3)
	for i := 8; i < 12; i++ {
		sst[i] = 1
	}
	if _, err := src.Register(Device{Schema: old, Store: sst}); err != nil {
		t.Fatal(err)
	}
	stream := saveStream(t, "m", nil, src)

	dst := NewRegistry()
	dstore := make(ByteStore, 64)
	for i := range dstore {
		dstore[i] = 0xee
	}
	h := &recHooks{}
	if _, err := dst.Register(Device{Schema: serialSchema(), Store: dstore, Hooks: h}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bytes.NewReader(stream), LoadOptions{Machine: "m", Registry: dst}); err != nil {
		t.Fatalf("load v1 into v2: %v", err)
	}
	if got := hexRange(dstore, 4, 4); got != "eeeeeeee" {
		t.Errorf("scratch (v2 field) was written: %s", got)
	}
	if hexRange(dstore, 0, 4) != hexRange(sst, 0, 4) || hexRange(dstore, 16, 16) != hexRange(sst, 16, 16) {
		t.Errorf("v1 fields not loaded")
	}
	if len(h.postLoad) != 1 || h.postLoad[0] != 1 {
		t.Errorf("post-load versions %v", h.postLoad)
	}

	// A v2 stream into a machine that only knows v1: too new.
	v2 := newMachine(t, 1, map[string]uint64{"packed": 0, "legacy": 0}, nil)
	stream2 := saveStream(t, "m", nil, v2.reg)
	only := NewRegistry()
	if _, err := only.Register(Device{Schema: old, Store: make(ByteStore, 64)}); err != nil {
		t.Fatal(err)
	}
	_, err := Load(bytes.NewReader(stream2), LoadOptions{Registry: only, AllowMissingDevices: true})
	want := `offset 0xe: section "serial" (id 1): version 2 is newer than this machine's 1`
	if err == nil || err.Error() != want {
		t.Errorf("too new: %v\nwant %s", err, want)
	}

	// A machine whose minimum is 2 refuses the v1 stream.
	strict := serialSchema()
	strict.MinimumVersionID = 2
	sreg := NewRegistry()
	if _, err := sreg.Register(Device{Schema: strict, Store: make(ByteStore, 64)}); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bytes.NewReader(stream), LoadOptions{Registry: sreg})
	want = `offset 0xe: section "serial" (id 1): version 1 is older than this machine's minimum 2`
	if err == nil || err.Error() != want {
		t.Errorf("too old: %v\nwant %s", err, want)
	}
}

func TestHookErrors(t *testing.T) {
	src := newMachine(t, 3, testProps, nil)
	src.hooks["virtio"].failPre = errors.New("queue busy")
	var out bytes.Buffer
	err := Save(&out, "m", nil, src.reg)
	if err == nil || err.Error() != "vmstate writer: device virtio-dev (instance 0): pre-save: queue busy" {
		t.Fatalf("pre-save: %v", err)
	}
	src.hooks["virtio"].failPre = nil
	stream := saveStream(t, "m", nil, src.reg)
	dst := newMachine(t, 0, testProps, nil)
	dst.hooks["serial"].failPost = errors.New("bad divisor")
	_, err = Load(bytes.NewReader(stream), LoadOptions{Machine: "m", Registry: dst.reg})
	if err == nil || err.Error() != "vmstate load: device serial (instance 0): post-load (version 2): bad divisor" {
		t.Fatalf("post-load: %v", err)
	}
	// Every other device still got its PostLoad.
	if len(dst.hooks["cpu1"].postLoad) != 1 {
		t.Errorf("cpu1 post-load %v", dst.hooks["cpu1"].postLoad)
	}
}

// TestNestedSubsection sends a subsection of a subsection.
func TestNestedSubsection(t *testing.T) {
	sec := &abi.Section{Name: "nic", VersionID: 1, Fields: []abi.Field{
		{Name: "mac", Type: abi.FieldBuffer, Offset: 0, Size: 6, Count: 1}},
		Subsections: []abi.Section{{Name: "rx", VersionID: 1, NeededID: 1,
			Fields: []abi.Field{{Name: "head", Type: abi.FieldU32, Offset: 8, Size: 4, Count: 1}},
			Subsections: []abi.Section{{Name: "csum", VersionID: 1, NeededID: 2,
				Fields: []abi.Field{{Name: "on", Type: abi.FieldBool, Offset: 12, Size: 1, Count: 1}}}}}}}
	mk := func(fillWith byte) (*Registry, ByteStore) {
		st := make(ByteStore, 16)
		if fillWith != 0 {
			fill(st, fillWith)
			st[12] = 1
		}
		r := NewRegistry()
		if _, err := r.Register(Device{Schema: sec, Store: st, Hooks: &recHooks{needed: map[int32]bool{1: true, 2: true}}}); err != nil {
			t.Fatal(err)
		}
		return r, st
	}
	sreg, sst := mk(4)
	stream := saveStream(t, "m", nil, sreg)
	if !bytes.Contains(stream, []byte("\x05\x0bnic/rx/csum")) {
		t.Fatalf("nested subsection name not on the wire")
	}
	dreg, dst := mk(0)
	if _, err := Load(bytes.NewReader(stream), LoadOptions{Registry: dreg}); err != nil {
		t.Fatal(err)
	}
	if hexRange(dst, 0, 6) != hexRange(sst, 0, 6) || hexRange(dst, 8, 5) != hexRange(sst, 8, 5) {
		t.Errorf("got %x want %x", []byte(dst), []byte(sst))
	}
}
