// Package virtiotest is a virtio-mmio guest driver written in Go, for tests
// and benchmarks of virtio devices off a real guest: it negotiates features
// through the register window, lays out split virtqueues in guest memory,
// submits descriptor chains (direct or indirect), notifies, and reads the
// used ring. It reaches the device through Bus (the device's MMIO handler,
// or a plugin instance) and guest RAM through RAM.
package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"wasmvmm/sdk/virtio"
)

// Bus is the device's register window.
type Bus interface {
	Read(offset uint64, size int) uint64
	Write(offset uint64, size int, v uint64)
}

// RAM is guest memory as the driver sees it.
type RAM interface {
	Read(gpa uint64, p []byte) error
	Write(gpa uint64, p []byte) error
}

// Driver drives one virtio-mmio device.
type Driver struct {
	Bus Bus
	RAM RAM
	// Features is what Init negotiated.
	Features uint64
}

func (d *Driver) r32(off uint64) uint32    { return uint32(d.Bus.Read(off, 4)) }
func (d *Driver) w32(off uint64, v uint32) { d.Bus.Write(off, 4, uint64(v)) }

// Status returns the device status register.
func (d *Driver) Status() uint32 { return d.r32(virtio.RegStatus) }

// DeviceFeatures reads the 64 offered feature bits.
func (d *Driver) DeviceFeatures() uint64 {
	d.w32(virtio.RegDeviceFeaturesSel, 0)
	lo := d.r32(virtio.RegDeviceFeatures)
	d.w32(virtio.RegDeviceFeaturesSel, 1)
	return uint64(lo) | uint64(d.r32(virtio.RegDeviceFeatures))<<32
}

// Init resets the device and negotiates want & offered (§3.1.1 steps 1–6):
// it fails if the device is not a version 2 virtio-mmio device or refuses
// FEATURES_OK.
func (d *Driver) Init(want uint64) error {
	if m := d.r32(virtio.RegMagicValue); m != virtio.MagicValue {
		return fmt.Errorf("magic %#x", m)
	}
	if v := d.r32(virtio.RegVersion); v != virtio.MMIOVersion {
		return fmt.Errorf("version %d", v)
	}
	d.w32(virtio.RegStatus, 0)
	d.w32(virtio.RegStatus, virtio.StatusAcknowledge)
	d.w32(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	f := d.DeviceFeatures() & want
	if err := d.WriteFeatures(f); err != nil {
		return err
	}
	d.Features = f
	return nil
}

// WriteFeatures writes driver features f and sets FEATURES_OK; it fails if
// the device does not keep FEATURES_OK set.
func (d *Driver) WriteFeatures(f uint64) error {
	d.w32(virtio.RegDriverFeaturesSel, 0)
	d.w32(virtio.RegDriverFeatures, uint32(f))
	d.w32(virtio.RegDriverFeaturesSel, 1)
	d.w32(virtio.RegDriverFeatures, uint32(f>>32))
	st := d.Status()
	d.w32(virtio.RegStatus, st|virtio.StatusFeaturesOK)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		return errors.New("device refused FEATURES_OK")
	}
	return nil
}

// DriverOK sets DRIVER_OK.
func (d *Driver) DriverOK() { d.w32(virtio.RegStatus, d.Status()|virtio.StatusDriverOK) }

// ISR reads InterruptStatus; Ack acknowledges bits.
func (d *Driver) ISR() uint32 { return d.r32(virtio.RegInterruptStatus) }

// Ack writes InterruptACK.
func (d *Driver) Ack(bits uint32) { d.w32(virtio.RegInterruptACK, bits) }

// Config reads size bytes of config space at off.
func (d *Driver) Config(off uint64, size int) uint64 { return d.Bus.Read(virtio.RegConfig+off, size) }

// Layout places a queue's areas in guest memory.
type Layout struct {
	Desc, Driver, Device uint64
}

