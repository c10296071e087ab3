// Package acpi builds the ACPI tables of an x86 wasmvmm guest: RSDP, XSDT,
// RSDT, FADT, FACS, MADT and a DSDT whose AML this package encodes itself.
//
// The platform the tables describe:
//
//   - A full (not hardware-reduced) ACPI platform with fixed-hardware PM
//     registers in I/O space, because the guests put themselves to sleep
//     (S3) and power off (S5) by writing SLP_TYP|SLP_EN to PM1a_CNT:
//     PM1a_EVT_BLK at 0x600 (4 bytes: status, enable), PM1a_CNT_BLK at
//     0x604 (2 bytes), PM_TMR_BLK at 0x608 (4 bytes, 24-bit timer), both as
//     legacy 32-bit fields and as X_ generic addresses. SMI_CMD is 0: the
//     platform is always in ACPI mode (the PM device model must read SCI_EN
//     as 1). No GPE blocks, no reset register. SCI on IRQ 9.
//   - The DSDT declares \_S3_ with SLP_TYP 1 and \_S5_ with SLP_TYP 0 (the
//     values the PM device model decodes), each COM port as a PNP0501
//     device with its I/O range and ISA IRQ, and each virtio-mmio transport
//     as an LNRO0005 device with Memory32Fixed and an Interrupt descriptor
//     (level-triggered, active high, exclusive by default: what QEMU's
//     microvm declares for its virtio-mmio devices).
//   - MADT: one enabled local APIC per vCPU (APIC id = processor UID =
//     index), the IOAPIC (id 0) at 0xfec00000 with GSI base 0, interrupt
//     source overrides ISA IRQ0 -> GSI 2 and the SCI (level, active high),
//     a local APIC NMI on LINT1 for all processors, local APIC at
//     0xfee00000, PCAT_COMPAT set (the in-kernel irqchip has the 8259s).
//   - A FACS (needed by a full ACPI platform for the S3 waking vector).
//
// The tables are placed one after the other from Config.Addr, RSDP first,
// so a placement at 0xe0000 lets a legacy RSDP scan find them too.
package acpi

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// Defaults of the platform the tables describe.
const (
	// DefaultAddr is where the tables go unless Config.Addr says
	// otherwise: inside 0xe0000–0xfffff, where a legacy scan finds the RSDP.
	DefaultAddr = 0xe0000
	// DefaultSize is the room available from DefaultAddr (up to 1 MiB).
	DefaultSize = 0x20000
	// PM1aEventBlock is the I/O port of PM1a_EVT_BLK (PM1 status and enable).
	PM1aEventBlock = 0x600
	// PM1EventLength is the length of PM1a_EVT_BLK in bytes.
	PM1EventLength = 4
	// PM1aControlBlock is the I/O port of PM1a_CNT_BLK.
	PM1aControlBlock = 0x604
	// PM1ControlLength is the length of PM1a_CNT_BLK in bytes.
	PM1ControlLength = 2
	// PMTimerBlock is the I/O port of the ACPI PM timer.
	PMTimerBlock = 0x608
	// PMTimerLength is the length of PM_TMR_BLK in bytes.
	PMTimerLength = 4
	// SCIInterrupt is the ISA IRQ (and GSI) of the SCI.
	SCIInterrupt = 9
	// SleepTypeS3 is the SLP_TYP value of \_S3_.
	SleepTypeS3 = 1
	// SleepTypeS5 is the SLP_TYP value of \_S5_.
	SleepTypeS5 = 0
	// IOAPICAddr is the IOAPIC's MMIO base.
	IOAPICAddr = 0xfec00000
	// IOAPICID is the IOAPIC's id (KVM's in-kernel IOAPIC resets to 0).
	IOAPICID = 0
	// LocalAPICAddr is the local APICs' MMIO base.
	LocalAPICAddr = 0xfee00000
	// MaxCPUs is the most vCPUs the MADT describes (xAPIC ids 0..254).
	MaxCPUs = 255
	// MaxDevices bounds the virtio-mmio devices (names VR00..VRFF).
	MaxDevices = 256
	// MaxSerialPorts bounds the COM ports (names COM1..COM9).
	MaxSerialPorts = 9
)

// VirtioMMIODevice is a virtio-mmio transport described in the DSDT.
type VirtioMMIODevice struct {
	Base uint64 // register window (below 4 GiB)
	Size uint64 // window size
	IRQ  uint32 // GSI
	// EdgeTriggered declares the interrupt edge-triggered; the default is
	// level-triggered, active high.
	EdgeTriggered bool
}

// SerialPort is a 16550 UART described in the DSDT.
type SerialPort struct {
	Port uint16 // first I/O port (8 ports)
	IRQ  uint8  // ISA IRQ (0-15)
}

// Config says what the tables describe and where they go.
type Config struct {
	// CPUs is the number of vCPUs (1..MaxCPUs).
	CPUs int
	// VirtioMMIO lists the virtio-mmio devices.
	VirtioMMIO []VirtioMMIODevice
	// Serial lists the COM ports.
	Serial []SerialPort
	// Addr is the guest physical address of the first table (the RSDP);
	// zero means DefaultAddr. Must be 16-byte aligned.
	Addr uint64
	// Size is the room available from Addr; zero means DefaultSize.
	Size uint64
}

