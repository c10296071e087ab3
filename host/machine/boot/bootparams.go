package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Offsets in boot_params (the zero page) outside the setup header
// (Linux Documentation/arch/x86/zero-page.rst).
const (
	// ZeroPageSize is the size of boot_params.
	ZeroPageSize       = 0x1000
	offACPIRSDPAddr    = 0x070
	offExtRamdiskImage = 0x0c0
	offExtRamdiskSize  = 0x0c4
	offExtCmdLinePtr   = 0x0c8
	offE820Entries     = 0x1e8
	offE820Table       = 0x2d0
	e820EntrySize      = 20

	// SyntheticProtocolVersion is the boot protocol version written in
	// the synthetic setup header used for ELF kernels.
	SyntheticProtocolVersion = 0x020f
	// SyntheticCmdlineSize is the cmdline_size of the synthetic header:
	// Linux x86's COMMAND_LINE_SIZE (2048) minus the NUL.
	SyntheticCmdlineSize = 2047
	// SyntheticKernelAlignment is the kernel_alignment of the synthetic
	// header (2 MiB).
	SyntheticKernelAlignment = 0x200000
	// heapEndPtr is the heap_end_ptr given with CAN_USE_HEAP: the end of
	// the real-mode heap relative to the setup code (unused by a 64-bit
	// entry, but set as boot.rst asks of a loader that sets CAN_USE_HEAP).
	heapEndPtr = 0xfe00
)

// BootParamsConfig is what goes into the zero page.
type BootParamsConfig struct {
	// Header is the setup header of a bzImage (SetupHeader.Raw); nil means
	// an ELF kernel, for which a synthetic header is built.
	Header []byte
	// CmdlineAddr is the guest address of the NUL-terminated command line
	// (normally CmdlineAddr).
	CmdlineAddr uint64
	// Cmdline is the command line; its length is checked against the
	// header's cmdline_size.
	Cmdline string
	// InitrdAddr and InitrdSize locate the initrd; zero size means none.
	InitrdAddr, InitrdSize uint64
	// E820 is the memory map (at most MaxE820Entries entries).
	E820 []E820Entry
	// RSDPAddr is the ACPI RSDP address (acpi_rsdp_addr); zero leaves it
	// to the kernel's legacy scan.
	RSDPAddr uint64
}