// LayoutAt packs the three areas of a queue of size n from gpa (aligned to
// 4 KiB each), and returns the layout and the first free address after it.
func LayoutAt(gpa uint64, n uint16) (Layout, uint64) {
	up := func(a uint64) uint64 { return (a + 4095) &^ 4095 }
	l := Layout{Desc: up(gpa)}
	l.Driver = up(l.Desc + virtio.DescTableSize(n))
	l.Device = up(l.Driver + virtio.AvailSize(n))
	return l, up(l.Device + virtio.UsedSize(n))
}

// Queue is the driver's side of one split virtqueue.
type Queue struct {
	d        *Driver
	Index    int
	Size     uint16
	L        Layout
	availIdx uint16
	usedSeen uint16
	free     []uint16
	chainLen map[uint16]int
}

// SetupQueue zeroes the rings, programs queue i with size n at l and
// enables it. It fails if the device did not take it (QueueReady reads 0).
func (d *Driver) SetupQueue(i int, n uint16, l Layout) (*Queue, error) {
	d.w32(virtio.RegQueueSel, uint32(i))
	if mx := d.r32(virtio.RegQueueNumMax); mx == 0 || uint32(n) > mx {
		return nil, fmt.Errorf("queue %d: max size %d, want %d", i, mx, n)
	}
	for _, a := range []struct{ at, n uint64 }{{l.Desc, virtio.DescTableSize(n)}, {l.Driver, virtio.AvailSize(n)}, {l.Device, virtio.UsedSize(n)}} {
		if err := d.RAM.Write(a.at, make([]byte, a.n)); err != nil {
			return nil, fmt.Errorf("queue %d: zero rings: %w", i, err)
		}
	}
	d.w32(virtio.RegQueueNum, uint32(n))
	d.w32(virtio.RegQueueDescLow, uint32(l.Desc))
	d.w32(virtio.RegQueueDescHigh, uint32(l.Desc>>32))
	d.w32(virtio.RegQueueDriverLow, uint32(l.Driver))
	d.w32(virtio.RegQueueDriverHigh, uint32(l.Driver>>32))
	d.w32(virtio.RegQueueDeviceLow, uint32(l.Device))
	d.w32(virtio.RegQueueDeviceHigh, uint32(l.Device>>32))
	d.w32(virtio.RegQueueReady, 1)
	if d.r32(virtio.RegQueueReady) != 1 {
		return nil, fmt.Errorf("queue %d: device did not enable it (status %#x)", i, d.Status())
	}
	q := &Queue{d: d, Index: i, Size: n, L: l, chainLen: map[uint16]int{}}
	for k := int(n) - 1; k >= 0; k-- {
		q.free = append(q.free, uint16(k))
	}
	return q, nil
}

// Buf is one buffer of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// WriteDesc writes descriptor idx of the queue's table.
func (q *Queue) WriteDesc(idx uint16, d virtio.Desc) error {
	var b [virtio.DescSize]byte
	d.Encode(b[:])
	return q.d.RAM.Write(q.L.Desc+virtio.DescSize*uint64(idx), b[:])
}

func flags(b Buf, next bool) uint16 {
	var f uint16
	if b.Write {
		f |= virtio.DescFWrite
	}
	if next {
		f |= virtio.DescFNext
	}
	return f
}

// Add puts a chain of bufs in free descriptors and returns its head (not
// yet made available: see Publish).
func (q *Queue) Add(bufs []Buf) (uint16, error) {
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, fmt.Errorf("chain of %d buffers, %d descriptors free", len(bufs), len(q.free))
	}
	idx := q.free[len(q.free)-len(bufs):]
	q.free = q.free[:len(q.free)-len(bufs)]
	for k, b := range bufs {
		d := virtio.Desc{Addr: b.Addr, Len: b.Len, Flags: flags(b, k+1 < len(bufs))}
		if k+1 < len(bufs) {
			d.Next = idx[k+1]
		}
		if err := q.WriteDesc(idx[k], d); err != nil {
			return 0, err
		}
	}
	q.chainLen[idx[0]] = len(bufs)
	return idx[0], nil
}

