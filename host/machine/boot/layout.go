// Package boot loads x86-64 kernels into guest memory and prepares what a
// 64-bit kernel entry needs: the Linux zero page (boot_params), the E820
// memory map, the initrd, identity-mapping page tables and a flat GDT.
//
// Guest memory is reached only through io.WriterAt / io.ReaderAt, where the
// offset is the guest physical address. The package has no dependency on
// the rest of wasmvmm; the VM assembly code calls it and converts CPUState
// into KVM registers.
//
// # Guest physical layout
//
// The constants below describe where the boot pieces live. Everything below
// 1 MiB except the first 640 KiB - 1 KiB is reserved in the E820 map; the
// boot structures sit in the low RAM area, which the kernel may reuse once it
// has copied what it needs (Linux copies boot_params and the command line
// early).
//
//	0x0000_0500  GDT (GDTAddr), 6 entries
//	0x0000_7000  zero page / boot_params (ZeroPageAddr), 4 KiB
//	0x0000_8000  boot stack, top at BootStackTop
//	0x0000_9000  PML4 (PML4Addr), then PDPT, then page directories
//	0x0002_0000  kernel command line (CmdlineAddr), up to CmdlineMaxSize
//	0x0009_fc00  EBDA / VGA / BIOS area, reserved up to 1 MiB
//	0x000e_0000  ACPI tables with the RSDP first (found by the legacy scan)
//	0x0010_0000  kernel (KernelAddr) for ELF guests and bzImage default
//	0xc000_0000  32-bit MMIO hole (MMIOHoleStart) up to 4 GiB
//	0xd000_0000  virtio-mmio windows (VirtioMMIOBase)
//	0xfec0_0000  IOAPIC; 0xfee0_0000 local APIC
//	0x1_0000_0000 RAM above the hole for guests bigger than 3 GiB
package boot

// Layout constants for the boot structures in guest physical memory.
const (
	// GDTAddr is where SetupLongMode writes the boot GDT.
	GDTAddr = 0x500
	// ZeroPageAddr is the address of boot_params (the "zero page"); RSI
	// holds it at the 64-bit entry.
	ZeroPageAddr = 0x7000
	// BootStackTop is the initial RSP for the 64-bit entry. The stack
	// grows down into 0x8000–0x8fff.
	BootStackTop = 0x8ff0
	// PML4Addr is the address of the top-level page table; the PDPT and
	// page directories follow it page by page.
	PML4Addr = 0x9000
	// CmdlineAddr is where the kernel command line is written.
	CmdlineAddr = 0x20000
	// CmdlineMaxSize is the room reserved for the command line including
	// its terminating NUL.
	CmdlineMaxSize = 0x10000
	// EBDAStart is the start of the reserved area below 1 MiB (extended
	// BIOS data area, VGA memory, option ROMs, BIOS).
	EBDAStart = 0x9fc00
	// ACPITablesAddr is where the ACPI tables go, RSDP first, inside the
	// 0xe0000–0xfffff range that a legacy RSDP scan searches.
	ACPITablesAddr = 0xe0000
	// HighMemStart is the first byte above the legacy area (1 MiB).
	HighMemStart = 0x100000
	// KernelAddr is the default load address of a kernel (1 MiB).
	KernelAddr = HighMemStart
	// MMIOHoleStart is the start of the 32-bit MMIO hole (3 GiB).
	MMIOHoleStart = 0xc0000000
	// MMIOHoleEnd is the end of the 32-bit MMIO hole (4 GiB).
	MMIOHoleEnd = 0x100000000
	// VirtioMMIOBase is the first virtio-mmio window.
	VirtioMMIOBase = 0xd0000000
	// IOAPICAddr is the IOAPIC's MMIO base.
	IOAPICAddr = 0xfec00000
	// LAPICAddr is the local APIC's MMIO base.
	LAPICAddr = 0xfee00000
	// PlatformReservedStart is the start of the range at the top of the
	// hole that the E820 map marks reserved (IOAPIC, local APIC, BIOS).
	PlatformReservedStart = IOAPICAddr
)

// pageSize is the x86 base page size.
const pageSize = 0x1000
