package virtio

import (
	"errors"

	"wasmvmm/internal/tinyfmt"
)

// Queue is one split virtqueue of a transport. Its state lives in the
// device's QueueState; the rest is scratch.
type Queue struct {
	t      *Transport
	index  int
	st     *QueueState
	max    uint16
	walker Walker
	chain  Chain
}

// Index returns the queue's index.
func (q *Queue) Index() int { return q.index }

// Size returns the queue size the driver set.
func (q *Queue) Size() uint16 { return q.st.Num }

// Ready reports whether the driver enabled the queue.
func (q *Queue) Ready() bool { return q.st.Ready }

// Errors of the available ring itself.
var (
	ErrAvailIndex = errors.New("available index moved past the queue size")
	ErrRingStore  = errors.New("used ring not writable")
)

// Pop takes the next available chain. It returns nil, nil when the ring is
// empty or the device is not live. A malformed chain or ring sets
// DEVICE_NEEDS_RESET, is logged (rate-limited) and returned as an error;
// the device then stops processing the queue. The returned Chain is reused
// by the next Pop.
func (q *Queue) Pop() (*Chain, error) {
	t := q.t
	if !t.Live() || !q.st.Ready {
		return nil, nil
	}
	mem := t.cfg.Memory
	num := q.st.Num
	avail := uint16(mem.Load(q.st.DriverAddr+2, 2))
	pending := avail - q.st.LastAvailIdx
	if pending == 0 && t.HasFeature(FEventIdx) {
		// Ask to be notified at the next buffer, then look again: the
		// driver may have added one before it saw avail_event.
		if err := mem.Store(q.st.DeviceAddr+ringHeaderLen+UsedElemSize*uint64(num), 2, uint64(q.st.LastAvailIdx)); err != nil {
			return nil, q.fail(ErrRingStore)
		}
		avail = uint16(mem.Load(q.st.DriverAddr+2, 2))
		pending = avail - q.st.LastAvailIdx
	}
	if pending == 0 {
		return nil, nil
	}
	if pending > num {
		return nil, q.fail(tinyfmt.Errorf("%w: avail idx %d, device at %d, queue size %d", ErrAvailIndex, avail, q.st.LastAvailIdx, num))
	}
	slot := uint64(q.st.LastAvailIdx % num)
	head := uint16(mem.Load(q.st.DriverAddr+ringHeaderLen+2*slot, 2))
	lim := t.cfg.Limits
	lim.Indirect = t.HasFeature(FIndirectDesc)
	if err := q.walker.WalkChain(&q.chain, q.st.DescAddr, num, head, lim); err != nil {
		return nil, q.fail(err)
	}
	q.st.LastAvailIdx++
	return &q.chain, nil
}

func (q *Queue) fail(err error) error {
	q.t.SetNeedsReset("chain", tinyfmt.Sprintf("queue %d: %v; device needs reset", q.index, err))
	return err
}

// Push puts a used entry for the chain at head, with the bytes the device
// wrote into its writable buffers, and publishes the new used index.
func (q *Queue) Push(head uint16, written uint32) error {
	mem := q.t.cfg.Memory
	slot := uint64(q.st.UsedIdx % q.st.Num)
	elem := q.st.DeviceAddr + ringHeaderLen + UsedElemSize*slot
	if err := mem.Store(elem, 8, uint64(head)|uint64(written)<<32); err != nil {
		return q.fail(ErrRingStore)
	}
	q.st.UsedIdx++
	if err := mem.Store(q.st.DeviceAddr+2, 2, uint64(q.st.UsedIdx)); err != nil {
		return q.fail(ErrRingStore)
	}
	return nil
}

