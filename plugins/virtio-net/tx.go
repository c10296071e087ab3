package main

import (
	"errors"

	"wasmvmm/abi"
)

// transmit sends every available transmit chain: header then frame, the
// frame gathered from guest memory by the host. A chain the backend
// cannot take now goes back to the ring and the device waits until the
// backend is writable; a malformed one is dropped (completed unsent).
func (d *device) transmit() {
	q := d.t.Queue(txQ)
	skip := uint32(hdrLen)
	if d.vnet {
		skip = 0
	}
	pushed := 0
	for range 4 * queueSize {
		c, err := q.Pop()
		if err != nil || c == nil {
			break
		}
		if c.ReadableLen < hdrLen+14 || c.ReadableLen > hdrLen+maxGSOFrame {
			d.t.Logf(abi.LogWarn, "tx-size", "transmit chain at head %d has %d bytes (want %d to %d: header and frame); dropped",
				c.Head, c.ReadableLen, hdrLen+14, hdrLen+maxGSOFrame)
		} else if _, err := d.be.SendSG(c.Readable, skip); err != nil {
			if errors.Is(err, abi.ErrAgain) {
				st.Queues[txQ].LastAvailIdx-- // not taken after all
				d.txBlocked = true
				break
			}
			if errors.Is(err, abi.ErrOutOfBounds) {
				d.t.Logf(abi.LogWarn, "tx-ram", "transmit chain at head %d has a buffer outside guest RAM; dropped", c.Head)
			} else {
				d.t.Logf(abi.LogWarn, "tx-io", "transmit chain at head %d: %v; dropped", c.Head, err)
			}
		}
		if q.Push(c.Head, 0) != nil {
			break
		}
		pushed++
	}
	if pushed > 0 {
		q.Signal()
	}
	d.updateWatch()
}
