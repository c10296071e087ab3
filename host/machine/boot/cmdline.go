package boot

import (
	"fmt"
	"strings"
)

// VirtioMMIODevice is one virtio-mmio transport window and its interrupt.
type VirtioMMIODevice struct {
	Base uint64 // guest physical address of the register window
	Size uint64 // size of the window in bytes
	IRQ  uint32 // GSI the device raises
}

// VirtioMMIOCmdline formats the kernel command-line parameters that make
// Linux's virtio_mmio driver probe devs without firmware tables, one
// "virtio_mmio.device=<size>@<base>:<irq>" per device, separated by spaces.
// The kernel parses <size> with memparse (so a K or M suffix is allowed)
// and <base> as a C integer; sizes that are whole KiB or MiB are written
// with a suffix (4K, 1M), others in decimal (512), bases in hex. Sizes and
// IRQs of 0 are rejected because the kernel rejects them too.
func VirtioMMIOCmdline(devs []VirtioMMIODevice) (string, error) {
	parts := make([]string, 0, len(devs))
	for i, d := range devs {
		if d.Size == 0 {
			return "", fmt.Errorf("virtio-mmio device %d at %#x: size is 0", i, d.Base)
		}
		if d.IRQ == 0 {
			return "", fmt.Errorf("virtio-mmio device %d at %#x: IRQ is 0", i, d.Base)
		}
		if d.Base > ^uint64(0)-d.Size {
			return "", fmt.Errorf("virtio-mmio device %d: window %#x+%#x wraps around", i, d.Base, d.Size)
		}
		parts = append(parts, fmt.Sprintf("virtio_mmio.device=%s@%#x:%d", memSize(d.Size), d.Base, d.IRQ))
	}
	return strings.Join(parts, " "), nil
}

// memSize writes a byte count the way memparse reads it.
func memSize(n uint64) string {
	switch {
	case n%mib == 0:
		return fmt.Sprintf("%dM", n/mib)
	case n%1024 == 0:
		return fmt.Sprintf("%dK", n/1024)
	default:
		return fmt.Sprintf("%d", n)
	}
}
