//go:build !wasip1

package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/netdev"
	"wasmvmm/host/plugin"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

func feat(bits ...uint) uint64 {
	var f uint64
	for _, b := range bits {
		f |= 1 << b
	}
	return f
}

var offloads = feat(fCsum, fGuestCsum, fHostTSO4, fHostTSO6, fGuestTSO4, fGuestTSO6, fHostUSO, fGuestUSO4, fGuestUSO6)

func TestFeaturesFollowProperties(t *testing.T) {
	base := uint64(virtio.TransportFeatures) | feat(fMAC, fMTU, fStatus)
	for _, c := range []struct {
		name  string
		props plugin.PropertyValues
		want  uint64
	}{
		{"defaults", nil, base | feat(fMrgRxbuf)},
		{"no mrg_rxbuf", plugin.PropertyValues{"mrg_rxbuf": false}, base},
		{"offloads without a vnet header", plugin.PropertyValues{"csum": true, "host_uso": true}, base | feat(fMrgRxbuf)},
		{"vnet header", plugin.PropertyValues{"vnet_hdr": true}, base | feat(fMrgRxbuf) | offloads},
		{"old machine type: USO off", plugin.PropertyValues{"vnet_hdr": true, "host_uso": false, "guest_uso4": false, "guest_uso6": false},
			base | feat(fMrgRxbuf) | offloads&^feat(fHostUSO, fGuestUSO4, fGuestUSO6)},
		{"one USO bit off", plugin.PropertyValues{"vnet_hdr": true, "guest_uso6": false}, base | feat(fMrgRxbuf) | offloads&^feat(fGuestUSO6)},
		{"no csum: no host offloads", plugin.PropertyValues{"vnet_hdr": true, "csum": false},
			base | feat(fMrgRxbuf) | offloads&^feat(fCsum, fHostTSO4, fHostTSO6, fHostUSO)},
		{"no guest_csum: no guest offloads", plugin.PropertyValues{"vnet_hdr": true, "guest_csum": false},
			base | feat(fMrgRxbuf) | offloads&^feat(fGuestCsum, fGuestTSO4, fGuestTSO6, fGuestUSO4, fGuestUSO6)},
		{"TSO off", plugin.PropertyValues{"vnet_hdr": true, "host_tso4": false, "host_tso6": false, "guest_tso4": false, "guest_tso6": false},
			base | feat(fMrgRxbuf) | offloads&^feat(fHostTSO4, fHostTSO6, fGuestTSO4, fGuestTSO6)},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := start(t, netdev.NewDiscard(), c.props)
			if got := e.drv.DeviceFeatures(); got != c.want {
				t.Errorf("offered %#x, want %#x (extra %#x, missing %#x)", got, c.want, got&^c.want, c.want&^got)
			}
			// A driver cannot negotiate what is not offered.
			e.up(allFeatures)
			if e.drv.Features != c.want&allFeatures {
				t.Errorf("negotiated %#x", e.drv.Features)
			}
		})
	}
}

func TestConfigAndProperties(t *testing.T) {
	e := start(t, netdev.NewDiscard(), plugin.PropertyValues{"mac": "02:00:5E:10:00:01", "mtu": 9000})
	if id := e.drv.Bus.Read(virtio.RegDeviceID, 4); id != deviceID {
		t.Errorf("device id %d", id)
	}
	var mac [6]byte
	for i := range mac {
		mac[i] = byte(e.drv.Config(uint64(cfgMAC+i), 1))
	}
	if mac != [6]byte{2, 0, 0x5e, 0x10, 0, 1} {
		t.Errorf("mac % x", mac)
	}
	if s := e.drv.Config(cfgStatus, 2); s != statusLinkUp {
		t.Errorf("status %d", s)
	}
	if m := e.drv.Config(cfgMTU, 2); m != 9000 {
		t.Errorf("mtu %d", m)
	}
	// Config writes are refused, the value stays.
	e.drv.Bus.Write(virtio.RegConfig+cfgMAC, 1, 0xff)
	if b := e.drv.Config(cfgMAC, 1); b != 2 {
		t.Errorf("mac byte 0 is %#x after a write", b)
	}

	logs := &logBuf{}
	rt := newRuntime(t, logs, plugin.Config{})
	mod, err := rt.Load(context.Background(), wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		props plugin.PropertyValues
		be    plugin.Backend
		want  string
	}{
		{plugin.PropertyValues{"mac": "01:00:5e:00:00:01"}, netdev.NewDiscard(), "multicast"},
		{plugin.PropertyValues{"mac": "52:54:00:12:34"}, netdev.NewDiscard(), "not a MAC address"},
		{plugin.PropertyValues{"mac": "52:54:00:12:34:zz"}, netdev.NewDiscard(), "not a MAC address"},
		{plugin.PropertyValues{"mtu": 10}, netdev.NewDiscard(), "smallest IPv4 MTU"},
		{nil, nil, `net backend named "net"`},
	} {
		inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "net0", Host: &host{clock: plugin.NewVMClock(true), net: c.be}})
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.Realize(c.props); err == nil {
			t.Errorf("%v: realized", c.props)
		}
		if logs.count(c.want) == 0 {
			t.Errorf("%v: log lacks %q:\n%s", c.props, c.want, logs)
		}
		inst.Close()
	}
}

