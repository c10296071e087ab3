package boot

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Control register and EFER bits used for the 64-bit entry state.
const (
	CR0PE = 1 << 0  // protection enable
	CR0ET = 1 << 4  // extension type (always 1 on modern CPUs)
	CR0NE = 1 << 5  // native x87 error reporting
	CR0PG = 1 << 31 // paging

	CR4PAE = 1 << 5 // physical address extension (required for long mode)

	EFERLME = 1 << 8  // long mode enable
	EFERLMA = 1 << 10 // long mode active

	// RFLAGSReserved is bit 1 of RFLAGS, which always reads as 1.
	RFLAGSReserved = 0x2
)

// Selectors of the boot GDT. Linux's 64-bit boot protocol wants __BOOT_CS
// (0x10) to be a 64-bit code segment and __BOOT_DS (0x18) a data segment.
const (
	BootCS  = 0x10
	BootDS  = 0x18
	BootTSS = 0x20 // a 16-byte 64-bit TSS descriptor (entries 4 and 5)

	gdtEntries = 6
	tssLimit   = 0x67 // a 104-byte 64-bit TSS
)

// Page table entry bits.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // a 2 MiB (PD) or 1 GiB (PDPT) page

	gib = 1 << 30
	mib = 1 << 20

	// identityMin is the least amount of address space SetupLongMode
	// maps: all of the 32-bit space, including the MMIO hole.
	identityMin = 4 * gib
	// lowPDs is the number of page directories (2 MiB pages) that map the
	// first 4 GiB; above, the PDPT maps 1 GiB pages.
	lowPDs = identityMin / gib
	// maxIdentity is what one PDPT covers (512 GiB).
	maxIdentity = 512 * gib
	// pdptAddr and pdAddr follow the PML4 page by page.
	pdptAddr = PML4Addr + pageSize
	pdAddr   = pdptAddr + pageSize
	// PageTablesEnd is the first byte above the boot page tables.
	PageTablesEnd = pdAddr + lowPDs*pageSize
)

// Segment is an x86 segment register in the shape of struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
}

// DescriptorTable is a GDTR or IDTR value.
type DescriptorTable struct {
	Base  uint64
	Limit uint16
}

// CPUState is the register state for a 64-bit kernel entry, as plain values
// for the caller to convert into KVM_SET_SREGS / KVM_SET_REGS.
type CPUState struct {
	CR0, CR3, CR4, EFER             uint64
	CS, DS, ES, SS, FS, GS, TR, LDT Segment
	GDT, IDT                        DescriptorTable
	RIP, RSI, RSP, RFLAGS           uint64
}

// SetupLongMode writes identity-mapping page tables and the boot GDT into
// guest memory and returns the CPU state for a 64-bit entry.
//
// The page tables (PML4 at PML4Addr, PDPT and four page directories after
// it, ending at PageTablesEnd) map the first 4 GiB with 2 MiB pages and, when
// memSize (the highest guest physical address to map, exclusive) is above
// 4 GiB, the rest up to memSize with 1 GiB pages (the guest CPU needs
// pdpe1gb to use those before it builds its own tables). At most 512 GiB
// can be mapped. All pages are present, writable and supervisor-only.
//
// The GDT at GDTAddr holds a null entry, an unused entry (0x08), the 64-bit
// code segment BootCS (0x10), the flat data segment BootDS (0x18) and a
// busy 64-bit TSS descriptor BootTSS (0x20, base 0).
//
// The returned state has CR0=PE|ET|NE|PG, CR3=PML4Addr, CR4=PAE,
// EFER=LME|LMA, CS=BootCS, the data segments = BootDS, an empty IDT,
// RSI=ZeroPageAddr, RSP=BootStackTop, RFLAGS=0x2 (interrupts off). RIP is 0:
// the caller sets it to the kernel's 64-bit entry.
func SetupLongMode(mem io.WriterAt, memSize uint64) (CPUState, error) {
	if memSize < HighMemStart {
		return CPUState{}, fmt.Errorf("long mode: guest memory %#x is smaller than %#x", memSize, HighMemStart)
	}
	if memSize > maxIdentity {
		return CPUState{}, fmt.Errorf("long mode: cannot identity-map %#x bytes, at most %#x", memSize, uint64(maxIdentity))
	}
	if err := writePageTables(mem, max(memSize, identityMin)); err != nil {
		return CPUState{}, fmt.Errorf("long mode: page tables: %w", err)
	}
	if err := writeGuest(mem, GDTAddr, bootGDT()); err != nil {
		return CPUState{}, fmt.Errorf("long mode: GDT: %w", err)
	}
	code := Segment{Limit: 0xffffffff, Selector: BootCS, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := Segment{Limit: 0xffffffff, Selector: BootDS, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	return CPUState{
		CR0:    CR0PE | CR0ET | CR0NE | CR0PG,
		CR3:    PML4Addr,
		CR4:    CR4PAE,
		EFER:   EFERLME | EFERLMA,
		CS:     code,
		DS:     data,
		ES:     data,
		SS:     data,
		FS:     data,
		GS:     data,
		TR:     Segment{Limit: tssLimit, Selector: BootTSS, Type: 0xb, Present: 1},
		LDT:    Segment{Type: 0x2, Unusable: 1},
		GDT:    DescriptorTable{Base: GDTAddr, Limit: gdtEntries*8 - 1},
		IDT:    DescriptorTable{},
		RSI:    ZeroPageAddr,
		RSP:    BootStackTop,
		RFLAGS: RFLAGSReserved,
	}, nil
}

// writePageTables writes the PML4, the PDPT and the page directories that
// identity-map [0, size).
func writePageTables(mem io.WriterAt, size uint64) error {
	le := binary.LittleEndian
	pml4 := make([]byte, pageSize)
	le.PutUint64(pml4, pdptAddr|ptePresent|pteWritable)
	if err := writeGuest(mem, PML4Addr, pml4); err != nil {
		return err
	}
	pdpt := make([]byte, pageSize)
	gibs := (size + gib - 1) / gib
	for i := uint64(0); i < gibs; i++ {
		if i < lowPDs {
			le.PutUint64(pdpt[i*8:], (pdAddr+i*pageSize)|ptePresent|pteWritable)
		} else {
			le.PutUint64(pdpt[i*8:], i*gib|ptePresent|pteWritable|ptePageSize)
		}
	}
	if err := writeGuest(mem, pdptAddr, pdpt); err != nil {
		return err
	}
	pds := make([]byte, lowPDs*pageSize)
	for i := uint64(0); i < lowPDs*512; i++ {
		le.PutUint64(pds[i*8:], i*2*mib|ptePresent|pteWritable|ptePageSize)
	}
	return writeGuest(mem, pdAddr, pds)
}

// bootGDT returns the boot GDT's bytes.
func bootGDT() []byte {
	le := binary.LittleEndian
	gdt := make([]byte, gdtEntries*8)
	// Flat 64-bit code: limit 0xfffff, access 0x9b (present, ring 0,
	// code, execute/read, accessed), flags 0xa (G, L).
	le.PutUint64(gdt[BootCS:], 0x00af9b000000ffff)
	// Flat data: access 0x93 (present, ring 0, data, read/write,
	// accessed), flags 0xc (G, D/B).
	le.PutUint64(gdt[BootDS:], 0x00cf93000000ffff)
	// 64-bit TSS, base 0, limit 0x67, access 0x8b (present, busy TSS).
	le.PutUint64(gdt[BootTSS:], tssLimit|0x8b<<40)
	le.PutUint64(gdt[BootTSS+8:], 0)
	return gdt
}
