package netnstest

import (
	"bytes"
	"encoding/binary"
	"net"
)

// ARPRequest builds a 42-byte Ethernet frame carrying an ARP request from
// (mac, ip) for the address target, sent to the broadcast address.
func ARPRequest(mac net.HardwareAddr, ip, target net.IP) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	binary.BigEndian.PutUint16(f[14:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // protocol: IPv4
	f[18], f[19] = 6, 4
	binary.BigEndian.PutUint16(f[20:], 1) // request
	copy(f[22:28], mac)
	copy(f[28:32], ip.To4())
	copy(f[38:42], target.To4())
	return f
}

// ARPReply reports whether Ethernet frame f is the ARP reply to the
// request ARPRequest(mac, ip, target) built, and returns the MAC address
// it announces for target.
func ARPReply(f []byte, mac net.HardwareAddr, ip, target net.IP) (net.HardwareAddr, bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 || binary.BigEndian.Uint16(f[20:]) != 2 {
		return nil, false
	}
	if !bytes.Equal(f[0:6], mac) || !bytes.Equal(f[28:32], target.To4()) ||
		!bytes.Equal(f[32:38], mac) || !bytes.Equal(f[38:42], ip.To4()) {
		return nil, false
	}
	return net.HardwareAddr(bytes.Clone(f[22:28])), true
}
