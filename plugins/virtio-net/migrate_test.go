//go:build !wasip1

package main

import (
	"bytes"
	"encoding/binary"
	"testing"

	"wasmvmm/host/plugin"
)

// TestMigrateState saves a running device's section the way the host
// does (pre-save, then the fields from plugin memory), loads it into a
// fresh instance over the same guest RAM and another backend, and lets the
// driver go on: receive buffers the source held but never used come back,
// nothing is lost or used twice.
func TestMigrateState(t *testing.T) {
	srcEnd, srcPeer := peer(t)
	src := start(t, srcEnd, plugin.PropertyValues{"mac": "52:54:00:00:00:21"})
	src.up(allFeatures)
	src.postRx(8, 2048)
	f1, f2 := frame(100, 1), frame(200, 2)
	srcPeer.SendSG([][]byte{f1})
	srcPeer.SendSG([][]byte{f2})
	got := src.waitRx(2)
	if !bytes.Equal(got[0].frame, f1) || !bytes.Equal(got[1].frame, f2) {
		t.Fatal("frames before migration differ")
	}
	src.transmit([][]byte{frame(80, 3)})
	recvFrame(t, srcPeer)

	secs := src.inst.Sections()
	if err := src.inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	var saved [][]byte
	fields := map[string][]byte{}
	for _, f := range secs[0].Fields {
		b, err := src.inst.ReadMemory(f.Offset, f.Size*f.Count)
		if err != nil {
			t.Fatal(err)
		}
		saved = append(saved, b)
		fields[f.Name] = b
	}
	// Queue states: 40 bytes each (3 addresses, 4 indices, 2 flags, padded
	// by the reflection builder as laid out in memory); the receive queue's
	// last_avail_idx follows desc, driver, device and num.
	rxState := fields["queues"]
	lastAvail := binary.LittleEndian.Uint16(rxState[26:])
	usedIdx := binary.LittleEndian.Uint16(rxState[28:])
	if lastAvail != usedIdx || usedIdx != 2 {
		t.Errorf("saved receive queue: last_avail_idx %d, used_idx %d; want both 2 (no buffer in flight)", lastAvail, usedIdx)
	}
	if !bytes.Equal(fields["mac"], []byte{0x52, 0x54, 0, 0, 0, 0x21}) {
		t.Errorf("saved mac % x", fields["mac"])
	}

	// The destination: same RAM, its own backend, another default MAC (the
	// migrated one wins).
	dstEnd, dstPeer := peer(t)
	dst := startWith(t, dstEnd, nil, src.h.mem, plugin.Config{})
	dsec := dst.inst.Sections()[0]
	for i, f := range dsec.Fields {
		if err := dst.inst.WriteMemory(f.Offset, saved[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := dst.inst.PostLoad(dsec.VersionID); err != nil {
		t.Fatal(err)
	}
	src.inst.Close()
	src.drv.Bus, src.inst, src.h = bus{I: dst.inst}, dst.inst, dst.h
	if b := src.drv.Config(cfgMAC+5, 1); b != 0x21 {
		t.Errorf("mac after migration ends in %#x", b)
	}
	f4 := frame(300, 4)
	dstPeer.SendSG([][]byte{f4})
	if got := src.waitRx(1); !bytes.Equal(got[0].frame, f4) {
		t.Fatal("frame after migration differs")
	}
	f5 := frame(400, 5)
	src.transmit([][]byte{f5})
	if got := recvFrame(t, dstPeer); !bytes.Equal(got, f5) {
		t.Fatal("transmitted frame after migration differs")
	}
	if src.rx.UsedIdx() != 3 {
		t.Errorf("receive used idx %d after migration, want 3", src.rx.UsedIdx())
	}
}
