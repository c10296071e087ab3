package vnet

import (
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

// rxBudget bounds the frames one call receives; the host calls again while
// input waits and the device makes progress.
const rxBudget = 256

// virtio_net_hdr flags and gso types (§5.1.6).
const (
	hdrFNeedsCsum = 1
	hdrFDataValid = 2
	gsoNone       = 0
	gsoTCPv4      = 1
	gsoUDP        = 3
	gsoTCPv6      = 4
	gsoUDPL4      = 5
	gsoECN        = 0x80
)

// pooled is a receive chain the device took from the ring and has not
// used yet: its head, its number of entries in rxPool.sg and its bytes.
type pooled struct {
	head  uint16
	nsg   uint16
	bytes uint32
}

// rxPool holds receive chains taken from the ring, in ring order, with
// their writable buffers laid end to end in sg: the first k chains are
// one scatter-gather list for backend_recv_sg. They are always the last
// chains popped, so giving them back is moving last_avail_idx back.
type rxPool struct {
	chains []pooled
	sg     []sdk.SGEntry
	bytes  uint64
	capped bool // a chain did not fit in sg: take no more until some are used
}

func (p *rxPool) init() {
	p.chains = make([]pooled, 0, queueSize)
	p.sg = make([]sdk.SGEntry, 0, abi.MaxSGEntries)
}

func (p *rxPool) clear() {
	p.chains, p.sg, p.bytes, p.capped = p.chains[:0], p.sg[:0], 0, false
}

// giveBack returns the held chains to the available ring.
func (p *rxPool) giveBack() {
	st.Queues[rxQ].LastAvailIdx -= uint16(len(p.chains))
	p.clear()
}

// add appends chain c; false when its buffers do not fit in sg.
func (p *rxPool) add(c *virtio.Chain) bool {
	if len(p.sg)+len(c.Writable) > cap(p.sg) {
		p.capped = true
		return false
	}
	p.sg = append(p.sg, c.Writable...)
	p.chains = append(p.chains, pooled{head: c.Head, nsg: uint16(len(c.Writable)), bytes: uint32(c.WritableLen)})
	p.bytes += c.WritableLen
	return true
}

// full reports whether the pool cannot take another chain.
func (p *rxPool) full() bool { return p.capped || len(p.chains) == cap(p.chains) }

// span returns the entries and bytes of the first k chains.
func (p *rxPool) span(k int) (int, uint64) {
	if k == len(p.chains) {
		return len(p.sg), p.bytes
	}
	n, b := 0, uint64(0)
	for _, c := range p.chains[:k] {
		n += int(c.nsg)
		b += uint64(c.bytes)
	}
	return n, b
}

// consume drops the first k chains (pushed to the used ring).
func (p *rxPool) consume(k int) {
	n, b := p.span(k)
	p.sg = p.sg[:copy(p.sg, p.sg[n:])]
	p.chains = p.chains[:copy(p.chains, p.chains[k:])]
	p.bytes -= b
	p.capped = false
}

// rxNeed returns the receive buffer bytes the largest frame the guest
// accepts needs, header included.
func (d *device) rxNeed() uint64 {
	gso := virtio.Feature(fGuestTSO4) | virtio.Feature(fGuestTSO6) | virtio.Feature(fGuestUSO4) | virtio.Feature(fGuestUSO6) | virtio.Feature(fGuestUFO)
	if d.t.Features()&gso != 0 {
		return hdrLen + maxGSOFrame
	}
	return hdrLen + uint64(st.MTU) + ethOverhead
}

// refill takes receive chains from the ring until the pool holds one
// chain, or with mergeable buffers enough bytes for the largest frame.
// It returns false when the ring was malformed (the device needs a reset).
func (d *device) refill(q *virtio.Queue, mrg bool, need uint64) bool {
	p := &d.rx
	for !p.full() && (len(p.chains) == 0 || (mrg && p.bytes < need)) {
		c, err := q.Pop()
		if err != nil {
			p.clear()
			return false
		}
		if c == nil {
			return true
		}
		if c.ReadableLen != 0 || c.WritableLen < hdrLen {
			d.t.SetNeedsReset("rx-chain", tinyfmt.Sprintf("receive chain at head %d has %d device-readable and %d device-writable bytes (want only device-writable ones, at least %d); device needs reset",
				c.Head, c.ReadableLen, c.WritableLen, hdrLen))
			p.clear()
			return false
		}
		if !p.add(c) {
			st.Queues[rxQ].LastAvailIdx-- // not taken after all
			return true
		}
	}
	return true
}

// receive moves waiting frames into receive buffers until the backend
// has none, the buffers run out (then it stops watching until the next
// receive notification) or the budget is spent.
func (d *device) receive() {
	q := d.t.Queue(rxQ)
	if !d.t.Live() || !q.Ready() {
		d.rxStalled = true
		d.updateWatch()
		return
	}
	mrg := d.t.HasFeature(fMrgRxbuf)
	need := d.rxNeed()
	skip := uint32(hdrLen)
	if d.vnet {
		skip = 0
	}
	p := &d.rx
	delivered := 0
	for range rxBudget {
		if !d.refill(q, mrg, need) {
			break
		}
		if len(p.chains) == 0 || (mrg && p.bytes < need && !p.full()) {
			d.rxStalled = true
			break
		}
		k := 1
		if mrg {
			k = len(p.chains)
		}
		nsg, space := p.span(k)
		n, err := d.be.RecvSG(p.sg[:nsg], skip)
		if err != nil {
			if errors.Is(err, abi.ErrAgain) {
				break
			}
			if errors.Is(err, abi.ErrOutOfBounds) {
				d.t.SetNeedsReset("rx-ram", tinyfmt.Sprintf("a receive buffer of the chains at heads %d.. lies outside guest RAM; device needs reset", p.chains[0].head))
				p.clear()
				break
			}
			d.t.Logf(abi.LogWarn, "rx-io", "receiving from the net backend: %v", err)
			break
		}
		total := uint64(n) + uint64(skip)
		switch {
		case total > space:
			stats.RxDropped++
			d.t.Logf(abi.LogWarn, "rx-size", "frame of %d bytes does not fit the %d bytes of receive buffers; dropped", total, space)
			continue
		case total < hdrLen+14:
			stats.RxDropped++
			d.t.Logf(abi.LogDebug, "rx-runt", "frame of %d bytes (header included) is shorter than an Ethernet header; dropped", total)
			continue
		}
		ok, pushed := d.deliver(q, total)
		delivered += pushed
		if pushed > 0 {
			stats.RxFrames++
			stats.RxBytes += total - hdrLen
		}
		if !ok {
			break
		}
	}
	if delivered > 0 {
		q.Signal()
	}
	d.updateWatch()
}

// deliver completes a frame of total bytes (header included) received
// into the pool's first chains: it writes the header (num_buffers) and
// puts the chains in the used ring. It returns the chains it pushed, and
// false when the ring is broken.
func (d *device) deliver(q *virtio.Queue, total uint64) (bool, int) {
	p := &d.rx
	nbuf, rem := 0, total
	for rem > 0 {
		rem -= min(rem, uint64(p.chains[nbuf].bytes))
		nbuf++
	}
	hdrSG := p.sg[:p.chains[0].nsg]
	if d.vnet {
		if _, err := sdk.GuestReadSG(hdrSG, d.hdr[:]); err != nil {
			d.t.Logf(abi.LogWarn, "rx-hdr", "reading a received header: %v", err)
			return true, 0
		}
		if !d.acceptHeader() {
			return true, 0 // dropped; the chains stay for the next frame
		}
	} else {
		clear(d.hdr[:])
	}
	d.hdr[10], d.hdr[11] = byte(nbuf), byte(nbuf>>8)
	if _, err := sdk.GuestWriteSG(hdrSG, d.hdr[:]); err != nil {
		d.t.Logf(abi.LogWarn, "rx-hdr", "writing a received header: %v", err)
		return true, 0
	}
	rem = total
	for i, c := range p.chains[:nbuf] {
		l := min(rem, uint64(c.bytes))
		rem -= l
		if err := q.Push(c.head, uint32(l)); err != nil {
			p.clear()
			return false, i
		}
	}
	p.consume(nbuf)
	return true, nbuf
}

// acceptHeader checks the header a vnet-header backend wrote against what
// the driver negotiated: a frame that needs an offload the driver did not
// accept is dropped; a checksum-valid hint it cannot use is cleared.
func (d *device) acceptHeader() bool {
	f := d.t.Features()
	has := func(bit uint) bool { return f&virtio.Feature(bit) != 0 }
	flags, gso := d.hdr[0], d.hdr[1]
	ok := true
	if gso&gsoECN != 0 && !has(fGuestECN) {
		ok = false
	}
	switch gso &^ gsoECN {
	case gsoNone:
	case gsoTCPv4:
		ok = ok && has(fGuestTSO4)
	case gsoTCPv6:
		ok = ok && has(fGuestTSO6)
	case gsoUDP:
		ok = ok && has(fGuestUFO)
	case gsoUDPL4:
		ok = ok && (has(fGuestUSO4) || has(fGuestUSO6))
	default:
		ok = false
	}
	if flags&hdrFNeedsCsum != 0 && !has(fGuestCsum) {
		ok = false
	}
	if !ok {
		d.t.Logf(abi.LogWarn, "rx-offload", "received frame needs offloads the driver did not accept (flags %#x, gso type %#x); dropped", flags, gso)
		return false
	}
	if !has(fGuestCsum) {
		d.hdr[0] &^= hdrFDataValid
	}
	d.hdr[0] &= hdrFNeedsCsum | hdrFDataValid
	return true
}
