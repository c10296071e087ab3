package vnet

import (
	"encoding/binary"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

// Split-ring layout (§2.7): flags and idx, then the entries.
const (
	ringHeader = 4
	// snapshotMin is the batch size from which the descriptor table is read
	// in one call rather than descriptor by descriptor.
	snapshotMin = 4
)

// txRing takes transmit chains in batches, with a handful of host calls
// per batch instead of several per chain: it reads the available index
// once, the new available-ring entries in one read, and (for batches of
// snapshotMin chains or more) the whole descriptor table in one read that
// the chain walker then parses from plugin memory; used entries are written
// in one call and published with one store. The chains are validated by
// the SDK's walker exactly as Queue.Pop does, and errors set
// DEVICE_NEEDS_RESET through the transport.
type txRing struct {
	walker virtio.Walker
	mem    tableMemory
	chain  virtio.Chain
	heads  [2 * queueSize]byte
	used   [virtio.UsedElemSize * queueSize]byte
}

// tableMemory serves reads inside a snapshot of the descriptor table
// from plugin memory and everything else from guest memory.
type tableMemory struct {
	virtio.HostMemory
	base  uint64
	table []byte
}

// Read implements virtio.Memory.
func (m *tableMemory) Read(gpa uint64, p []byte) error {
	if off := gpa - m.base; gpa >= m.base && off < uint64(len(m.table)) && uint64(len(p)) <= uint64(len(m.table))-off {
		copy(p, m.table[off:])
		return nil
	}
	return sdk.GuestRead(gpa, p)
}

func (r *txRing) init() {
	r.walker.Mem = &r.mem
	r.mem.table = make([]byte, 0, virtio.DescTableSize(queueSize))
	r.chain.Readable = make([]sdk.SGEntry, 0, abi.MaxSGEntries)
	r.chain.Writable = make([]sdk.SGEntry, 0, abi.MaxSGEntries)
}

// transmit sends every available transmit chain: header then frame, the
// frame gathered from guest memory by the host. A chain the backend
// cannot take now stays in the ring and the device waits until the
// backend is writable; a malformed frame is dropped (completed unsent); a
// malformed ring or chain breaks the device (NEEDS_RESET).
func (d *device) transmit() {
	q := d.t.Queue(txQ)
	qs := &st.Queues[txQ]
	if !d.t.Live() || !q.Ready() {
		return
	}
	pushed := 0
	for budget := 4 * queueSize; budget > 0 && !d.txBlocked; {
		n, ok := d.txBatch(qs, min(budget, int(qs.Num)))
		if !ok || n == 0 {
			break
		}
		pushed += n
		budget -= n
	}
	if pushed > 0 {
		q.Signal()
	}
	d.updateWatch()
}

// txBatch sends up to max available chains and returns how many it
// completed; false when the ring is empty or broken.
func (d *device) txBatch(qs *virtio.QueueState, max int) (int, bool) {
	r := &d.txr
	num := qs.Num
	avail := uint16(sdk.GuestLoad(qs.DriverAddr+2, 2))
	pending := avail - qs.LastAvailIdx
	if pending == 0 && d.t.HasFeature(virtio.FEventIdx) {
		// Ask for a notification at the next chain, then look again.
		if err := sdk.GuestStore(qs.DeviceAddr+ringHeader+virtio.UsedElemSize*uint64(num), 2, uint64(qs.LastAvailIdx)); err != nil {
			d.t.SetNeedsReset("tx-ring", "transmit queue: used ring not writable; device needs reset")
			return 0, false
		}
		avail = uint16(sdk.GuestLoad(qs.DriverAddr+2, 2))
		pending = avail - qs.LastAvailIdx
	}
	if pending == 0 {
		return 0, false
	}
	if pending > num {
		d.t.SetNeedsReset("tx-ring", tinyfmt.Sprintf("transmit queue: available index %d is %d ahead of the device's %d, queue size %d; device needs reset", avail, pending, qs.LastAvailIdx, num))
		return 0, false
	}
	n := min(int(pending), max)
	// The new entries of the available ring, in at most two pieces.
	start := int(qs.LastAvailIdx % num)
	first := min(n, int(num)-start)
	if sdk.GuestRead(qs.DriverAddr+ringHeader+2*uint64(start), r.heads[:2*first]) != nil ||
		(n > first && sdk.GuestRead(qs.DriverAddr+ringHeader, r.heads[2*first:2*n]) != nil) {
		d.t.SetNeedsReset("tx-ring", "transmit queue: available ring not readable; device needs reset")
		return 0, false
	}
	// The descriptor table, read after the available index, holds every
	// descriptor of these chains.
	r.mem.base, r.mem.table = qs.DescAddr, r.mem.table[:0]
	if n >= snapshotMin {
		r.mem.table = r.mem.table[:virtio.DescTableSize(num)]
		if sdk.GuestRead(qs.DescAddr, r.mem.table) != nil {
			r.mem.table = r.mem.table[:0]
		}
	}
	lim := virtio.Limits{Indirect: d.t.HasFeature(virtio.FIndirectDesc)}
	skip := uint32(hdrLen)
	if d.vnet {
		skip = 0
	}
	le := binary.LittleEndian
	done := 0
	for ; done < n; done++ {
		c := &r.chain
		head := le.Uint16(r.heads[2*done:])
		if err := r.walker.WalkChain(c, qs.DescAddr, num, head, lim); err != nil {
			d.t.SetNeedsReset("chain", tinyfmt.Sprintf("queue %d: %v; device needs reset", txQ, err))
			break
		}
		if c.ReadableLen < hdrLen+14 || c.ReadableLen > hdrLen+maxGSOFrame {
			stats.TxDropped++
			d.t.Logf(abi.LogWarn, "tx-size", "transmit chain at head %d has %d bytes (want %d to %d: header and frame); dropped",
				c.Head, c.ReadableLen, hdrLen+14, hdrLen+maxGSOFrame)
		} else if n, err := d.be.SendSG(c.Readable, skip); err != nil {
			if errors.Is(err, abi.ErrAgain) {
				d.txBlocked = true
				break
			}
			stats.TxDropped++
			if errors.Is(err, abi.ErrOutOfBounds) {
				d.t.Logf(abi.LogWarn, "tx-ram", "transmit chain at head %d has a buffer outside guest RAM; dropped", c.Head)
			} else {
				d.t.Logf(abi.LogWarn, "tx-io", "transmit chain at head %d: %v; dropped", c.Head, err)
			}
		} else {
			stats.TxFrames++
			stats.TxBytes += uint64(n)
		}
		le.PutUint64(r.used[virtio.UsedElemSize*done:], uint64(head)) // id, len 0
	}
	if done == 0 {
		return 0, false
	}
	// Used entries in at most two pieces, then the index.
	ustart := int(qs.UsedIdx % num)
	ufirst := min(done, int(num)-ustart)
	if sdk.GuestWrite(qs.DeviceAddr+ringHeader+virtio.UsedElemSize*uint64(ustart), r.used[:virtio.UsedElemSize*ufirst]) != nil ||
		(done > ufirst && sdk.GuestWrite(qs.DeviceAddr+ringHeader, r.used[virtio.UsedElemSize*ufirst:virtio.UsedElemSize*done]) != nil) {
		d.t.SetNeedsReset("tx-ring", "transmit queue: used ring not writable; device needs reset")
		return 0, false
	}
	qs.LastAvailIdx += uint16(done)
	qs.UsedIdx += uint16(done)
	if sdk.GuestStore(qs.DeviceAddr+2, 2, uint64(qs.UsedIdx)) != nil {
		d.t.SetNeedsReset("tx-ring", "transmit queue: used ring not writable; device needs reset")
		return done, false
	}
	return done, !d.t.NeedsReset()
}
