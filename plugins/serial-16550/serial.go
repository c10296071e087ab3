// Command serial-16550 is the wasmvmm plugin for a 16550A UART: the PC's
// COM port. It has one port I/O region of 8 registers, one interrupt line
// (level: raised while an enabled interrupt is pending), 16-byte receive and
// transmit FIFOs with trigger levels and the character timeout indication,
// modem control with loopback, and an optional character backend named
// "console" (without one, transmitted bytes are discarded and nothing is
// received).
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (see
// host/pluginbuild).
package main

import (
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
)

func main() {}

// Register offsets.
const (
	regRBR = 0 // read: receiver buffer; write: THR; DLAB: divisor latch low
	regIER = 1 // interrupt enable; DLAB: divisor latch high
	regIIR = 2 // read: interrupt identification; write: FCR
	regLCR = 3
	regMCR = 4
	regLSR = 5
	regMSR = 6
	regSCR = 7
)

// Register bits.
const (
	ierRDI  = 0x01 // received data available (and character timeout)
	ierTHRI = 0x02 // transmitter holding register empty
	ierRLSI = 0x04 // receiver line status
	ierMSI  = 0x08 // modem status
	ierMask = 0x0f

	iirNone    = 0x01
	iirMSI     = 0x00
	iirTHRI    = 0x02
	iirRDI     = 0x04
	iirRLSI    = 0x06
	iirTimeout = 0x0c
	iirFIFOs   = 0xc0 // both bits set when the FIFOs are enabled (16550A)

	fcrEnable   = 0x01
	fcrClearRX  = 0x02
	fcrClearTX  = 0x04
	fcrDMA      = 0x08
	fcrTrigMask = 0xc0

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1f

	lsrDR     = 0x01
	lsrOE     = 0x02
	lsrPE     = 0x04
	lsrFE     = 0x08
	lsrBI     = 0x10
	lsrTHRE   = 0x20
	lsrTEMT   = 0x40
	lsrErrors = lsrOE | lsrPE | lsrFE | lsrBI

	msrDCTS  = 0x01
	msrDDSR  = 0x02
	msrTERI  = 0x04
	msrDDCD  = 0x08
	msrDelta = 0x0f
	msrCTS   = 0x10
	msrDSR   = 0x20
	msrRI    = 0x40
	msrDCD   = 0x80

	fifoSize = 16
)

// msrIdle is what the modem inputs read outside loopback: a connected line
// (carrier, data set ready, clear to send), with no ring.
const msrIdle = msrDCD | msrDSR | msrCTS

// Timer ids.
const timerTimeout sdk.Timer = 0

// The device's interrupt line.
const irqLine sdk.IRQ = 0

// regs is the register file: section "serial".
type regs struct {
	Divider uint16 `vmstate:"divider"`
	RBR     uint8  `vmstate:"rbr"` // last byte read out, returned when the receiver is empty
	IER     uint8  `vmstate:"ier"`
	LCR     uint8  `vmstate:"lcr"`
	MCR     uint8  `vmstate:"mcr"`
	LSR     uint8  `vmstate:"lsr"`
	MSR     uint8  `vmstate:"msr"`
	SCR     uint8  `vmstate:"scr"`
	FCR     uint8  `vmstate:"fcr"`
	// THRPending: the THR-empty interrupt is pending (cleared by an IIR read
	// that reports it, or a THR write).
	THRPending bool `vmstate:"thr_ipending"`
	// TimeoutPending: the character timeout interrupt is pending.
	TimeoutPending bool `vmstate:"timeout_ipending"`
	// FIFOSaved records at save time whether subsection serial/fifo was
	// sent; post-load empties the FIFOs when it was not.
	FIFOSaved bool `vmstate:"fifo_saved"`
}

// fifo is a 16-byte ring.
type fifo struct {
	Data  [fifoSize]byte `vmstate:"data"`
	Head  uint8          `vmstate:"head"`
	Count uint8          `vmstate:"count"`
}

func (f *fifo) push(b byte) {
	f.Data[(int(f.Head)+int(f.Count))%fifoSize] = b
	f.Count++
}

func (f *fifo) pop() byte {
	b := f.Data[f.Head]
	f.Head = (f.Head + 1) % fifoSize
	f.Count--
	return b
}

func (f *fifo) clear() { f.Head, f.Count = 0, 0 }

// fifos is the FIFO contents: subsection "serial/fifo".
type fifos struct {
	RX fifo `vmstate:"rx"`
	TX fifo `vmstate:"tx"`
}

// The migrated state lives in package variables: their addresses in linear
// memory are fixed, which the vmstate schema relies on.
var (
	st     regs
	queues fifos

	baudBase = sdk.U32("baudbase", 115200, "input clock divided by 16: the baud rate at divisor 1")

	_ = sdk.VMState("serial", &st, sdk.Version(1), sdk.InstanceAny,
		sdk.Subsection("serial/fifo", &queues, fifoNeeded))
)

// fifoNeeded says whether the FIFO contents go on the wire: whenever the
// FIFOs are enabled or hold a byte (the non-FIFO mode keeps its holding
// registers in the same rings).
func fifoNeeded() bool {
	return st.FCR&fcrEnable != 0 || queues.RX.Count != 0 || queues.TX.Count != 0
}

// uart holds what is not migrated: host handles and cached levels, all
// recomputed after a load.
type uart struct {
	console  *sdk.Backend // nil: not connected
	watching abi.BackendEvent
	irqLevel bool
	irqKnown bool
	txBuf    [fifoSize]byte // contiguous copy of the TX ring for backend_write
	rxBuf    [fifoSize]byte
}

func init() {
	sdk.Register("serial-16550", "1.0.0", &uart{})
}

// Realize adds the 8-port region and opens the console backend.
func (u *uart) Realize(r *sdk.Realizer) error {
	if baudBase.Get() == 0 {
		return tinyfmt.Errorf("property baudbase must be non-zero")
	}
	if _, err := r.AddPIO(8); err != nil {
		return err
	}
	b, err := sdk.OpenBackend(abi.BackendChar, "console")
	switch {
	case err == nil:
		u.console = b
	case errors.Is(err, abi.ErrNotFound):
		sdk.Log(abi.LogDebug, "no console backend: output is discarded")
	default:
		return err
	}
	u.Reset()
	return nil
}

// Reset restores the power-on state.
func (u *uart) Reset() {
	st = regs{Divider: 12, LSR: lsrTHRE | lsrTEMT, MSR: msrIdle}
	queues.RX.clear()
	queues.TX.clear()
	_ = timerTimeout.Cancel()
	u.irqKnown = false
	u.updateIRQ()
	u.updateWatch()
}

// PIORead reads a register. Wider accesses read the register at offset
// in the low byte.
func (u *uart) PIORead(_ sdk.Region, offset uint32, _ int) uint32 {
	return uint32(u.read(offset & 7))
}

// PIOWrite writes a register from the low byte of value.
func (u *uart) PIOWrite(_ sdk.Region, offset uint32, _ int, value uint32) {
	u.write(offset&7, uint8(value))
}

func (u *uart) read(reg uint32) uint8 {
	switch reg {
	case regRBR:
		if st.LCR&lcrDLAB != 0 {
			return uint8(st.Divider)
		}
		return u.readRBR()
	case regIER:
		if st.LCR&lcrDLAB != 0 {
			return uint8(st.Divider >> 8)
		}
		return st.IER
	case regIIR:
		id := iirID()
		if id == iirTHRI {
			// Reading IIR while it reports THR empty acknowledges it.
			st.THRPending = false
			u.updateIRQ()
		}
		if st.FCR&fcrEnable != 0 {
			id |= iirFIFOs
		}
		return id
	case regLCR:
		return st.LCR
	case regMCR:
		return st.MCR
	case regLSR:
		v := st.LSR
		if st.LSR&lsrErrors != 0 {
			st.LSR &^= lsrErrors
			u.updateIRQ()
		}
		return v
	case regMSR:
		v := st.MSR
		if st.MSR&msrDelta != 0 {
			st.MSR &^= msrDelta
			u.updateIRQ()
		}
		return v
	default: // regSCR
		return st.SCR
	}
}

func (u *uart) write(reg uint32, v uint8) {
	switch reg {
	case regRBR:
		if st.LCR&lcrDLAB != 0 {
			st.Divider = st.Divider&0xff00 | uint16(v)
			return
		}
		u.writeTHR(v)
	case regIER:
		if st.LCR&lcrDLAB != 0 {
			st.Divider = st.Divider&0x00ff | uint16(v)<<8
			return
		}
		changed := (st.IER ^ v) & ierMask
		st.IER = v & ierMask
		if changed&ierTHRI != 0 {
			// Enabling the THRE interrupt while the transmitter is empty
			// raises it at once (drivers rely on this to start output).
			st.THRPending = st.IER&ierTHRI != 0 && st.LSR&lsrTHRE != 0
		}
		u.updateIRQ()
	case regIIR:
		u.writeFCR(v)
	case regLCR:
		st.LCR = v
	case regMCR:
		old := st.MCR
		st.MCR = v & mcrMask
		u.updateModemInputs()
		if (old^st.MCR)&mcrLoop != 0 {
			u.updateWatch()
			u.transmit() // output waiting for the backend may now loop back, or leave
		}
		u.updateIRQ()
	case regLSR, regMSR:
		// Writes to the status registers are ignored (factory test only).
	default:
		st.SCR = v
	}
}

// capacity is the receive or transmit queue size in the current mode.
func capacity() uint8 {
	if st.FCR&fcrEnable != 0 {
		return fifoSize
	}
	return 1
}

// trigger returns the receive FIFO trigger level.
func trigger() uint8 {
	switch st.FCR & fcrTrigMask {
	case 0x00:
		return 1
	case 0x40:
		return 4
	case 0x80:
		return 8
	}
	return 14
}

// iirID returns the highest-priority pending interrupt (without the FIFO
// bits); iirNone if none.
func iirID() uint8 {
	switch {
	case st.IER&ierRLSI != 0 && st.LSR&lsrErrors != 0:
		return iirRLSI
	case st.IER&ierRDI != 0 && rxDataAvailable():
		return iirRDI
	case st.IER&ierRDI != 0 && st.TimeoutPending:
		return iirTimeout
	case st.IER&ierTHRI != 0 && st.THRPending:
		return iirTHRI
	case st.IER&ierMSI != 0 && st.MSR&msrDelta != 0:
		return iirMSI
	}
	return iirNone
}

// rxDataAvailable: the received data interrupt condition (trigger level
// reached in FIFO mode, a byte held otherwise).
func rxDataAvailable() bool {
	if st.FCR&fcrEnable != 0 {
		return queues.RX.Count >= trigger()
	}
	return st.LSR&lsrDR != 0
}

func (u *uart) updateIRQ() {
	level := iirID() != iirNone
	if u.irqKnown && level == u.irqLevel {
		return
	}
	if err := irqLine.Set(level); err == nil {
		u.irqLevel, u.irqKnown = level, true
	}
}

// updateModemInputs computes the modem status inputs (loopback routes the
// modem control outputs to them) and latches the delta bits.
func (u *uart) updateModemInputs() {
	in := uint8(msrIdle)
	if st.MCR&mcrLoop != 0 {
		in = 0
		if st.MCR&mcrRTS != 0 {
			in |= msrCTS
		}
		if st.MCR&mcrDTR != 0 {
			in |= msrDSR
		}
		if st.MCR&mcrOUT1 != 0 {
			in |= msrRI
		}
		if st.MCR&mcrOUT2 != 0 {
			in |= msrDCD
		}
	}
	old := st.MSR
	delta := old & msrDelta
	if (old^in)&msrCTS != 0 {
		delta |= msrDCTS
	}
	if (old^in)&msrDSR != 0 {
		delta |= msrDDSR
	}
	if old&msrRI != 0 && in&msrRI == 0 {
		delta |= msrTERI // trailing edge of ring
	}
	if (old^in)&msrDCD != 0 {
		delta |= msrDDCD
	}
	st.MSR = in | delta
}

func (u *uart) writeFCR(v uint8) {
	if (st.FCR^v)&fcrEnable != 0 {
		// Switching the FIFOs on or off empties them.
		u.clearRX()
		u.clearTX()
	}
	if v&fcrEnable == 0 {
		st.FCR = 0
	} else {
		if v&fcrClearRX != 0 {
			u.clearRX()
		}
		if v&fcrClearTX != 0 {
			u.clearTX()
		}
		st.FCR = v & (fcrEnable | fcrDMA | fcrTrigMask)
	}
	u.armTimeout()
	u.updateWatch()
	u.updateIRQ()
}

func (u *uart) clearRX() {
	queues.RX.clear()
	st.LSR &^= lsrDR
	st.TimeoutPending = false
}

func (u *uart) clearTX() {
	if queues.TX.Count != 0 {
		queues.TX.clear()
		st.THRPending = true
	}
	st.LSR |= lsrTHRE | lsrTEMT
}

func (u *uart) readRBR() uint8 {
	if queues.RX.Count != 0 {
		st.RBR = queues.RX.pop()
	}
	if queues.RX.Count == 0 {
		st.LSR &^= lsrDR
	}
	st.TimeoutPending = false
	u.armTimeout()
	u.updateIRQ()
	u.updateWatch() // room again: resume reading the backend
	return st.RBR
}

func (u *uart) writeTHR(v uint8) {
	st.THRPending = false
	if queues.TX.Count < capacity() {
		queues.TX.push(v)
	} // else: the guest overran the transmitter; the byte is lost
	st.LSR &^= lsrTHRE | lsrTEMT
	u.transmit()
	u.updateIRQ()
}

// transmit moves queued output to the backend (or back into the receiver
// in loopback). Output the backend cannot take now stays queued, and the
// device watches for the backend to become writable.
func (u *uart) transmit() {
	for queues.TX.Count != 0 {
		if st.MCR&mcrLoop != 0 {
			u.receive(queues.TX.pop())
			continue
		}
		if u.console == nil {
			queues.TX.clear()
			break
		}
		n := copy(u.txBuf[:], queues.TX.Data[queues.TX.Head:])
		if n > int(queues.TX.Count) {
			n = int(queues.TX.Count)
		}
		w, err := u.console.Write(u.txBuf[:n])
		if err != nil && !errors.Is(err, abi.ErrAgain) {
			sdk.Logf(abi.LogWarn, "console write: %v; output dropped", err)
			queues.TX.clear()
			break
		}
		if w <= 0 {
			break // would block: wait for writable
		}
		for i := 0; i < w; i++ {
			queues.TX.pop()
		}
	}
	if queues.TX.Count == 0 && st.LSR&lsrTHRE == 0 {
		st.LSR |= lsrTHRE | lsrTEMT
		st.THRPending = true
	}
	u.updateWatch()
}

// receive puts one byte into the receiver.
func (u *uart) receive(b byte) {
	if queues.RX.Count >= capacity() {
		st.LSR |= lsrOE
		if st.FCR&fcrEnable == 0 {
			// Without FIFOs the holding register is overwritten.
			queues.RX.clear()
			queues.RX.push(b)
		}
	} else {
		queues.RX.push(b)
	}
	st.LSR |= lsrDR
	u.armTimeout()
}

// BackendReady reads input while the receiver has room and writes queued
// output when the backend can take it.
func (u *uart) BackendReady(b *sdk.Backend, events abi.BackendEvent) {
	if b != u.console {
		return
	}
	if events&abi.EventWritable != 0 {
		u.transmit()
	}
	if events&abi.EventReadable != 0 && st.MCR&mcrLoop == 0 {
		room := int(capacity()) - int(queues.RX.Count)
		if room > 0 {
			n, err := b.Read(u.rxBuf[:room])
			if err != nil && !errors.Is(err, abi.ErrAgain) {
				sdk.Logf(abi.LogWarn, "console read: %v", err)
			}
			for i := 0; i < n; i++ {
				u.receive(u.rxBuf[i])
			}
		}
	}
	u.updateWatch()
	u.updateIRQ()
}

// updateWatch asks the host for exactly the readiness the device can use:
// readable while the receiver has room (flow control), writable while
// output is queued.
func (u *uart) updateWatch() {
	if u.console == nil {
		return
	}
	var want abi.BackendEvent
	if st.MCR&mcrLoop == 0 && queues.RX.Count < capacity() {
		want |= abi.EventReadable
	}
	if queues.TX.Count != 0 && st.MCR&mcrLoop == 0 {
		want |= abi.EventWritable
	}
	if want == u.watching {
		return
	}
	if err := u.console.Watch(want); err == nil {
		u.watching = want
	}
}

// charTimeNS is the time one character takes on the line at the current
// divisor and format.
func charTimeNS() int64 {
	halfBits := int64(2 * (1 + 5 + int(st.LCR&3))) // start + data
	if st.LCR&0x08 != 0 {
		halfBits += 2 // parity
	}
	switch {
	case st.LCR&0x04 == 0:
		halfBits += 2
	case st.LCR&3 == 0:
		halfBits += 3 // 1.5 stop bits with 5-bit words
	default:
		halfBits += 4
	}
	div := int64(st.Divider)
	if div == 0 {
		div = 1
	}
	return halfBits * div * 1_000_000_000 / (2 * int64(baudBase.Get()))
}

// armTimeout (re)starts the character timeout: four character times after
// the last byte moved, if the receive FIFO holds bytes below the trigger.
func (u *uart) armTimeout() {
	if st.FCR&fcrEnable == 0 || queues.RX.Count == 0 || st.TimeoutPending {
		_ = timerTimeout.Cancel()
		return
	}
	if err := timerTimeout.Arm(sdk.Now() + 4*charTimeNS()); err != nil {
		// Without a timer, report the timeout at once rather than never.
		st.TimeoutPending = true
	}
}

// TimerFired raises the character timeout indication.
func (u *uart) TimerFired(t sdk.Timer) {
	if t != timerTimeout {
		return
	}
	if st.FCR&fcrEnable != 0 && queues.RX.Count != 0 {
		st.TimeoutPending = true
		u.updateIRQ()
	}
}

// PreSave records whether the FIFO subsection goes on the wire.
func (u *uart) PreSave() error {
	st.FIFOSaved = fifoNeeded()
	return nil
}

// PostLoad checks the loaded state and brings interrupts, timers and the
// backend in line with it.
func (u *uart) PostLoad(uint32) error {
	if !st.FIFOSaved {
		queues.RX.clear()
		queues.TX.clear()
	}
	for _, q := range []struct {
		name string
		f    *fifo
	}{{"rx", &queues.RX}, {"tx", &queues.TX}} {
		if q.f.Head >= fifoSize || q.f.Count > fifoSize {
			return tinyfmt.Errorf("serial/fifo: %s head %d count %d outside a %d-byte FIFO", q.name, q.f.Head, q.f.Count, fifoSize)
		}
	}
	st.IER &= ierMask
	st.MCR &= mcrMask
	_ = timerTimeout.Cancel()
	u.armTimeout()
	u.irqKnown = false
	u.watching = ^abi.BackendEvent(0) // force a fresh watch request
	u.transmit()
	u.updateWatch()
	u.updateIRQ()
	return nil
}
