package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Offsets of setup header fields, relative to the start of the kernel image
// and of boot_params alike (Linux Documentation/arch/x86/boot.rst).
const (
	hdrStart           = 0x1f1
	offSetupSects      = 0x1f1
	offSyssize         = 0x1f4
	offVidMode         = 0x1fa
	offBootFlag        = 0x1fe
	offJump            = 0x200
	offHeader          = 0x202
	offVersion         = 0x206
	offTypeOfLoader    = 0x210
	offLoadflags       = 0x211
	offHeapEndPtr      = 0x224
	offRamdiskImage    = 0x218
	offRamdiskSize     = 0x21c
	offCmdLinePtr      = 0x228
	offInitrdAddrMax   = 0x22c
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offMinAlignment    = 0x235
	offXloadflags      = 0x236
	offCmdlineSize     = 0x238
	offPrefAddress     = 0x258
	offInitSize        = 0x260
	// maxHeaderEnd bounds the setup header: it must end before the E820
	// table area of boot_params (edd_mbr_sig_buffer starts at 0x290).
	maxHeaderEnd = 0x290
)

// Setup header constants.
const (
	bootFlagMagic   = 0xaa55
	headerMagic     = 0x53726448 // "HdrS"
	minVersion      = 0x0206
	xloadVersion    = 0x020c // xloadflags appeared in protocol 2.12
	prefAddrVersion = 0x020a // pref_address and init_size appeared in 2.10

	// LoadflagLoadedHigh (LOADED_HIGH) means the protected-mode code is
	// loaded at 1 MiB or above.
	LoadflagLoadedHigh = 1 << 0
	// LoadflagCanUseHeap (CAN_USE_HEAP) means heap_end_ptr is valid.
	LoadflagCanUseHeap = 1 << 7
	// XLFKernel64 (XLF_KERNEL_64) means the kernel has the 64-bit entry
	// at load address + 0x200.
	XLFKernel64 = 1 << 0
	// XLFCanBeLoadedAbove4G (XLF_CAN_BE_LOADED_ABOVE_4G) means kernel,
	// boot_params, command line and initrd may live above 4 GiB.
	XLFCanBeLoadedAbove4G = 1 << 1

	// entry64Offset is the offset of the 64-bit entry from the load address.
	entry64Offset = 0x200
	// TypeOfLoaderUndefined is the type_of_loader value for a boot loader
	// without an assigned id.
	TypeOfLoaderUndefined = 0xff
)

// SetupHeader is the parsed Linux setup header of a bzImage.
type SetupHeader struct {
	// Raw is the header as found in the image, from offset 0x1f1 up to
	// 0x202 + the byte at 0x201, to be copied into boot_params.
	Raw             []byte
	SetupSects      uint8  // 512-byte setup sectors (0 in the file means 4)
	Syssize         uint32 // protected-mode code size in 16-byte units
	Version         uint16 // boot protocol version, e.g. 0x020f
	Loadflags       uint8
	InitrdAddrMax   uint32 // highest address the initrd may occupy
	KernelAlignment uint32
	Relocatable     bool
	MinAlignment    uint8 // log2 of the minimum alignment
	Xloadflags      uint16
	CmdlineSize     uint32 // longest command line without its NUL
	PrefAddress     uint64
	InitSize        uint32 // memory the kernel needs from its load address
}

// Has64BitEntry reports whether the kernel has the 64-bit entry point.
func (h *SetupHeader) Has64BitEntry() bool {
	return h.Version >= xloadVersion && h.Xloadflags&XLFKernel64 != 0
}

// ParseSetupHeader reads and validates the setup header of a bzImage:
// boot_flag 0xAA55, "HdrS" magic and protocol version 2.06 or newer.
func ParseSetupHeader(kernel io.ReaderAt) (*SetupHeader, error) {
	var b [offHeader + 4]byte
	if err := readFull(kernel, b[:], 0); err != nil {
		return nil, fmt.Errorf("bzImage boot sector: %w", err)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[offHeader:]); m != headerMagic {
		return nil, fmt.Errorf("bzImage: header magic %#x at 0x202, want %#x (\"HdrS\"): not a Linux bzImage", m, headerMagic)
	}
	if f := le.Uint16(b[offBootFlag:]); f != bootFlagMagic {
		return nil, fmt.Errorf("bzImage: boot_flag %#x, want %#x", f, bootFlagMagic)
	}
	end := uint64(offHeader) + uint64(b[offJump+1])
	if end < offCmdlineSize+4 || end > maxHeaderEnd {
		// A protocol 2.06 header reaches at least cmdline_size.
		return nil, fmt.Errorf("bzImage: setup header ends at %#x, want %#x..%#x", end, offCmdlineSize+4, maxHeaderEnd)
	}
	raw := make([]byte, end-hdrStart)
	if err := readFull(kernel, raw, hdrStart); err != nil {
		return nil, fmt.Errorf("bzImage setup header: %w", err)
	}
	// at returns the header bytes from off; fields past the end of a
	// shorter (older) header read as zero.
	at := func(off int) []byte {
		var field [8]byte
		if i := off - hdrStart; i < len(raw) {
			copy(field[:], raw[i:])
		}
		return field[:]
	}
	h := &SetupHeader{
		Raw:             raw,
		SetupSects:      at(offSetupSects)[0],
		Syssize:         le.Uint32(at(offSyssize)),
		Version:         le.Uint16(at(offVersion)),
		Loadflags:       at(offLoadflags)[0],
		InitrdAddrMax:   le.Uint32(at(offInitrdAddrMax)),
		KernelAlignment: le.Uint32(at(offKernelAlignment)),
		Relocatable:     at(offRelocatable)[0] != 0,
		MinAlignment:    at(offMinAlignment)[0],
		Xloadflags:      le.Uint16(at(offXloadflags)),
		CmdlineSize:     le.Uint32(at(offCmdlineSize)),
		PrefAddress:     le.Uint64(at(offPrefAddress)),
		InitSize:        le.Uint32(at(offInitSize)),
	}
	if h.SetupSects == 0 {
		h.SetupSects = 4
	}
	if h.Version < minVersion {
		return nil, fmt.Errorf("bzImage: boot protocol %d.%02d, need 2.06 or newer", h.Version>>8, h.Version&0xff)
	}
	if h.Loadflags&LoadflagLoadedHigh == 0 {
		return nil, errors.New("bzImage: LOADED_HIGH not set (zImage kernels are not supported)")
	}
	return h, nil
}