// AddIndirect writes bufs as an indirect table at table and puts one
// descriptor pointing to it.
func (q *Queue) AddIndirect(table uint64, bufs []Buf) (uint16, error) {
	if len(q.free) == 0 {
		return 0, errors.New("no free descriptor")
	}
	tbl := make([]byte, virtio.DescSize*len(bufs))
	for k, b := range bufs {
		d := virtio.Desc{Addr: b.Addr, Len: b.Len, Flags: flags(b, k+1 < len(bufs))}
		if k+1 < len(bufs) {
			d.Next = uint16(k + 1)
		}
		d.Encode(tbl[virtio.DescSize*k:])
	}
	if err := q.d.RAM.Write(table, tbl); err != nil {
		return 0, err
	}
	head := q.free[len(q.free)-1]
	q.free = q.free[:len(q.free)-1]
	q.chainLen[head] = 1
	return head, q.WriteDesc(head, virtio.Desc{Addr: table, Len: uint32(len(tbl)), Flags: virtio.DescFIndirect})
}

// Publish puts head in the available ring and moves the available index.
func (q *Queue) Publish(heads ...uint16) error {
	for _, h := range heads {
		var b [2]byte
		binary.LittleEndian.PutUint16(b[:], h)
		if err := q.d.RAM.Write(q.L.Driver+4+2*uint64(q.availIdx%q.Size), b[:]); err != nil {
			return err
		}
		q.availIdx++
	}
	return q.SetAvailIdx(q.availIdx)
}

// SetAvailIdx writes the available ring's idx (hostile tests use any value).
func (q *Queue) SetAvailIdx(v uint16) error { return q.put16(q.L.Driver+2, v) }

// SetAvailFlags writes the available ring's flags.
func (q *Queue) SetAvailFlags(v uint16) error { return q.put16(q.L.Driver, v) }

// SetUsedEvent writes used_event (EVENT_IDX).
func (q *Queue) SetUsedEvent(v uint16) error {
	return q.put16(q.L.Driver+4+2*uint64(q.Size), v)
}

// AvailEvent reads avail_event (EVENT_IDX).
func (q *Queue) AvailEvent() uint16 { return q.get16(q.L.Device + 4 + 8*uint64(q.Size)) }

// UsedIdx reads the used ring's idx.
func (q *Queue) UsedIdx() uint16 { return q.get16(q.L.Device + 2) }

func (q *Queue) put16(gpa uint64, v uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	return q.d.RAM.Write(gpa, b[:])
}

func (q *Queue) get16(gpa uint64) uint16 {
	var b [2]byte
	if q.d.RAM.Read(gpa, b[:]) != nil {
		return 0xffff
	}
	return binary.LittleEndian.Uint16(b[:])
}

// Notify writes QueueNotify.
func (q *Queue) Notify() { q.d.w32(virtio.RegQueueNotify, uint32(q.Index)) }

// Used is one used-ring entry.
type Used struct {
	ID  uint32
	Len uint32
}

// TakeUsed returns the used entries added since the last call and frees
// their descriptors.
func (q *Queue) TakeUsed() ([]Used, error) {
	var out []Used
	idx := q.UsedIdx()
	for q.usedSeen != idx {
		var b [8]byte
		if err := q.d.RAM.Read(q.L.Device+4+8*uint64(q.usedSeen%q.Size), b[:]); err != nil {
			return out, err
		}
		u := Used{ID: binary.LittleEndian.Uint32(b[:]), Len: binary.LittleEndian.Uint32(b[4:])}
		out = append(out, u)
		q.usedSeen++
		head := uint16(u.ID)
		n, ok := q.chainLen[head]
		if !ok {
			return out, fmt.Errorf("used entry for head %d, which is not in flight", u.ID)
		}
		delete(q.chainLen, head)
		// Free the chain's descriptors by walking it.
		cur := head
		for k := 0; k < n; k++ {
			q.free = append(q.free, cur)
			var db [virtio.DescSize]byte
			if err := q.d.RAM.Read(q.L.Desc+virtio.DescSize*uint64(cur), db[:]); err != nil {
				return out, err
			}
			cur = virtio.DecodeDesc(db[:]).Next
		}
	}
	return out, nil
}