// peer returns a unix backend pair: the device's end and the test's end.
func peer(t *testing.T) (dev, test *netdev.Unix) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "net.sock")
	l, err := netdev.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := netdev.ConnectUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return l, c
}

func recvFrame(t *testing.T, u *netdev.Unix) []byte {
	t.Helper()
	buf := make([]byte, 70000)
	deadline := time.Now().Add(patience)
	for {
		n, err := u.RecvSG([][]byte{buf})
		if err == nil {
			return buf[:n]
		}
		if !errors.Is(err, netdev.ErrWouldBlock) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no frame from the device")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestTransmit(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)
	frames := [][]byte{frame(60, 1), frame(1514, 2), frame(14, 3), frame(900, 4)}
	// Header and frame in one buffer, then cut inside the header, at the
	// header's end and inside the frame.
	for _, cuts := range [][]int{nil, {5}, {hdrLen, 100, 7}, {hdrLen + 14}} {
		used := e.transmit(frames, cuts...)
		for i, u := range used {
			if u.Len != 0 {
				t.Errorf("cuts %v: frame %d used len %d, want 0", cuts, i, u.Len)
			}
		}
		for i, f := range frames {
			if got := recvFrame(t, testEnd); !bytes.Equal(got, f) {
				t.Fatalf("cuts %v: frame %d arrived as %d bytes, differs from the %d sent", cuts, i, len(got), len(f))
			}
		}
		if level, _ := e.h.irq(); !level || e.drv.ISR()&virtio.InterruptUsedBuffer == 0 {
			t.Fatal("no used-buffer interrupt after transmitting")
		}
		e.drv.Ack(virtio.InterruptUsedBuffer)
		if level, _ := e.h.irq(); level {
			t.Fatal("line high after ACK")
		}
	}
	// An indirect chain.
	pkt := append(make([]byte, hdrLen), frame(300, 9)...)
	e.guest.Write(txData, pkt[:50])
	e.guest.Write(txData+0x1000, pkt[50:])
	head, err := e.tx.AddIndirect(tableAddr, []virtiotest.Buf{{Addr: txData, Len: 50}, {Addr: txData + 0x1000, Len: uint32(len(pkt) - 50)}})
	if err != nil {
		t.Fatal(err)
	}
	e.tx.Publish(head)
	e.tx.Notify()
	if got := recvFrame(t, testEnd); !bytes.Equal(got, pkt[hdrLen:]) {
		t.Fatal("indirect frame differs")
	}
}

func TestReceive(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)
	if e.drv.Features&feat(fMrgRxbuf) == 0 {
		t.Fatal("MRG_RXBUF not negotiated")
	}
	// Big buffers: one chain per frame, num_buffers 1.
	e.postRx(4, 2048)
	frames := [][]byte{frame(60, 1), frame(1514, 2), frame(200, 3)}
	_, edges0 := e.h.irq()
	for _, f := range frames {
		if _, err := testEnd.SendSG([][]byte{f}); err != nil {
			t.Fatal(err)
		}
	}
	got := e.waitRx(len(frames))
	for i, r := range got {
		if !bytes.Equal(r.frame, frames[i]) || r.nbuf != 1 || !bytes.Equal(r.hdr[:10], make([]byte, 10)) {
			t.Errorf("frame %d: %d bytes, num_buffers %d, header % x", i, len(r.frame), r.nbuf, r.hdr)
		}
	}
	if _, edges := e.h.irq(); edges == edges0 {
		t.Error("no interrupt for received frames")
	}
	e.drv.Ack(virtio.InterruptUsedBuffer)

	// Small buffers of two descriptors each: a frame spans several chains.
	// One chain is still posted from above (2048 bytes): use it first.
	e.postRx(8, 200, 312)
	big := frame(1400, 7)
	small := frame(100, 8)
	testEnd.SendSG([][]byte{small})
	testEnd.SendSG([][]byte{big})
	got = e.waitRx(2)
	if !bytes.Equal(got[0].frame, small) || got[0].nbuf != 1 {
		t.Errorf("small frame: %d bytes, num_buffers %d", len(got[0].frame), got[0].nbuf)
	}
	// 1412 bytes with the header in chains of 512: three of them.
	if !bytes.Equal(got[1].frame, big) || got[1].nbuf != 3 {
		t.Errorf("mergeable frame: %d bytes, num_buffers %d, equal %v", len(got[1].frame), got[1].nbuf, bytes.Equal(got[1].frame, big))
	}
	if e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 || e.inst.Err() != nil {
		t.Fatalf("device broken: status %#x, %v", e.drv.Status(), e.inst.Err())
	}
}

