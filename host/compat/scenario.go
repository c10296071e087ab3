package compat

import (
	"encoding/binary"
	"fmt"

	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
)

// virtio-mmio registers and status bits (virtio 1.2 §4.2.2), as a driver
// uses them.
const (
	vmDeviceFeatures    = 0x010
	vmDeviceFeaturesSel = 0x014
	vmDriverFeatures    = 0x020
	vmDriverFeaturesSel = 0x024
	vmQueueSel          = 0x030
	vmQueueNumMax       = 0x034
	vmQueueNum          = 0x038
	vmQueueReady        = 0x044
	vmQueueNotify       = 0x050
	vmStatus            = 0x070
	vmQueueDescLow      = 0x080
	vmQueueDriverLow    = 0x090
	vmQueueDeviceLow    = 0x0a0

	statusAck        = 0x01
	statusDriver     = 0x02
	statusDriverOK   = 0x04
	statusFeaturesOK = 0x08
)

// ICP registers (plugins/ppc-icp).
const (
	icpXIRR = 0x0
	icpMFRR = 0xc
)

// Guest RAM used by the scenario's virtqueues: a 64 KiB window per device
// from scenarioBase, one 16 KiB slot per queue (descriptors, then the
// driver area at +0x1000, the device area at +0x2000, buffers at +0x3000).
const (
	scenarioBase   = 0x100000
	scenarioWindow = 0x10000
	queueSlot      = 0x4000
	scenarioQueue  = 64 // entries per queue
	// scenarioFrame is the transmitted frame: an Ethernet header and
	// payload, after the 12-byte virtio_net_hdr.
	scenarioFrame = 60
)

// Drive puts every device of the machine into a known state through its
// registers, as a driver would: the UART gets a line setup and a scratch
// value; each virtio device is negotiated (every offered feature
// accepted), its queues set up in guest RAM and DRIVER_OK set; virtio-net
// transmits one frame; each present ICP gets an IPI (server 0: pending;
// others: accepted). The migrated state then holds non-reset values that a
// migration must carry.
func Drive(m *Machine) error {
	for i, s := range deviceSpecs(m) {
		var err error
		switch config.PluginType(s.spec.Plugin) {
		case "serial-16550":
			err = driveSerial(m, s.spec)
		case "virtio-net":
			err = driveVirtio(m, s.spec, i, 2, 1)
		case "virtio-blk":
			err = driveVirtio(m, s.spec, i, 1, -1)
		case "virtio-gpu":
			err = driveVirtio(m, s.spec, i, 2, -1)
		case "ppc-icp":
			err = driveICP(m, s.dev, s.spec)
		}
		if err != nil {
			return fmt.Errorf("drive %s (%s): %w", s.spec.ID, s.spec.Plugin, err)
		}
	}
	return nil
}

type placed struct {
	dev  *machine.PluginDevice
	spec machine.DeviceSpec
}

func deviceSpecs(m *Machine) []placed {
	var out []placed
	for _, d := range m.M.Devices() {
		if pd, ok := d.(*machine.PluginDevice); ok {
			out = append(out, placed{pd, pd.Spec()})
		}
	}
	return out
}

func pioWrite(m *Machine, addr uint64, size int, v uint64) error {
	if !m.M.PIO.Write(addr, size, v) {
		return fmt.Errorf("no device at port %#x", addr)
	}
	return nil
}

func mmioWrite(m *Machine, addr uint64, size int, v uint64) error {
	if !m.M.MMIO.Write(addr, size, v) {
		return fmt.Errorf("no device at MMIO %#x", addr)
	}
	return nil
}

func mmioRead(m *Machine, addr uint64, size int) (uint64, error) {
	v, ok := m.M.MMIO.Read(addr, size)
	if !ok {
		return 0, fmt.Errorf("no device at MMIO %#x", addr)
	}
	return v, nil
}

func driveSerial(m *Machine, s machine.DeviceSpec) error {
	if len(s.PIO) == 0 {
		return fmt.Errorf("no port")
	}
	base := s.PIO[0]
	for _, w := range []struct {
		off uint64
		v   uint64
	}{{3, 0x83}, {0, 0x0c}, {1, 0x00}, {3, 0x03}, {4, 0x0b}, {7, 0x5a}} { // 9600 baud 8N1, DTR|RTS|OUT2, scratch
		if err := pioWrite(m, base+w.off, 1, w.v); err != nil {
			return err
		}
	}
	return nil
}

