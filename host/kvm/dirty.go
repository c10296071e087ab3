package kvm

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Dirty page logging.
//
// A slot logs the pages the guest writes once it is (re)registered with
// MemLogDirtyPages. Bit i of a bitmap (bit i%64 of word i/64) stands for page
// i of the slot, i.e. guest-physical address gpa+i*4096. Only guest writes
// through KVM's page tables are logged: writes the VMM makes through its own
// mapping of the memory are not, and must be tracked by the VMM.
//
// Without manual protection, GetDirtyLog returns the pages dirtied since the
// previous GetDirtyLog (or since logging started) and atomically clears the
// log and write-protects those pages again.
//
// With manual protection (ManualDirtyLogProtect reports true; CreateVM
// enables it whenever the host has CapManualDirtyLogProtect2, without
// KVM_DIRTY_LOG_INITIALLY_SET so new slots start clean), GetDirtyLog only
// reads: it returns the pages dirtied since their bit was last cleared with
// ClearDirtyLog (or since logging started), and the bits stay set. Clearing
// re-protects exactly the pages whose bits are cleared; a page written after
// its bit was cleared is reported again. The migration loop is therefore
// get, clear the bits fetched, copy those pages.

// DirtyBitmapWords returns the number of 64-bit words a dirty bitmap for a
// slot of size bytes needs.
func DirtyBitmapWords(size uint64) int {
	pages := (size + pageSize - 1) / pageSize
	return int((pages + 63) / 64)
}

// ManualDirtyLogProtect reports whether the VM uses manual dirty-log
// protection, i.e. whether ClearDirtyLog is available and GetDirtyLog leaves
// the log set.
func (vm *VM) ManualDirtyLogProtect() bool { return vm.manualDirtyProtect }

// slotPages returns the number of pages of slot and checks that it logs.
func (vm *VM) slotPages(slot uint32) (uint64, error) {
	vm.mu.Lock()
	s, ok := vm.slots[slot]
	vm.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("memory slot %d: no such slot", slot)
	}
	if s.flags&MemLogDirtyPages == 0 {
		return 0, fmt.Errorf("memory slot %d: dirty logging is off", slot)
	}
	return uint64(len(s.mem)) / pageSize, nil
}

// GetDirtyLog fills bitmap with the dirty log of slot (KVM_GET_DIRTY_LOG);
// see the semantics above. bitmap needs DirtyBitmapWords(slot size) words.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	pages, err := vm.slotPages(slot)
	if err != nil {
		return err
	}
	if need := int((pages + 63) / 64); len(bitmap) < need {
		return fmt.Errorf("dirty log of slot %d: bitmap has %d words, need %d", slot, len(bitmap), need)
	}
	arg := dirtyLog{Slot: slot, Bitmap: uintptr(unsafe.Pointer(&bitmap[0]))}
	_, err = ioctlPtr(vm.fd, ioctlGetDirtyLog, unsafe.Pointer(&arg))
	runtime.KeepAlive(bitmap)
	if err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): %w", slot, err)
	}
	return nil
}

// ClearDirtyLog clears the dirty bits of pages [first, first+num) of slot
// whose bits are set in bitmap, and write-protects those pages again
// (KVM_CLEAR_DIRTY_LOG; needs ManualDirtyLogProtect). Bit 0 of bitmap stands
// for page first. first must be a multiple of 64, and num too unless the
// range ends at the end of the slot.
func (vm *VM) ClearDirtyLog(slot uint32, first uint64, num uint32, bitmap []uint64) error {
	if !vm.manualDirtyProtect {
		return fmt.Errorf("clear dirty log of slot %d: manual dirty-log protection is not enabled", slot)
	}
	pages, err := vm.slotPages(slot)
	if err != nil {
		return err
	}
	if num == 0 {
		return nil
	}
	if first%64 != 0 || first >= pages || uint64(num) > pages-first ||
		(num%64 != 0 && first+uint64(num) != pages) {
		return fmt.Errorf("clear dirty log of slot %d: range [%d, +%d) invalid for %d pages", slot, first, num, pages)
	}
	if need := (int(num) + 63) / 64; len(bitmap) < need {
		return fmt.Errorf("clear dirty log of slot %d: bitmap has %d words, need %d", slot, len(bitmap), need)
	}
	arg := clearDirtyLog{Slot: slot, NumPages: num, FirstPage: first, Bitmap: uintptr(unsafe.Pointer(&bitmap[0]))}
	_, err = ioctlPtr(vm.fd, ioctlClearDirtyLog, unsafe.Pointer(&arg))
	runtime.KeepAlive(bitmap)
	if err != nil {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG(slot %d, first %d, num %d): %w", slot, first, num, err)
	}
	return nil
}
