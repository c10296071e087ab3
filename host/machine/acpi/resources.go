package acpi

import "encoding/binary"

// Resource descriptor tags (ACPI 6.5, section 6.4).
const (
	resIRQNoFlags     = 0x22 // small item 0x04, length 2
	resIO             = 0x47 // small item 0x08, length 7
	resEndTag         = 0x79 // small item 0x0f, length 1
	resMemory32Fixed  = 0x86 // large item 0x06
	resExtendedIRQ    = 0x89 // large item 0x09
	extIRQConsumer    = 1 << 0
	extIRQEdge        = 1 << 1
	extIRQActiveLow   = 1 << 2
	memory32ReadWrite = 1 << 0
	ioDecode16        = 1 << 0
)

// ioPort encodes IO(Decode16, base, base, align, length).
func ioPort(base uint16, align, length uint8) []byte {
	b := []byte{resIO, ioDecode16}
	b = binary.LittleEndian.AppendUint16(b, base)
	b = binary.LittleEndian.AppendUint16(b, base)
	return append(b, align, length)
}

// irqNoFlags encodes IRQNoFlags() { irq } (an ISA IRQ 0-15: edge, active
// high, exclusive).
func irqNoFlags(irq uint8) []byte {
	return binary.LittleEndian.AppendUint16([]byte{resIRQNoFlags}, 1<<irq)
}

// memory32Fixed encodes Memory32Fixed(ReadWrite, base, length).
func memory32Fixed(base, length uint32) []byte {
	b := binary.LittleEndian.AppendUint16([]byte{resMemory32Fixed}, 9)
	b = append(b, memory32ReadWrite)
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, length)
}

// extendedIRQ encodes Interrupt(ResourceConsumer, Level|Edge, ActiveHigh,
// Exclusive) { gsi }.
func extendedIRQ(gsi uint32, edge bool) []byte {
	flags := byte(extIRQConsumer)
	if edge {
		flags |= extIRQEdge
	}
	b := binary.LittleEndian.AppendUint16([]byte{resExtendedIRQ}, 6)
	b = append(b, flags, 1)
	return binary.LittleEndian.AppendUint32(b, gsi)
}

// resourceTemplate encodes ResourceTemplate() { descs } as an AML buffer,
// closed by an end tag whose zero checksum means "treat as valid".
func (a *aml) resourceTemplate(descs ...[]byte) []byte {
	return a.buffer(append(concat(descs), resEndTag, 0))
}