func TestReceiveWithoutMergeable(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures &^ feat(fMrgRxbuf))
	// Header and data in separate descriptors, as older drivers post.
	e.postRx(2, hdrLen, 1518)
	f := frame(1514, 5)
	testEnd.SendSG([][]byte{f})
	got := e.waitRx(1)
	if !bytes.Equal(got[0].frame, f) || got[0].nbuf != 1 {
		t.Errorf("frame: %d bytes, num_buffers %d", len(got[0].frame), got[0].nbuf)
	}
	// A frame larger than a chain is dropped; the chain serves the next.
	testEnd.SendSG([][]byte{frame(3000, 1)})
	f2 := frame(64, 6)
	testEnd.SendSG([][]byte{f2})
	got = e.waitRx(1)
	if !bytes.Equal(got[0].frame, f2) {
		t.Errorf("frame after an oversized one: %d bytes", len(got[0].frame))
	}
	if e.logs.count("does not fit") != 1 {
		t.Errorf("oversized frame not logged once:\n%s", e.logs)
	}
}

// TestReceiveStallsAndResumes: without receive buffers the device stops
// reading the backend; the driver's next receive notification resumes it.
func TestReceiveStallsAndResumes(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)
	f := frame(500, 3)
	testEnd.SendSG([][]byte{f})
	time.Sleep(20 * time.Millisecond)
	if devEnd.Ready()&abi.EventReadable == 0 {
		t.Fatal("the device consumed a frame without buffers")
	}
	e.postRx(2, 2048)
	got := e.waitRx(1)
	if !bytes.Equal(got[0].frame, f) {
		t.Fatal("frame differs after resuming")
	}
	// Keep going: frames arriving later are delivered through readiness.
	f2 := frame(700, 4)
	testEnd.SendSG([][]byte{f2})
	if got := e.waitRx(1); !bytes.Equal(got[0].frame, f2) {
		t.Fatal("second frame differs")
	}
}

// TestBackToBack connects two device instances over the unix backend and
// exchanges frames both ways, each driver on its own guest RAM.
func TestBackToBack(t *testing.T) {
	a, b := peer(t)
	ea := start(t, a, plugin.PropertyValues{"mac": "52:54:00:00:00:0a"})
	eb := start(t, b, plugin.PropertyValues{"mac": "52:54:00:00:00:0b"})
	ea.up(allFeatures)
	eb.up(allFeatures)
	ea.postRx(64, 1536)
	eb.postRx(64, 1536)
	var ab, ba [][]byte
	for i := 0; i < 40; i++ {
		ab = append(ab, frame(60+i*35, byte(i)))
		ba = append(ba, frame(1514-i*30, byte(100+i)))
	}
	ea.transmit(ab, 20)
	eb.transmit(ba)
	gb := eb.waitRx(len(ab))
	ga := ea.waitRx(len(ba))
	for i := range ab {
		if !bytes.Equal(gb[i].frame, ab[i]) {
			t.Fatalf("a->b frame %d differs (%d bytes, want %d)", i, len(gb[i].frame), len(ab[i]))
		}
		if !bytes.Equal(ga[i].frame, ba[i]) {
			t.Fatalf("b->a frame %d differs (%d bytes, want %d)", i, len(ga[i].frame), len(ba[i]))
		}
	}
}

func TestVMStateSection(t *testing.T) {
	e := start(t, netdev.NewDiscard(), nil)
	secs := e.inst.Sections()
	if len(secs) != 1 || secs[0].Name != "virtio-net" || secs[0].VersionID != 1 || secs[0].MinimumVersionID != 1 {
		t.Fatalf("sections %+v", secs)
	}
	var names []string
	for _, f := range secs[0].Fields {
		names = append(names, f.Name)
	}
	if got := strings.Join(names, ","); got != "transport,queues,mac,status,mtu,host_features" {
		t.Errorf("fields %s", got)
	}
}

// TestTransmitBackpressure: when the peer does not read, the socket fills,
// the device leaves the remaining chains in the ring and waits for the
// backend to become writable; draining the peer lets every frame through,
// in order and intact.
func TestTransmitBackpressure(t *testing.T) {
	devEnd, testEnd := peer(t)
	e := start(t, devEnd, nil)
	e.up(allFeatures)
	const count = 60
	var frames [][]byte
	var heads []uint16
	for i := 0; i < count; i++ {
		f := frame(20000+i, byte(i))
		frames = append(frames, f)
		addr := txData + uint64(i)*0x6000
		e.guest.Write(addr, append(make([]byte, hdrLen), f...))
		h, err := e.tx.Add([]virtiotest.Buf{{Addr: addr, Len: uint32(hdrLen + len(f))}})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	e.tx.Publish(heads...)
	e.tx.Notify()
	time.Sleep(20 * time.Millisecond)
	if u := e.tx.UsedIdx(); u == 0 || u >= count {
		t.Fatalf("%d of %d frames completed before the peer read anything; want the socket to fill first", u, count)
	}
	for i, f := range frames {
		if got := recvFrame(t, testEnd); !bytes.Equal(got, f) {
			t.Fatalf("frame %d: %d bytes, want %d", i, len(got), len(f))
		}
	}
	deadline := time.Now().Add(patience)
	for e.tx.UsedIdx() != count {
		if time.Now().After(deadline) {
			t.Fatalf("used idx %d, want %d", e.tx.UsedIdx(), count)
		}
		time.Sleep(time.Millisecond)
	}
}
