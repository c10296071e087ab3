// Package vmstate is wasmvmm's vmstate schema model and its migration stream:
// QEMU's stream format version 3, written and read by our own code.
//
// A Registry holds the Devices whose state is migrated: plugin instances
// (their schema is an abi.Section, their store is the plugin's linear memory)
// and host-side state (vCPU registers and the like, kept in a ByteStore that
// the host fills before saving and decodes after loading).
//
// The stream, in order:
//
//	magic "QEVM" (be32 0x5145564d), version be32 3
//	0x07 configuration: be32 length + machine type name
//	0x01 START "ram" v4: MEM_SIZE record listing every block, EOS, footer
//	0x02 PART: page records (PAGE with data, ZERO with a 0 fill byte), EOS, footer  (any number)
//	0x03 END: the last page records, EOS, footer
//	0x04 FULL per device: fields, subsections, footer
//	0x00 EOF
//	0x06 vmdesc: be32 length + JSON describing every device section sent
//
// QEMU's scripts/analyze-migration.py reads these streams unchanged.
//
// Zero pages: like QEMU, the writer sends a ZERO record (header plus a fill
// byte of 0) for every requested page that reads as all zeroes, and never the
// page's data; the reader writes a zero page only when the destination page is
// not already zero, so untouched destination memory stays unpopulated.
//
// Loading applies RAM pages as they arrive (as QEMU does), but never half-
// applies device state: every device section is decoded into staging buffers,
// the whole stream is validated up to EOF and the vmdesc, and only then are
// the stores written and PostLoad called. When the stream is seekable (a
// snapshot file), the vmdesc is read ahead from its end, so that a field
// whose type or size differs between source and destination is reported by
// name before any byte of its section is decoded; on a socket the same
// difference shows as a footer mismatch, and the vmdesc is compared after
// EOF.
package vmstate

// Stream framing constants (QEMU migration stream format version 3).
const (
	FileMagic   uint32 = 0x5145564d // "QEVM"
	FileVersion uint32 = 3

	SectionEOF           byte = 0x00
	SectionStart         byte = 0x01
	SectionPart          byte = 0x02
	SectionEnd           byte = 0x03
	SectionFull          byte = 0x04
	SectionSubsection    byte = 0x05
	SectionVMDescription byte = 0x06
	SectionConfiguration byte = 0x07
	SectionCommand       byte = 0x08
	SectionFooter        byte = 0x7e
)

// RAM record flags, ORed into the low bits of a page-aligned be64 address.
const (
	RAMFlagZero         uint64 = 0x02
	RAMFlagMemSize      uint64 = 0x04
	RAMFlagPage         uint64 = 0x08
	RAMFlagEOS          uint64 = 0x10
	RAMFlagContinue     uint64 = 0x20
	RAMFlagXBZRLE       uint64 = 0x40
	RAMFlagHook         uint64 = 0x80
	RAMFlagMultifdFlush uint64 = 0x200
)

// Fixed identities of the sections this package writes.
const (
	// RAMSectionName is the idstr of the RAM section; its instance id is 0.
	RAMSectionName = "ram"
	// RAMSectionVersion is the version QEMU uses for "ram" (and the only
	// one analyze-migration.py accepts).
	RAMSectionVersion uint32 = 4
	// RAMSectionID is the section id the writer gives the RAM section;
	// device sections are numbered from 1 in registration order.
	RAMSectionID uint32 = 0
	// PageSize is the target page size of the RAM records.
	PageSize = 4096
	// configurationName is the vmsd name of the configuration section.
	configurationName = "configuration"
)

// Limits the reader enforces so that a hostile stream cannot make it
// allocate without bound. Everything else it allocates is bounded by the
// registered schemas and the destination's RAM.
const (
	// MaxVMDescLen bounds the trailing JSON description.
	MaxVMDescLen = 16 << 20
	// MaxMachineNameLen bounds the machine type name in the configuration.
	MaxMachineNameLen = 256
	// MaxDeviceStateLen bounds one device's state as the schema makes it.
	MaxDeviceStateLen = 64 << 20
)

// QEMU_VM_COMMAND subcommands the reader tolerates (no payload effect).
const cmdSwitchoverStart = 0x0b
