package acpi

import (
	"encoding/binary"
	"fmt"
)

// Identification written into every table header.
const (
	oemID           = "WASMVM"
	oemTablePrefix  = "WVMM" // + the table signature
	oemRevision     = 1
	creatorID       = "WVMM"
	creatorRevision = 1
)

// Table sizes.
const (
	headerLength = 36
	rsdpLength   = 36
	facsLength   = 64
	fadtLength   = 276 // ACPI 6.x FADT
)

// Revisions of the tables built here.
const (
	fadtRevision      = 6
	fadtMinorRevision = 0
	madtRevision      = 5
	dsdtRevision      = 2 // 64-bit AML integers
	rsdpRevision      = 2
)

var le = binary.LittleEndian

// checksum returns the byte that makes the sum of b plus it zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// Sum8 returns the 8-bit sum of b; a table with a correct checksum sums to 0.
func Sum8(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// withHeader prepends a standard table header to body and fills in the
// length and checksum.
func withHeader(sig string, revision byte, body []byte) []byte {
	t := make([]byte, headerLength, headerLength+len(body))
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(headerLength+len(body)))
	t[8] = revision
	copy(t[10:16], oemID)
	copy(t[16:24], oemTablePrefix+sig)
	le.PutUint32(t[24:], oemRevision)
	copy(t[28:32], creatorID)
	le.PutUint32(t[32:], creatorRevision)
	t = append(t, body...)
	t[9] = checksum(t)
	return t
}

// buildRSDP builds a revision 2 RSDP pointing at the RSDT and the XSDT,
// with both the ACPI 1.0 checksum (first 20 bytes) and the extended one.
func buildRSDP(rsdt uint32, xsdt uint64) []byte {
	b := make([]byte, rsdpLength)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], oemID)
	b[15] = rsdpRevision
	le.PutUint32(b[16:], rsdt)
	le.PutUint32(b[20:], rsdpLength)
	le.PutUint64(b[24:], xsdt)
	b[8] = checksum(b[:20])
	b[32] = checksum(b)
	return b
}

// buildXSDT builds the XSDT with 64-bit table pointers.
func buildXSDT(tables []uint64) []byte {
	var body []byte
	for _, a := range tables {
		body = le.AppendUint64(body, a)
	}
	return withHeader("XSDT", 1, body)
}

// buildRSDT builds the RSDT with 32-bit table pointers, for ACPI 1.0 OSes.
func buildRSDT(tables []uint32) []byte {
	var body []byte
	for _, a := range tables {
		body = le.AppendUint32(body, a)
	}
	return withHeader("RSDT", 1, body)
}

// buildFACS builds a version 2 FACS (no checksum; 64 bytes).
func buildFACS() []byte {
	b := make([]byte, facsLength)
	copy(b[0:4], "FACS")
	le.PutUint32(b[4:], facsLength)
	b[32] = 2 // version
	return b
}

// FADT flags (ACPI 6.5, table 5.10).
const (
	fadtWBINVD      = 1 << 0
	fadtProcC1      = 1 << 2
	fadtPowerButton = 1 << 4 // power button is a control-method device (or absent)
	fadtSleepButton = 1 << 5 // no fixed-feature sleep button
	iapcVGANotPres  = 1 << 2 // IAPC_BOOT_ARCH: VGA not present
	gasSystemIO     = 1
	gasAccessWord   = 2
	gasAccessDWord  = 3
)

// gas encodes a Generic Address Structure.
func gas(space, bitWidth, bitOffset, access byte, addr uint64) []byte {
	return le.AppendUint64([]byte{space, bitWidth, bitOffset, access}, addr)
}