// BzImage describes a bzImage loaded into guest memory.
type BzImage struct {
	// Header is the parsed setup header; Header.Raw goes into boot_params.
	Header *SetupHeader
	// LoadAddr is where the protected-mode kernel was loaded.
	LoadAddr uint64
	// Entry is the 64-bit entry point (LoadAddr + 0x200).
	Entry uint64
	// End is the first byte above the memory the kernel claims: the
	// larger of the loaded code and init_size from LoadAddr.
	End uint64
}

// LoadBzImage loads the protected-mode part of a Linux bzImage into guest
// memory for a 64-bit entry. The header must carry boot protocol 2.12+ with
// XLF_KERNEL_64. The load address is pref_address (protocol 2.10+) when it
// is set and suitably aligned, otherwise 1 MiB rounded up to
// kernel_alignment for a relocatable kernel, otherwise 1 MiB. loadAddr, when
// nonzero, overrides that choice; it must be a multiple of kernel_alignment
// for a relocatable kernel and equal the preferred address otherwise. The
// kernel plus init_size must fit below memSize.
func LoadBzImage(kernel io.ReaderAt, mem io.WriterAt, memSize uint64, loadAddr uint64) (*BzImage, error) {
	h, err := ParseSetupHeader(kernel)
	if err != nil {
		return nil, err
	}
	if !h.Has64BitEntry() {
		return nil, fmt.Errorf("bzImage: no 64-bit entry point (protocol %d.%02d, xloadflags %#x; need 2.12+ with XLF_KERNEL_64)", h.Version>>8, h.Version&0xff, h.Xloadflags)
	}
	preferred := uint64(KernelAddr)
	if h.Version >= prefAddrVersion && h.PrefAddress != 0 {
		preferred = h.PrefAddress
	}
	align := uint64(h.KernelAlignment)
	if h.Relocatable {
		if align == 0 || align&(align-1) != 0 {
			return nil, fmt.Errorf("bzImage: kernel_alignment %#x is not a power of two", align)
		}
		if preferred%align != 0 {
			preferred = (uint64(KernelAddr) + align - 1) &^ (align - 1)
		}
	}
	addr := preferred
	if loadAddr != 0 {
		switch {
		case h.Relocatable && loadAddr%align != 0:
			return nil, fmt.Errorf("bzImage: load address %#x is not a multiple of kernel_alignment %#x", loadAddr, align)
		case !h.Relocatable && loadAddr != preferred:
			return nil, fmt.Errorf("bzImage: kernel is not relocatable; it must be loaded at %#x, not %#x", preferred, loadAddr)
		}
		addr = loadAddr
	}
	if addr < HighMemStart {
		return nil, fmt.Errorf("bzImage: load address %#x is below %#x", addr, HighMemStart)
	}
	setupSize := (uint64(h.SetupSects) + 1) * 512
	codeSize := uint64(h.Syssize) * 16
	if codeSize == 0 {
		return nil, errors.New("bzImage: syssize is 0")
	}
	claim := max(codeSize, uint64(h.InitSize))
	if !rangeFits(addr, claim, memSize) {
		return nil, fmt.Errorf("bzImage: kernel at %#x needs %#x bytes (code %#x, init_size %#x), beyond guest RAM end %#x", addr, claim, codeSize, h.InitSize, memSize)
	}
	var last [1]byte
	if err := readFull(kernel, last[:], setupSize+codeSize-1); err != nil {
		return nil, fmt.Errorf("bzImage: protected-mode code (%#x bytes after %#x setup bytes) truncated: %w", codeSize, setupSize, err)
	}
	if err := copyToGuest(mem, addr, kernel, setupSize, codeSize); err != nil {
		return nil, fmt.Errorf("bzImage: load kernel: %w", err)
	}
	return &BzImage{Header: h, LoadAddr: addr, Entry: addr + entry64Offset, End: addr + claim}, nil
}
