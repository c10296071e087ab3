package kvm

import (
	"encoding/binary"
	"testing"
)

// mov rax,[rbx]; mov dx,0x12; out dx,eax; mov dword [rbx],0x55;
// mov rax,[rbx]; out dx,eax; ud2
var codeReadWriteData = []byte{
	0x48, 0x8b, 0x03,
	0x66, 0xba, 0x12, 0x00, 0xef,
	0xc7, 0x03, 0x55, 0x00, 0x00, 0x00,
	0x48, 0x8b, 0x03,
	0xef,
	0x0f, 0x0b,
}

func TestReadonlyAndDeletedSlots(t *testing.T) {
	sys := openKVM(t)
	if !sys.HasCapability(CapReadonlyMem) {
		t.Skip("host lacks KVM_CAP_READONLY_MEM")
	}
	g := newGuest(t, sys, guestConfig{code: codeReadWriteData})
	binary.LittleEndian.PutUint64(g.mem[guestData:], 0x77)
	// Flags other than dirty logging cannot change in place: re-create the slot.
	if err := g.vm.DeleteMemoryRegion(1); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.SetUserMemoryRegion(1, guestData, g.mem[lowSlotSize:], MemReadonly); err != nil {
		t.Fatal(err)
	}
	io := expectIO(t, g.vcpu, 0x12, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0x77 {
		t.Fatalf("guest read %#x from read-only memory, want 0x77", got)
	}
	e := runExit(t, g.vcpu)
	if e.Reason != ExitMMIO || !e.MMIO.IsWrite || e.MMIO.Addr != guestData || len(e.MMIO.Data) != 4 ||
		binary.LittleEndian.Uint32(e.MMIO.Data) != 0x55 {
		t.Fatalf("write to read-only slot: exit %s %+v, want 4-byte MMIO write of 0x55 at %#x", e.Reason, e.MMIO, guestData)
	}
	if got := binary.LittleEndian.Uint64(g.mem[guestData:]); got != 0x77 {
		t.Errorf("read-only memory changed to %#x", got)
	}
	// Without the slot, the next read is MMIO too.
	if err := g.vm.DeleteMemoryRegion(1); err != nil {
		t.Fatal(err)
	}
	e = runExit(t, g.vcpu)
	if e.Reason != ExitMMIO || e.MMIO.IsWrite || e.MMIO.Addr != guestData || len(e.MMIO.Data) != 8 {
		t.Fatalf("read of deleted slot: exit %s %+v, want 8-byte MMIO read at %#x", e.Reason, e.MMIO, guestData)
	}
	binary.LittleEndian.PutUint64(e.MMIO.Data, 0x99)
	io = expectIO(t, g.vcpu, 0x12, IOOut, 4)
	if got := binary.LittleEndian.Uint32(io.Data); got != 0x99 {
		t.Fatalf("guest read %#x from the deleted slot, want the MMIO value 0x99", got)
	}
	if err := g.vm.DeleteMemoryRegion(1); err == nil {
		t.Error("deleting a deleted slot succeeded")
	}
	if err := g.vm.SetUserMemoryRegion(2, 0x200000, g.mem[1:4097], 0); err == nil {
		t.Error("unaligned memory accepted")
	}
}

func TestIRQLineReachesPIC(t *testing.T) {
	sys := openKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(3, true); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(3, false); err != nil {
		t.Fatal(err)
	}
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.PICMaster.IRR&(1<<3) == 0 {
		t.Errorf("PIC master IRR %#x after an edge on IRQ 3, want bit 3", st.PICMaster.IRR)
	}
	if st.PICSlave.IRR != 0 {
		t.Errorf("PIC slave IRR %#x, want 0", st.PICSlave.IRR)
	}
	if st.IOAPIC.BaseAddress != 0xfec00000 {
		t.Errorf("IOAPIC base %#x, want 0xfec00000", st.IOAPIC.BaseAddress)
	}
}