// buildFADT builds an ACPI 6.0 FADT for a full (not hardware-reduced)
// platform with its PM1a event/control blocks and PM timer in I/O space.
func buildFADT(facs, dsdt uint64) []byte {
	b := make([]byte, fadtLength-headerLength)
	at := func(off int) []byte { return b[off-headerLength:] }
	// FIRMWARE_CTRL stays 0: X_FIRMWARE_CTRL carries the FACS address.
	le.PutUint32(at(40), uint32(dsdt))
	le.PutUint16(at(46), SCIInterrupt)
	// SMI_CMD, ACPI_ENABLE, ACPI_DISABLE = 0: always in ACPI mode.
	le.PutUint32(at(56), PM1aEventBlock)
	le.PutUint32(at(64), PM1aControlBlock)
	le.PutUint32(at(76), PMTimerBlock)
	at(88)[0] = PM1EventLength
	at(89)[0] = PM1ControlLength
	at(91)[0] = PMTimerLength
	le.PutUint16(at(96), 0x0fff) // P_LVL2_LAT > 100: no C2
	le.PutUint16(at(98), 0x0fff) // P_LVL3_LAT > 1000: no C3
	le.PutUint16(at(109), iapcVGANotPres)
	le.PutUint32(at(112), fadtWBINVD|fadtProcC1|fadtPowerButton|fadtSleepButton)
	at(131)[0] = fadtMinorRevision
	le.PutUint64(at(132), facs)
	le.PutUint64(at(140), dsdt)
	copy(at(148), gas(gasSystemIO, PM1EventLength*8, 0, gasAccessWord, PM1aEventBlock))
	copy(at(172), gas(gasSystemIO, PM1ControlLength*8, 0, gasAccessWord, PM1aControlBlock))
	copy(at(208), gas(gasSystemIO, PMTimerLength*8, 0, gasAccessDWord, PMTimerBlock))
	copy(at(268), "WASMVMM\x00") // hypervisor vendor identity
	return withHeader("FACP", fadtRevision, b)
}

// MADT structure types.
const (
	madtLocalAPIC      = 0
	madtIOAPIC         = 1
	madtSourceOverride = 2
	madtLocalAPICNMI   = 4
	madtPCATCompat     = 1 << 0
	madtLAPICEnabled   = 1 << 0
	mpsActiveHigh      = 0x1
	mpsLevel           = 0xc
)

// buildMADT builds the MADT for cpus vCPUs.
func buildMADT(cpus int) []byte {
	body := le.AppendUint32(nil, LocalAPICAddr)
	body = le.AppendUint32(body, madtPCATCompat)
	for i := 0; i < cpus; i++ {
		body = append(body, madtLocalAPIC, 8, byte(i), byte(i))
		body = le.AppendUint32(body, madtLAPICEnabled)
	}
	body = append(body, madtIOAPIC, 12, IOAPICID, 0)
	body = le.AppendUint32(body, IOAPICAddr)
	body = le.AppendUint32(body, 0) // GSI base
	override := func(irq byte, gsi uint32, flags uint16) {
		body = append(body, madtSourceOverride, 10, 0, irq)
		body = le.AppendUint32(body, gsi)
		body = le.AppendUint16(body, flags)
	}
	override(0, 2, 0) // the PIT's IRQ0 is wired to IOAPIC pin 2
	override(SCIInterrupt, SCIInterrupt, mpsActiveHigh|mpsLevel)
	// NMI on LINT1 of every processor (UID 0xff), bus-conforming flags.
	body = append(body, madtLocalAPICNMI, 6, 0xff, 0, 0, 1)
	return withHeader("APIC", madtRevision, body)
}

// buildDSDT encodes the DSDT's AML.
func buildDSDT(cfg Config) ([]byte, error) {
	var a aml
	var devs [][]byte
	for i, s := range cfg.Serial {
		devs = append(devs, a.device(fmt.Sprintf("COM%d", i+1),
			a.name("_HID", a.dword(a.eisaID("PNP0501"))),
			a.name("_UID", a.integer(uint64(i+1))),
			a.name("_STA", a.integer(0x0f)),
			a.name("_CRS", a.resourceTemplate(ioPort(s.Port, 0, 8), irqNoFlags(s.IRQ))),
		))
	}
	for i, d := range cfg.VirtioMMIO {
		devs = append(devs, a.device(fmt.Sprintf("VR%02X", i),
			a.name("_HID", a.str("LNRO0005")),
			a.name("_UID", a.integer(uint64(i))),
			a.name("_CCA", a.integer(1)),
			a.name("_CRS", a.resourceTemplate(
				memory32Fixed(uint32(d.Base), uint32(d.Size)),
				extendedIRQ(d.IRQ, d.EdgeTriggered),
			)),
		))
	}
	sleep := func(typ uint64) []byte {
		return a.pkg(a.integer(typ), a.integer(typ), a.integer(0), a.integer(0))
	}
	// The DSDT's code runs in the root scope, so the root-level names go
	// without the "\\" prefix (as iasl emits them).
	body := concat([][]byte{
		a.scope("_SB_", devs...),
		a.name("_S3_", sleep(SleepTypeS3)),
		a.name("_S5_", sleep(SleepTypeS5)),
	})
	if a.err != nil {
		return nil, fmt.Errorf("acpi: DSDT: %w", a.err)
	}
	return withHeader("DSDT", dsdtRevision, body), nil
}
