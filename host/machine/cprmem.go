package machine

import (
	"fmt"

	"golang.org/x/sys/unix"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine/boot"
	"wasmvmm/host/machine/config"
)

// RAMBlock is one guest RAM block a configuration asks for.
type RAMBlock struct {
	Name string
	GPA  uint64
	Size uint64
}

// RAMLayout lists the RAM blocks New creates for vm: below the 32-bit MMIO
// hole ("ram-low") and from 4 GiB ("ram-high").
func RAMLayout(vm *config.VM) []RAMBlock {
	size := uint64(vm.Machine.Memory)
	if size == 0 {
		size = 256 << 20
	}
	l := boot.MemoryLayout{RAMSize: size}
	out := []RAMBlock{{Name: "ram-low", GPA: 0, Size: l.LowRAMEnd()}}
	if hi := l.HighRAMSize(); hi > 0 {
		out = append(out, RAMBlock{Name: "ram-high", GPA: boot.MMIOHoleEnd, Size: hi})
	}
	return out
}

// AdoptRAM builds vm's guest RAM over memfds another process shares
// (cpr-transfer): take returns the descriptor received for a block name,
// which the block then owns. Every block of the layout must be there with
// exactly its size; the result goes into Config.Memory.
func AdoptRAM(vm *config.VM, take func(name string) (int, bool)) (*guestmem.Memory, error) {
	var blocks []*guestmem.Block
	fail := func(err error) (*guestmem.Memory, error) {
		for _, b := range blocks {
			b.Close()
		}
		return nil, err
	}
	for _, rb := range RAMLayout(vm) {
		fd, ok := take(rb.Name)
		if !ok {
			return fail(fmt.Errorf("adopt RAM: the source sent no memfd for block %s (%d MiB)", rb.Name, rb.Size>>20))
		}
		b, err := guestmem.AdoptFD(rb.Name, rb.GPA, fd)
		if err != nil {
			unix.Close(fd)
			return fail(err)
		}
		blocks = append(blocks, b)
		if b.Size() != rb.Size {
			return fail(fmt.Errorf("adopt RAM: block %s is %d bytes on the source, %d in this configuration", rb.Name, b.Size(), rb.Size))
		}
	}
	mem, err := guestmem.New(blocks...)
	if err != nil {
		return fail(err)
	}
	return mem, nil
}
