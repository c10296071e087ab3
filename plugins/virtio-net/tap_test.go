//go:build !wasip1

package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/netdev"
	"wasmvmm/host/netdev/netnstest"
	"wasmvmm/host/plugin"
)

// TestTapInNamespace runs the device over a real tap interface in a
// network namespace the test creates: the tap gets an address, the driver
// sends an ARP request for it from the device, and the kernel's reply
// comes back into the device's receive buffers. Plain frames, and frames
// with a virtio_net_hdr (tap with IFF_VNET_HDR, offloads offered).
func TestTapInNamespace(t *testing.T) {
	ns := netnstest.New(t)
	for i, c := range []struct {
		spec  string
		props plugin.PropertyValues
	}{
		{"tap:wvnet0", nil},
		{"tap:wvnet1,vnet_hdr", plugin.PropertyValues{"vnet_hdr": true}},
	} {
		t.Run(c.spec, func(t *testing.T) {
			var be netdev.Backend
			if err := ns.Do(func() error {
				var err error
				be, err = netdev.OpenBackend(c.spec)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			tap := be.(*netdev.Tap)
			hostIP := net.IPv4(10, 80, byte(i), 1)
			guestIP := net.IPv4(10, 80, byte(i), 2)
			for _, args := range [][]string{
				{"addr", "add", hostIP.String() + "/24", "dev", tap.Name()},
				{"link", "set", tap.Name(), "up"},
			} {
				if _, err := ns.IP(args...); err != nil {
					t.Fatal(err)
				}
			}
			out, _ := ns.IP("link", "show", tap.Name())
			e := start(t, be, c.props)
			e.up(allFeatures)
			if c.props != nil && e.drv.Features&offloads != offloads {
				t.Errorf("offloads not negotiated with a vnet-header tap: %#x", e.drv.Features)
			}
			// With guest segmentation offloads a frame may be 64 KiB: the device
			// takes buffers for that much before it reads a frame.
			e.postRx(64, 2048)
			mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
			e.transmit([][]byte{netnstest.ARPRequest(mac, guestIP, hostIP)})
			deadline := time.Now().Add(10 * time.Second)
			for {
				if time.Now().After(deadline) {
					t.Fatal("no ARP reply from the kernel")
				}
				r := e.waitRx(1)[0]
				if r.nbuf != 1 || r.hdr[1] != 0 {
					t.Errorf("header % x", r.hdr)
				}
				got, ok := netnstest.ARPReply(r.frame, mac, guestIP, hostIP)
				if !ok {
					continue // IPv6 neighbour discovery and the like
				}
				if !strings.Contains(out, "link/ether "+got.String()) {
					t.Errorf("ARP reply names %s, the tap is\n%s", got, out)
				}
				break
			}
			if sent, recv := tap.Stats(); sent != 1 || recv == 0 {
				t.Errorf("tap stats: %d sent, %d received", sent, recv)
			}
		})
	}
}
