package boot

import (
	"errors"
	"fmt"
)

// E820Type is the type of an E820 memory map entry.
type E820Type uint32

// E820 entry types.
const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
	E820ACPI     E820Type = 3
	E820NVS      E820Type = 4
	E820Unusable E820Type = 5
)

// MaxE820Entries is the capacity of the E820 table in boot_params.
const MaxE820Entries = 128

// E820Entry is one range of the BIOS memory map.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

// MemoryLayout describes a guest's RAM for the E820 map.
type MemoryLayout struct {
	// RAMSize is the total amount of guest RAM in bytes. RAM that does not
	// fit below the MMIO hole continues at 4 GiB.
	RAMSize uint64
	// HoleStart is the start of the 32-bit MMIO hole; zero means
	// MMIOHoleStart (3 GiB). The hole ends at 4 GiB.
	HoleStart uint64
}

// holeStart returns the effective start of the MMIO hole.
func (l MemoryLayout) holeStart() uint64 {
	if l.HoleStart == 0 {
		return MMIOHoleStart
	}
	return l.HoleStart
}

// LowRAMEnd is the end of the RAM below the MMIO hole.
func (l MemoryLayout) LowRAMEnd() uint64 {
	return min(l.RAMSize, l.holeStart())
}

// HighRAMSize is the amount of RAM placed above 4 GiB.
func (l MemoryLayout) HighRAMSize() uint64 {
	return l.RAMSize - l.LowRAMEnd()
}

// RAMEnd is the guest physical address one past the last RAM byte.
func (l MemoryLayout) RAMEnd() uint64 {
	if l.HighRAMSize() == 0 {
		return l.LowRAMEnd()
	}
	return MMIOHoleEnd + l.HighRAMSize()
}

// E820 builds the memory map for the layout:
//
//	[0, 0x9fc00)               RAM (conventional memory below 640 KiB - 1 KiB)
//	[0x9fc00, 1 MiB)           reserved (EBDA, VGA, option ROMs, BIOS, ACPI tables)
//	[1 MiB, min(RAM, hole))    RAM
//	[0xfec00000, 4 GiB)        reserved (IOAPIC, local APIC, BIOS flash)
//	[4 GiB, 4 GiB + rest)      RAM, when RAMSize exceeds the hole start
//
// The rest of the MMIO hole (where the virtio-mmio windows are) stays out of
// the map, so the kernel may claim it for devices.
func (l MemoryLayout) E820() ([]E820Entry, error) {
	hole := l.holeStart()
	if hole < HighMemStart || hole > PlatformReservedStart || hole%pageSize != 0 {
		return nil, fmt.Errorf("e820: MMIO hole start %#x must be page aligned within [%#x, %#x]", hole, HighMemStart, PlatformReservedStart)
	}
	if l.RAMSize <= HighMemStart {
		return nil, fmt.Errorf("e820: %#x bytes of RAM is too small, need more than %#x", l.RAMSize, HighMemStart)
	}
	if l.RAMSize-l.LowRAMEnd() > ^uint64(0)-MMIOHoleEnd {
		return nil, fmt.Errorf("e820: RAM size %#x overflows the address space", l.RAMSize)
	}
	m := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: HighMemStart - EBDAStart, Type: E820Reserved},
		{Addr: HighMemStart, Size: l.LowRAMEnd() - HighMemStart, Type: E820RAM},
		{Addr: PlatformReservedStart, Size: MMIOHoleEnd - PlatformReservedStart, Type: E820Reserved},
	}
	if hi := l.HighRAMSize(); hi > 0 {
		m = append(m, E820Entry{Addr: MMIOHoleEnd, Size: hi, Type: E820RAM})
	}
	return m, nil
}

// ValidateE820 checks that a memory map fits boot_params (at most
// MaxE820Entries entries), has no empty or wrapping entries, and that its
// entries do not overlap.
func ValidateE820(m []E820Entry) error {
	if len(m) == 0 {
		return errors.New("e820: empty memory map")
	}
	if len(m) > MaxE820Entries {
		return fmt.Errorf("e820: %d entries, boot_params holds at most %d", len(m), MaxE820Entries)
	}
	for i, e := range m {
		if e.Size == 0 {
			return fmt.Errorf("e820: entry %d at %#x is empty", i, e.Addr)
		}
		if e.Addr > ^uint64(0)-e.Size {
			return fmt.Errorf("e820: entry %d (%#x+%#x) wraps around", i, e.Addr, e.Size)
		}
		for j := 0; j < i; j++ {
			o := m[j]
			if e.Addr < o.Addr+o.Size && o.Addr < e.Addr+e.Size {
				return fmt.Errorf("e820: entries %d (%#x+%#x) and %d (%#x+%#x) overlap", j, o.Addr, o.Size, i, e.Addr, e.Size)
			}
		}
	}
	return nil
}