// driveVirtio negotiates a virtio-mmio device, sets up nq queues and, for
// txq >= 0, transmits one frame on that queue.
func driveVirtio(m *Machine, s machine.DeviceSpec, index, nq, txq int) error {
	if len(s.MMIO) == 0 {
		return fmt.Errorf("no MMIO address")
	}
	base := s.MMIO[0]
	w := func(off uint64, v uint64) error { return mmioWrite(m, base+off, 4, v) }
	if err := w(vmStatus, 0); err != nil {
		return err
	}
	if err := w(vmStatus, statusAck|statusDriver); err != nil {
		return err
	}
	for sel := uint64(0); sel < 2; sel++ {
		if err := w(vmDeviceFeaturesSel, sel); err != nil {
			return err
		}
		f, err := mmioRead(m, base+vmDeviceFeatures, 4)
		if err != nil {
			return err
		}
		if err := w(vmDriverFeaturesSel, sel); err != nil {
			return err
		}
		if err := w(vmDriverFeatures, f); err != nil {
			return err
		}
	}
	if err := w(vmStatus, statusAck|statusDriver|statusFeaturesOK); err != nil {
		return err
	}
	mem := m.M.Memory()
	window := uint64(scenarioBase + index*scenarioWindow)
	for q := 0; q < nq; q++ {
		slot := window + uint64(q)*queueSlot
		if err := w(vmQueueSel, uint64(q)); err != nil {
			return err
		}
		max, err := mmioRead(m, base+vmQueueNumMax, 4)
		if err != nil {
			return err
		}
		num := min(max, scenarioQueue)
		for _, r := range []struct {
			off uint64
			v   uint64
		}{{vmQueueNum, num}, {vmQueueDescLow, slot}, {vmQueueDescLow + 4, 0}, {vmQueueDriverLow, slot + 0x1000},
			{vmQueueDriverLow + 4, 0}, {vmQueueDeviceLow, slot + 0x2000}, {vmQueueDeviceLow + 4, 0}, {vmQueueReady, 1}} {
			if err := w(r.off, r.v); err != nil {
				return err
			}
		}
		if q == txq {
			// One descriptor: header and frame; available index 1.
			buf := slot + 0x3000
			desc := make([]byte, 16)
			binary.LittleEndian.PutUint64(desc[0:], buf)
			binary.LittleEndian.PutUint32(desc[8:], 12+scenarioFrame)
			frame := make([]byte, 12+scenarioFrame)
			for i := range frame[12:] {
				frame[12+i] = byte(i)
			}
			frame[12] = 0xff                  // broadcast destination
			avail := []byte{0, 0, 1, 0, 0, 0} // flags, idx 1, ring[0] = 0
			for _, c := range []struct {
				gpa uint64
				b   []byte
			}{{slot, desc}, {buf, frame}, {slot + 0x1000, avail}} {
				if _, err := mem.WriteAt(c.b, int64(c.gpa)); err != nil {
					return err
				}
			}
		}
	}
	if err := w(vmStatus, statusAck|statusDriver|statusFeaturesOK|statusDriverOK); err != nil {
		return err
	}
	if txq >= 0 {
		if err := w(vmQueueNotify, uint64(txq)); err != nil {
			return err
		}
		used := make([]byte, 2)
		if _, err := mem.ReadAt(used, int64(window+uint64(txq)*queueSlot+0x2000+2)); err != nil {
			return err
		}
		if binary.LittleEndian.Uint16(used) != 1 {
			return fmt.Errorf("the transmitted frame was not completed (used index %d)", binary.LittleEndian.Uint16(used))
		}
	}
	return nil
}

// driveICP presents an IPI on a server with a CPU: server 0 leaves it
// pending, the others accept it.
func driveICP(m *Machine, d *machine.PluginDevice, s machine.DeviceSpec) error {
	props := d.Properties()
	if props["cpu"].Int == 0 {
		return nil
	}
	base := s.MMIO[0]
	if err := mmioWrite(m, base+icpXIRR, 1, 0xff); err != nil { // CPPR: everything allowed
		return err
	}
	if err := mmioWrite(m, base+icpMFRR, 1, 0x05+props["server"].Int); err != nil {
		return err
	}
	if props["server"].Int != 0 {
		if _, err := mmioRead(m, base+icpXIRR, 4); err != nil { // accept
			return err
		}
	}
	return nil
}