// Table is one table to write into guest memory.
type Table struct {
	// Signature is the table's signature ("RSDP" for the RSDP, whose real
	// signature is "RSD PTR ").
	Signature string
	// Addr is the table's guest physical address.
	Addr uint64
	// Data is the table's bytes, checksums filled in.
	Data []byte
}

// Tables is the result of Build.
type Tables struct {
	// RSDPAddr is the RSDP's address, for boot_params.acpi_rsdp_addr.
	RSDPAddr uint64
	// Tables lists every table, RSDP first, in address order.
	Tables []Table
}

// Table returns the table with the given signature, or nil.
func (t *Tables) Table(sig string) *Table {
	for i := range t.Tables {
		if t.Tables[i].Signature == sig {
			return &t.Tables[i]
		}
	}
	return nil
}

// End is the first byte above the last table.
func (t *Tables) End() uint64 {
	last := t.Tables[len(t.Tables)-1]
	return last.Addr + uint64(len(last.Data))
}

// WriteToGuest writes every table into guest memory (offset = guest
// physical address).
func (t *Tables) WriteToGuest(mem io.WriterAt) error {
	for _, tab := range t.Tables {
		if tab.Addr > math.MaxInt64 {
			return fmt.Errorf("acpi: %s at %#x: address out of range", tab.Signature, tab.Addr)
		}
		n, err := mem.WriteAt(tab.Data, int64(tab.Addr))
		if err != nil {
			return fmt.Errorf("acpi: write %s at %#x: %w", tab.Signature, tab.Addr, err)
		}
		if n != len(tab.Data) {
			return fmt.Errorf("acpi: write %s at %#x: short write", tab.Signature, tab.Addr)
		}
	}
	return nil
}

// validate checks the configuration.
func (c *Config) validate() error {
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("acpi: %d vCPUs, want 1..%d", c.CPUs, MaxCPUs)
	}
	if len(c.VirtioMMIO) > MaxDevices {
		return fmt.Errorf("acpi: %d virtio-mmio devices, at most %d", len(c.VirtioMMIO), MaxDevices)
	}
	for i, d := range c.VirtioMMIO {
		if d.Size == 0 || d.Size > math.MaxUint32 || d.Base > math.MaxUint32 || d.Base+d.Size-1 > math.MaxUint32 {
			return fmt.Errorf("acpi: virtio-mmio device %d: window %#x+%#x must be non-empty and below 4 GiB", i, d.Base, d.Size)
		}
	}
	if len(c.Serial) > MaxSerialPorts {
		return fmt.Errorf("acpi: %d serial ports, at most %d", len(c.Serial), MaxSerialPorts)
	}
	for i, s := range c.Serial {
		if s.IRQ > 15 {
			return fmt.Errorf("acpi: serial port %d at %#x: IRQ %d is not an ISA IRQ (0-15)", i, s.Port, s.IRQ)
		}
		if s.Port > 0xffff-7 {
			return fmt.Errorf("acpi: serial port %d at %#x: 8 ports do not fit", i, s.Port)
		}
	}
	if c.Addr%16 != 0 {
		return fmt.Errorf("acpi: table address %#x is not 16-byte aligned", c.Addr)
	}
	return nil
}

// Build lays out and encodes the tables for cfg.
func Build(cfg Config) (*Tables, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	base, room := cfg.Addr, cfg.Size
	if base == 0 {
		base = DefaultAddr
	}
	if room == 0 {
		room = DefaultSize
	}
	dsdt, err := buildDSDT(cfg)
	if err != nil {
		return nil, err
	}
	madt := buildMADT(cfg.CPUs)

	// Layout: RSDP, FACS (64-byte aligned), DSDT, FADT, MADT, XSDT, RSDT.
	next := base
	place := func(size int, align uint64) uint64 {
		at := (next + align - 1) &^ (align - 1)
		next = at + uint64(size)
		return at
	}
	rsdpAddr := place(rsdpLength, 16)
	facsAddr := place(facsLength, 64)
	dsdtAddr := place(len(dsdt), 16)
	fadtAddr := place(fadtLength, 16)
	madtAddr := place(len(madt), 16)
	xsdtAddr := place(headerLength+8*2, 16)
	rsdtAddr := place(headerLength+4*2, 16)
	if next-base > room {
		return nil, fmt.Errorf("acpi: tables need %#x bytes, only %#x available at %#x", next-base, room, base)
	}
	if next > math.MaxUint32 {
		return nil, errors.New("acpi: tables must lie below 4 GiB (the RSDT and FADT hold 32-bit pointers)")
	}
	fadt := buildFADT(facsAddr, dsdtAddr)
	xsdt := buildXSDT([]uint64{fadtAddr, madtAddr})
	rsdt := buildRSDT([]uint32{uint32(fadtAddr), uint32(madtAddr)})
	rsdp := buildRSDP(uint32(rsdtAddr), xsdtAddr)
	return &Tables{
		RSDPAddr: rsdpAddr,
		Tables: []Table{
			{Signature: "RSDP", Addr: rsdpAddr, Data: rsdp},
			{Signature: "FACS", Addr: facsAddr, Data: buildFACS()},
			{Signature: "DSDT", Addr: dsdtAddr, Data: dsdt},
			{Signature: "FACP", Addr: fadtAddr, Data: fadt},
			{Signature: "APIC", Addr: madtAddr, Data: madt},
			{Signature: "XSDT", Addr: xsdtAddr, Data: xsdt},
			{Signature: "RSDT", Addr: rsdtAddr, Data: rsdt},
		},
	}, nil
}
