//go:build !wasip1

package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image/color"
	"strings"
	"testing"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/display"
	"wasmvmm/host/plugin"
	"wasmvmm/host/vmstate"
	"wasmvmm/sdk/virtio/virtiotest"
)

// pluginStore is a plugin instance's linear memory as a vmstate store (as
// host/migration registers plugin devices).
type pluginStore struct{ i *plugin.Instance }

func (s pluginStore) ReadAt(p []byte, off int64) (int, error) {
	b, err := s.i.ReadMemory(uint32(off), uint32(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, b), nil
}

func (s pluginStore) WriteAt(p []byte, off int64) (int, error) {
	if err := s.i.WriteMemory(uint32(off), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s pluginStore) Size() int64 { return int64(s.i.MemorySize()) }

type pluginHooks struct{ i *plugin.Instance }

func (h pluginHooks) PreSave() error                 { return h.i.PreSave() }
func (h pluginHooks) PostLoad(version uint32) error  { return h.i.PostLoad(version) }
func (h pluginHooks) SubsectionNeeded(id int32) bool { return h.i.SubsectionNeeded(id) }

func registry(t *testing.T, inst *plugin.Instance) *vmstate.Registry {
	t.Helper()
	reg := vmstate.NewRegistry()
	props := map[string]uint64{}
	for name, v := range inst.Properties() {
		props[name] = v.Int
	}
	for _, sec := range inst.Sections() {
		if _, err := reg.Register(vmstate.Device{Name: sec.Name, InstanceID: sec.InstanceID, Schema: sec,
			Store: pluginStore{inst}, Props: props, Hooks: pluginHooks{inst}}); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

const machineName = "wasmvmm-test"

// scene sets up what the migration tests move: resource 1 (1024x768, the
// test card) on scanout 0, resource 2 (64x64, attached, partly
// transferred) shown nowhere, and a cursor.
func scene(e *env) {
	e.t.Helper()
	e.up()
	const w, h = 1024, 768
	pages := pageList(fbBase, w*h*4)
	for _, st := range []uint32{e.create(1, formatB8G8R8X8, w, h), e.attach(1, pages)} {
		if st != respOKNoData {
			e.t.Fatalf("setup: %#x", st)
		}
	}
	e.drawCard(pages, formatB8G8R8X8, w, h)
	e.transfer(1, 0, 0, w, h, 0)
	e.setScanout(0, 1, 0, 0, w, h)
	e.create(2, formatR8G8B8A8, 64, 64)
	small := pageList(fbBase+0x800000, 64*64*4)
	e.attach(2, small)
	e.drawCard(small, formatR8G8B8A8, 64, 64)
	e.transfer(2, 8, 8, 16, 16, 8*256+8*4)
}

// save writes a complete stream (RAM and the device) of e.
func save(t *testing.T, e *env) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := vmstate.Save(&out, machineName, e.guest.M.Blocks(), registry(t, e.inst)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestMigrate saves a device with resources and a scanout into a stream
// with its RAM, loads it into a fresh instance over fresh RAM, and checks
// the destination renders the same PNG and keeps working with the migrated
// page lists.
func TestMigrate(t *testing.T) {
	for _, v := range []uint32{1, 2} {
		t.Run(fmt.Sprintf("scanout_vmstate_version=%d", v), func(t *testing.T) {
			props := plugin.PropertyValues{"scanout_vmstate_version": v}
			src := start(t, nil, props)
			scene(src)
			want, err := display.PNG(src.inst, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Only the chunks holding pixels, and the used part of the
			// backing pool, go on the wire.
			if err := src.inst.PreSave(); err != nil {
				t.Fatal(err)
			}
			var pixels, backingSubs []string
			for _, sub := range src.inst.Sections()[0].Subsections {
				if !src.inst.SubsectionNeeded(sub.NeededID) {
					continue
				}
				if strings.HasPrefix(sub.Name, "virtio-gpu/pixels/") {
					pixels = append(pixels, sub.Name)
				} else {
					backingSubs = append(backingSubs, sub.Name)
				}
			}
			if fmt.Sprint(pixels) != "[virtio-gpu/pixels/0 virtio-gpu/pixels/1 virtio-gpu/pixels/2 virtio-gpu/pixels/3]" ||
				fmt.Sprint(backingSubs) != "[virtio-gpu/backing/0]" {
				t.Errorf("subsections needed: %v %v", pixels, backingSubs)
			}
			stream := save(t, src)
			if len(stream) > 12<<20 {
				t.Errorf("stream of %d bytes for 3 MiB of pixels and 3 MiB of guest framebuffer", len(stream))
			}

			dst := start(t, nil, props)
			if _, err := vmstate.Load(bytes.NewReader(stream), vmstate.LoadOptions{
				Machine: machineName, Blocks: dst.guest.M.Blocks(), Registry: registry(t, dst.inst),
			}); err != nil {
				t.Fatalf("load: %v\n%s", err, dst.logs)
			}
			got, err := display.PNG(dst.inst, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the destination renders another PNG")
			}
			if dst.scanoutField(0, "fb.stride") != 4096 || dst.scanoutField(0, "fb.format") != formatB8G8R8X8 {
				t.Error("fb fields not rebuilt on the destination")
			}
			// The driver goes on against the destination: resource 2's
			// migrated page list and pixels, shown on the scanout.
			src.inst, src.drv.Bus, src.drv.RAM, src.guest = dst.inst, bus{I: dst.inst}, dst.guest, dst.guest
			if st := src.setScanout(0, 2, 0, 0, 64, 64); st != respOKNoData {
				t.Fatalf("set scanout after migration: %#x", st)
			}
			img, err := display.Capture(dst.inst, 0)
			if err != nil {
				t.Fatal(err)
			}
			card := display.TestCard(64, 64)
			for y := 0; y < 64; y++ {
				for x := 0; x < 64; x++ {
					in := x >= 8 && x < 24 && y >= 8 && y < 24
					want := color.NRGBA{A: 0xff} // never transferred: zero
					if in {
						want = card.NRGBAAt(x, y)
					}
					if g := img.NRGBAAt(x, y); g != want {
						t.Fatalf("resource 2 pixel (%d,%d) = %v, want %v (transferred %v)", x, y, g, want, in)
					}
				}
			}
			if st := src.transfer(2, 0, 0, 64, 64, 0); st != respOKNoData {
				t.Fatalf("transfer after migration: %#x", st)
			}
			img, _ = display.Capture(dst.inst, 0)
			comparePixels(t, img, card)
			if st := src.create(1, formatB8G8R8X8, 16, 16); st != respErrInvalidResourceID {
				t.Errorf("resource 1 unknown after migration: %#x", st)
			}
		})
	}
}

// TestScanoutSchema: the fb.* scanout members exist on the wire with
// scanout_vmstate_version=2 only, and streams of one layout do not load
// into the other (which is why old machine types pin the property).
func TestScanoutSchema(t *testing.T) {
	fb := []string{"fb.format", "fb.bytes_pp", "fb.width", "fb.height", "fb.stride", "fb.offset"}
	envs := map[uint32]*env{}
	for _, v := range []uint32{1, 2} {
		e := start(t, nil, plugin.PropertyValues{"scanout_vmstate_version": v})
		envs[v] = e
		var scanouts *abi.Field
		for i := range e.inst.Sections()[0].Fields {
			if f := &e.inst.Sections()[0].Fields[i]; f.Name == "scanouts" {
				scanouts = f
			}
		}
		if scanouts == nil || scanouts.Count != maxScanouts {
			t.Fatalf("scanouts field %+v", scanouts)
		}
		exists := map[string]bool{}
		for i := range scanouts.Struct.Fields {
			m := &scanouts.Struct.Fields[i]
			exists[m.Name] = e.inst.FieldExists(m)
		}
		for _, name := range []string{"resource_id", "width", "height", "x", "y", "cursor.resource_id", "cursor.hot_x", "cursor.hot_y", "cursor.pos.x", "cursor.pos.y"} {
			if !exists[name] {
				t.Errorf("version %d: %s absent", v, name)
			}
		}
		for _, name := range fb {
			if exists[name] != (v == 2) {
				t.Errorf("version %d: %s exists %v", v, name, exists[name])
			}
		}
	}
	for _, c := range [][2]uint32{{2, 1}, {1, 2}} {
		src := start(t, nil, plugin.PropertyValues{"scanout_vmstate_version": c[0]})
		scene(src)
		dst := envs[c[1]]
		_, err := vmstate.Load(bytes.NewReader(save(t, src)), vmstate.LoadOptions{
			Machine: machineName, Blocks: dst.guest.M.Blocks(), Registry: registry(t, dst.inst),
		})
		if err == nil {
			t.Errorf("a stream of scanout layout %d loaded into a device of layout %d", c[0], c[1])
		}
	}
}

// TestLoadRefusesInconsistentState: post-load checks what the stream says
// against the arena, the pool and the scanouts.
func TestLoadRefusesInconsistentState(t *testing.T) {
	src := start(t, nil, nil)
	scene(src)
	src.inst.PreSave()
	sec := src.inst.Sections()[0]
	var res *abi.Field
	for i := range sec.Fields {
		if sec.Fields[i].Name == "resources" {
			res = &sec.Fields[i]
		}
	}
	memberOff := func(name string) uint32 {
		for _, m := range res.Struct.Fields {
			if m.Name == name {
				return m.Offset
			}
		}
		t.Fatalf("no member %s", name)
		return 0
	}
	for _, c := range []struct {
		name   string
		member string
		value  uint32
	}{
		{"image outside the arena", "pixels", arenaBytes - 100},
		{"unknown format", "format", 5},
		{"backing outside the pool", "backing_start", 9000},
		{"backing bytes wrong", "backing_bytes", 12345},
	} {
		dst := start(t, nil, nil)
		stream := save(t, src)
		// Load, then corrupt resource entry 0 or 1 in memory and run
		// post-load again, as a stream carrying those values would.
		if _, err := vmstate.Load(bytes.NewReader(stream), vmstate.LoadOptions{
			Machine: machineName, Blocks: dst.guest.M.Blocks(), Registry: registry(t, dst.inst),
		}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		le.PutUint32(b, c.value)
		if err := dst.inst.WriteMemory(res.Offset+memberOff(c.member), b); err != nil {
			t.Fatal(err)
		}
		if err := dst.inst.PostLoad(1); err == nil {
			t.Errorf("%s: post-load accepted it", c.name)
		}
	}
}

// TestMigratePendingCommands: commands a budget-limited call left in the
// control queue for the source's continuation timer (which does not
// migrate) complete on the destination without another notification.
func TestMigratePendingCommands(t *testing.T) {
	const w, h, n = 1920, 1080, 40
	src := start(t, nil, nil)
	src.up()
	src.create(1, formatB8G8R8X8, w, h)
	src.attach(1, pageList(fbBase, w*h*4))
	var heads []uint16
	for i := 0; i < n; i++ {
		b := words(hdr(cmdTransferToHost2D, 0), 0, 0, w, h)
		b = binary.LittleEndian.AppendUint64(b, 0)
		b = words(b, 1, 0)
		at := uint64(cmdAddr + 0x40*i)
		src.guest.Write(at, b)
		head, err := src.ctrl.Add([]virtiotest.Buf{{Addr: at, Len: uint32(len(b))}, {Addr: respAddr + 0x40*uint64(i), Len: hdrSize, Write: true}})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, head)
	}
	before := src.ctrl.UsedIdx()
	src.h.clock.Pause() // the source stops before its continuation runs
	src.ctrl.Publish(heads...)
	src.ctrl.Notify()
	done := src.ctrl.UsedIdx() - before
	if done == 0 || done >= n {
		t.Fatalf("the source completed %d of %d transfers before stopping", done, n)
	}
	stream := save(t, src)
	dst := start(t, nil, nil)
	if _, err := vmstate.Load(bytes.NewReader(stream), vmstate.LoadOptions{
		Machine: machineName, Blocks: dst.guest.M.Blocks(), Registry: registry(t, dst.inst),
	}); err != nil {
		t.Fatal(err)
	}
	src.inst, src.drv.Bus, src.drv.RAM, src.guest = dst.inst, bus{I: dst.inst}, dst.guest, dst.guest
	deadline := time.Now().Add(10 * time.Second)
	for src.ctrl.UsedIdx()-before != n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := src.ctrl.UsedIdx() - before; got != n {
		t.Fatalf("%d of %d transfers completed after migration (%v)", got, n, dst.inst.Err())
	}
}