// BootParams builds the 4 KiB zero page: the setup header (copied from the
// bzImage, or synthetic for ELF kernels: boot_flag 0xAA55, "HdrS", version
// 2.15, type_of_loader 0xff, LOADED_HIGH|CAN_USE_HEAP, cmdline_size 2047,
// kernel_alignment 2 MiB), the command line pointer (with ext_cmd_line_ptr
// for the high half), the initrd (ramdisk_image/size plus the ext_ fields
// above 4 GiB), the E820 table and acpi_rsdp_addr. A command line longer
// than cmdline_size or a memory map of more than 128 entries is an error.
func BootParams(cfg BootParamsConfig) ([]byte, error) {
	zp := make([]byte, ZeroPageSize)
	le := binary.LittleEndian
	if cfg.Header != nil {
		if len(cfg.Header) < offCmdlineSize+4-hdrStart || hdrStart+len(cfg.Header) > maxHeaderEnd {
			return nil, fmt.Errorf("boot_params: setup header of %d bytes, want %d..%d", len(cfg.Header), offCmdlineSize+4-hdrStart, maxHeaderEnd-hdrStart)
		}
		if le.Uint32(cfg.Header[offHeader-hdrStart:]) != headerMagic {
			return nil, errors.New("boot_params: setup header lacks the \"HdrS\" magic")
		}
		copy(zp[hdrStart:], cfg.Header)
	} else {
		le.PutUint16(zp[offBootFlag:], bootFlagMagic)
		// A two-byte short jump over the header, as in a real image: its
		// displacement gives the header's end (0x202 + zp[0x201]).
		zp[offJump] = 0xeb
		zp[offJump+1] = byte(offInitSize + 4 + 8 - offHeader)
		le.PutUint32(zp[offHeader:], headerMagic)
		le.PutUint16(zp[offVersion:], SyntheticProtocolVersion)
		le.PutUint32(zp[offKernelAlignment:], SyntheticKernelAlignment)
		le.PutUint32(zp[offCmdlineSize:], SyntheticCmdlineSize)
		le.PutUint32(zp[offInitrdAddrMax:], DefaultInitrdAddrMax)
		le.PutUint16(zp[offXloadflags:], XLFKernel64|XLFCanBeLoadedAbove4G)
		le.PutUint16(zp[offVidMode:], 0xffff) // "normal"
	}
	zp[offTypeOfLoader] = TypeOfLoaderUndefined
	zp[offLoadflags] |= LoadflagLoadedHigh | LoadflagCanUseHeap
	le.PutUint16(zp[offHeapEndPtr:], heapEndPtr)

	maxCmdline := le.Uint32(zp[offCmdlineSize:])
	if uint64(len(cfg.Cmdline)) > uint64(maxCmdline) {
		return nil, fmt.Errorf("boot_params: command line of %d bytes exceeds the kernel's cmdline_size %d", len(cfg.Cmdline), maxCmdline)
	}
	if strings.IndexByte(cfg.Cmdline, 0) >= 0 {
		return nil, errors.New("boot_params: command line contains a NUL byte")
	}
	if cfg.CmdlineAddr == 0 {
		return nil, errors.New("boot_params: command line address is 0")
	}
	le.PutUint32(zp[offCmdLinePtr:], uint32(cfg.CmdlineAddr))
	le.PutUint32(zp[offExtCmdLinePtr:], uint32(cfg.CmdlineAddr>>32))

	if cfg.InitrdSize > 0 {
		if cfg.InitrdAddr == 0 {
			return nil, errors.New("boot_params: initrd address is 0")
		}
		le.PutUint32(zp[offRamdiskImage:], uint32(cfg.InitrdAddr))
		le.PutUint32(zp[offExtRamdiskImage:], uint32(cfg.InitrdAddr>>32))
		le.PutUint32(zp[offRamdiskSize:], uint32(cfg.InitrdSize))
		le.PutUint32(zp[offExtRamdiskSize:], uint32(cfg.InitrdSize>>32))
	}

	if err := ValidateE820(cfg.E820); err != nil {
		return nil, fmt.Errorf("boot_params: %w", err)
	}
	zp[offE820Entries] = byte(len(cfg.E820))
	for i, e := range cfg.E820 {
		p := zp[offE820Table+i*e820EntrySize:]
		le.PutUint64(p[0:], e.Addr)
		le.PutUint64(p[8:], e.Size)
		le.PutUint32(p[16:], uint32(e.Type))
	}
	le.PutUint64(zp[offACPIRSDPAddr:], cfg.RSDPAddr)
	return zp, nil
}

// WriteBootParams builds the zero page with BootParams and writes it at
// zeroPage, and the NUL-terminated command line at cfg.CmdlineAddr.
func WriteBootParams(mem io.WriterAt, zeroPage uint64, cfg BootParamsConfig) error {
	zp, err := BootParams(cfg)
	if err != nil {
		return err
	}
	if uint64(len(cfg.Cmdline))+1 > CmdlineMaxSize {
		return fmt.Errorf("boot_params: command line of %d bytes exceeds the %d bytes reserved for it", len(cfg.Cmdline), CmdlineMaxSize-1)
	}
	if err := writeGuest(mem, cfg.CmdlineAddr, append([]byte(cfg.Cmdline), 0)); err != nil {
		return fmt.Errorf("boot_params: command line: %w", err)
	}
	if err := writeGuest(mem, zeroPage, zp); err != nil {
		return fmt.Errorf("boot_params: zero page: %w", err)
	}
	return nil
}
