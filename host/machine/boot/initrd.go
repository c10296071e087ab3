package boot

import (
	"fmt"
	"io"
)

// DefaultInitrdAddrMax is the initrd_addr_max used when the kernel gives
// none (ELF kernels; protocol 2.02 and older used 0x37ffffff, x86-64 kernels
// announce 0x7fffffff).
const DefaultInitrdAddrMax = 0x7fffffff

// PlaceInitrd chooses where an initrd of size bytes goes: the highest
// page-aligned address such that the initrd lies above minAddr (typically
// the kernel's end), ends at or below addrMax (the header's
// initrd_addr_max, the address of the last byte it may occupy; 0 means
// DefaultInitrdAddrMax) and ends at or below ramEnd (the end of the RAM
// below the MMIO hole).
func PlaceInitrd(size, minAddr, addrMax, ramEnd uint64) (uint64, error) {
	if size == 0 {
		return 0, fmt.Errorf("initrd: empty")
	}
	if addrMax == 0 {
		addrMax = DefaultInitrdAddrMax
	}
	limit := ramEnd // exclusive
	if addrMax < ^uint64(0) && addrMax+1 < limit {
		limit = addrMax + 1
	}
	if size > limit {
		return 0, fmt.Errorf("initrd: %#x bytes do not fit below %#x (RAM end %#x, initrd_addr_max %#x)", size, limit, ramEnd, addrMax)
	}
	addr := (limit - size) &^ (pageSize - 1)
	lowest := (minAddr + pageSize - 1) &^ (pageSize - 1)
	if addr < lowest {
		return 0, fmt.Errorf("initrd: %#x bytes do not fit between %#x and %#x (RAM end %#x, initrd_addr_max %#x)", size, lowest, limit, ramEnd, addrMax)
	}
	return addr, nil
}

// LoadInitrd places an initrd of size bytes with PlaceInitrd and copies it
// from r into guest memory. It returns the guest address.
func LoadInitrd(r io.ReaderAt, size uint64, mem io.WriterAt, minAddr, addrMax, ramEnd uint64) (uint64, error) {
	addr, err := PlaceInitrd(size, minAddr, addrMax, ramEnd)
	if err != nil {
		return 0, err
	}
	if err := copyToGuest(mem, addr, r, 0, size); err != nil {
		return 0, fmt.Errorf("initrd: load %#x bytes at %#x: %w", size, addr, err)
	}
	return addr, nil
}
