package compattest

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"wasmvmm/host/compat"
	"wasmvmm/host/vmstate"
)

// USO feature bits (virtio 1.2 §5.1.3): GUEST_USO4, GUEST_USO6, HOST_USO.
const usoBits = 1<<54 | 1<<55 | 1<<56

// offered reads virtio-net's device feature bits through its registers, as
// a driver does.
func offered(t *testing.T, m *compat.Machine) uint64 {
	t.Helper()
	dev, err := m.Device("net0")
	if err != nil {
		t.Fatal(err)
	}
	base := dev.Spec().MMIO[0]
	var f uint64
	for sel := uint64(0); sel < 2; sel++ {
		if !m.M.MMIO.Write(base+0x14, 4, sel) {
			t.Fatal("no virtio-net at its address")
		}
		v, _ := m.M.MMIO.Read(base+0x10, 4)
		f |= v << (32 * sel)
	}
	return f
}

func loadedField(t *testing.T, m *compat.Machine, key string) []byte {
	t.Helper()
	st, err := compat.DeviceState(m)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := st[key]
	if !ok {
		t.Fatalf("no field %s", key)
	}
	return v
}

// TestUSOFlags: virtio-net on wasmvmm-virt-1.0 does not offer USO, on 1.1
// and 2.0 it does (with a vnet header; without one it offers no offloads);
// the golden 1.0 stream, whose driver negotiated everything offered,
// loads on this build with machine type 1.0 and keeps USO off.
func TestUSOFlags(t *testing.T) {
	for _, c := range []struct {
		machine string
		uso     bool
	}{{"wasmvmm-virt-1.0", false}, {"wasmvmm-virt-1.1", true}, {"wasmvmm-virt-2.0", true}} {
		for _, rel := range compat.Releases() {
			mt := machineType(t, c.machine)
			m := newMachine(t, mt, compat.MachineOptions{Set: rel})
			f := offered(t, m)
			if got := f&usoBits == usoBits; got != c.uso || (!c.uso && f&usoBits != 0) {
				t.Errorf("%s with %s: offered features %#x: USO %v, want %v", c.machine, rel.Name, f, got, c.uso)
			}
			if f&(1<<0) == 0 {
				t.Errorf("%s: CSUM not offered (%#x): the vnet header is not on, the USO check proves nothing", c.machine, f)
			}
		}
	}
	for _, c := range []struct {
		machine string
		uso     bool
	}{{"wasmvmm-virt-1.0", false}, {"wasmvmm-virt-1.1", true}} {
		mt := machineType(t, c.machine)
		dst := newMachine(t, mt, compat.MachineOptions{Set: release(t, "r1"), Incoming: true})
		if err := compat.LoadFile(context.Background(), dst, goldenPath(c.machine, "r1")); err != nil {
			t.Fatalf("%s golden stream: %v", c.machine, err)
		}
		hf := binary.LittleEndian.Uint64(loadedField(t, dst, "virtio-net#0/host_features"))
		if got := hf&usoBits != 0; got != c.uso {
			t.Errorf("%s loaded: host_features %#x, USO %v, want %v", c.machine, hf, got, c.uso)
		}
		if f := offered(t, dst); (f&usoBits != 0) != c.uso {
			t.Errorf("%s loaded: the device offers %#x", c.machine, f)
		}
	}
}

// TestScanoutFields: streams of machine types before 2.0 carry no fb.*
// scanout fields, 2.0's do, and each loads on this build with its
// machine type (TestGoldenStreams checks the state).
func TestScanoutFields(t *testing.T) {
	for _, c := range []struct {
		machine string
		fb      bool
	}{{"wasmvmm-virt-1.0", false}, {"wasmvmm-virt-1.1", false}, {"wasmvmm-virt-2.0", true}} {
		path := goldenPath(c.machine, "r1")
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		a, err := vmstate.Analyze(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !bytes.Contains(a.Description, []byte(`"virtio-gpu"`)) {
			t.Fatalf("%s: no virtio-gpu section in the stream", path)
		}
		if got := bytes.Contains(a.Description, []byte(`"fb.format"`)); got != c.fb {
			t.Errorf("%s: fb.* scanout fields in the stream: %v, want %v", path, got, c.fb)
		}
		mt := machineType(t, c.machine)
		dst := newMachine(t, mt, compat.MachineOptions{Set: release(t, "r1"), Incoming: true})
		if err := compat.LoadFile(context.Background(), dst, path); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		st, err := compat.DeviceState(dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, got := st["virtio-gpu#0/scanouts[0]/fb.format"]; got != c.fb {
			t.Errorf("%s loaded: scanout fb.format exists %v, want %v", c.machine, got, c.fb)
		}
	}
}

// TestUSOLesson re-creates QEMU's 8.1/8.2 USO bug: a guest that negotiated
// USO cannot migrate to a device that does not offer it (the older binary
// of QEMU's story, here a destination with USO switched off), which is why
// the compat entries must sit on the newest machine type WITHOUT USO. On
// wasmvmm-virt-1.0 USO is never offered, so the same destination takes the
// guest; on 1.1, where it is offered and negotiated, it refuses it.
func TestUSOLesson(t *testing.T) {
	ctx := context.Background()
	noUSO := map[string]map[string]any{"net0": {"vnet_hdr": true, "host_uso": false, "guest_uso4": false, "guest_uso6": false}}
	for _, c := range []struct {
		machine string
		ok      bool
	}{{"wasmvmm-virt-1.0", true}, {"wasmvmm-virt-1.1", false}} {
		mt := machineType(t, c.machine)
		src := newMachine(t, mt, compat.MachineOptions{Set: release(t, "r1")})
		if err := compat.Drive(src); err != nil {
			t.Fatal(err)
		}
		dst := newMachine(t, mt, compat.MachineOptions{Set: release(t, "r1"), Properties: noUSO, Incoming: true})
		err := compat.Migrate(ctx, src, dst, filepath.Join(t.TempDir(), "m.sock"), 30*time.Second)
		if (err == nil) != c.ok {
			t.Fatalf("%s to a destination without USO: %v; want success %v", c.machine, err, c.ok)
		}
		t.Logf("%s to a destination without USO: %v", c.machine, err)
	}
}