// Signal raises a used-buffer interrupt for the entries pushed since the
// last Signal, unless the driver suppressed it: with VIRTIO_F_EVENT_IDX
// through used_event (§2.7.10), otherwise through VRING_AVAIL_F_NO_INTERRUPT.
// It reports whether it interrupted.
func (q *Queue) Signal() bool {
	t := q.t
	if q.st.SignalledUsedValid && q.st.SignalledUsed == q.st.UsedIdx {
		return false // nothing new
	}
	mem := t.cfg.Memory
	notify := true
	if t.HasFeature(FEventIdx) {
		usedEvent := uint16(mem.Load(q.st.DriverAddr+ringHeaderLen+2*uint64(q.st.Num), 2))
		notify = !q.st.SignalledUsedValid || NeedEvent(usedEvent, q.st.UsedIdx, q.st.SignalledUsed)
	} else {
		notify = mem.Load(q.st.DriverAddr, 2)&AvailFNoInterrupt == 0
	}
	q.st.SignalledUsed, q.st.SignalledUsedValid = q.st.UsedIdx, true
	if notify {
		t.interrupt(InterruptUsedBuffer)
	}
	return notify
}

func (q *Queue) addrReg(offset uint64) uint64 {
	switch offset {
	case RegQueueDescLow:
		return q.st.DescAddr & 0xffffffff
	case RegQueueDescHigh:
		return q.st.DescAddr >> 32
	case RegQueueDriverLow:
		return q.st.DriverAddr & 0xffffffff
	case RegQueueDriverHigh:
		return q.st.DriverAddr >> 32
	case RegQueueDeviceLow:
		return q.st.DeviceAddr & 0xffffffff
	case RegQueueDeviceHigh:
		return q.st.DeviceAddr >> 32
	}
	return 0
}

func setLow(a *uint64, v uint32)  { *a = *a&^0xffffffff | uint64(v) }
func setHigh(a *uint64, v uint32) { *a = *a&0xffffffff | uint64(v)<<32 }

func (q *Queue) setAddrReg(offset uint64, v uint32) {
	switch offset {
	case RegQueueDescLow:
		setLow(&q.st.DescAddr, v)
	case RegQueueDescHigh:
		setHigh(&q.st.DescAddr, v)
	case RegQueueDriverLow:
		setLow(&q.st.DriverAddr, v)
	case RegQueueDriverHigh:
		setHigh(&q.st.DriverAddr, v)
	case RegQueueDeviceLow:
		setLow(&q.st.DeviceAddr, v)
	case RegQueueDeviceHigh:
		setHigh(&q.st.DeviceAddr, v)
	}
}

func (q *Queue) setReady(on bool) {
	if !on {
		q.st.Ready = false
		return
	}
	if q.st.Ready {
		return
	}
	if err := q.check(); err != nil {
		q.t.SetNeedsReset("queue-setup", tinyfmt.Sprintf("queue %d not enabled: %v; device needs reset", q.index, err))
		return
	}
	q.st.Ready = true
}

// check validates the queue's size and ring placement: a power-of-two
// size up to the maximum, aligned areas that do not wrap and lie wholly
// in guest RAM (each area must fit in one RAM block; ring fields are then
// read with guest_load without further checks).
func (q *Queue) check() error {
	num := q.st.Num
	if num == 0 || num&(num-1) != 0 || num > q.max {
		return tinyfmt.Errorf("size %d is not a power of two in 1..%d", num, q.max)
	}
	areas := [...]struct {
		name  string
		addr  uint64
		size  uint64
		align uint64
	}{
		{"descriptor table", q.st.DescAddr, DescTableSize(num), descAlign},
		{"driver area", q.st.DriverAddr, AvailSize(num), availAlign},
		{"device area", q.st.DeviceAddr, UsedSize(num), usedAlign},
	}
	for _, a := range areas {
		if a.addr%a.align != 0 {
			return tinyfmt.Errorf("%s at %#x is not %d-byte aligned", a.name, a.addr, a.align)
		}
		if a.addr+a.size < a.addr {
			return tinyfmt.Errorf("%s at %#x wraps around the address space", a.name, a.addr)
		}
		if err := q.t.cfg.Memory.Read(a.addr, q.t.scratch[:a.size]); err != nil {
			return tinyfmt.Errorf("%s [%#x, +%#x) is not in guest RAM", a.name, a.addr, a.size)
		}
	}
	return nil
}
