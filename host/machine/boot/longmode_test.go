package boot

import (
	"encoding/binary"
	"testing"
)

// translate walks the 4-level page tables in guest memory the way the MMU
// does and returns the physical address for a linear address.
func translate(t *testing.T, mem *guestRAM, cr3, va uint64) (uint64, bool) {
	t.Helper()
	le := binary.LittleEndian
	table := cr3 &^ 0xfff
	for level := 3; level >= 0; level-- {
		idx := (va >> (12 + 9*uint(level))) & 0x1ff
		e := le.Uint64(mem.b[table+idx*8:])
		if e&ptePresent == 0 {
			return 0, false
		}
		if e&pteWritable == 0 {
			t.Errorf("va %#x: level %d entry %#x not writable", va, level, e)
		}
		if (level == 1 || level == 2) && e&ptePageSize != 0 {
			pageMask := uint64(1)<<(12+9*uint(level)) - 1
			return (e &^ 0xfff & 0x000fffffffffffff &^ pageMask) | va&pageMask, true
		}
		table = e & 0x000ffffffffff000
	}
	return table | va&0xfff, true
}

// decodeDescriptor reads a code/data GDT descriptor into a Segment.
func decodeDescriptor(d uint64, sel uint16) Segment {
	limit := uint32(d&0xffff | (d>>48&0xf)<<16)
	g := uint8(d >> 55 & 1)
	if g == 1 {
		limit = limit<<12 | 0xfff
	}
	return Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    limit,
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        g,
	}
}

func TestSetupLongMode(t *testing.T) {
	for _, size := range []uint64{16 << 20, 6 << 30} {
		mem := newGuestRAM(t, 1<<20)
		st, err := SetupLongMode(mem, size)
		if err != nil {
			t.Fatalf("memSize %#x: %v", size, err)
		}
		if st.CR3 != PML4Addr || st.CR0&(CR0PE|CR0PG) != CR0PE|CR0PG || st.CR4&CR4PAE == 0 || st.EFER&(EFERLME|EFERLMA) != EFERLME|EFERLMA {
			t.Errorf("control registers %#x %#x %#x %#x", st.CR0, st.CR3, st.CR4, st.EFER)
		}
		if st.RSI != ZeroPageAddr || st.RFLAGS != 2 || st.RSP != BootStackTop {
			t.Errorf("RSI %#x RFLAGS %#x RSP %#x", st.RSI, st.RFLAGS, st.RSP)
		}
		mapped := max(size, 4<<30)
		for _, va := range []uint64{0, 0x7000, 0x100000, 0x1234567, 0xbfffffff, 0xd0000000, 0xfee00000, 0xffffffff, mapped - 1} {
			pa, ok := translate(t, mem, st.CR3, va)
			if !ok || pa != va {
				t.Errorf("memSize %#x: va %#x -> %#x, %v; want identity", size, va, pa, ok)
			}
		}
		if _, ok := translate(t, mem, st.CR3, (mapped+1<<30-1)&^(1<<30-1)); ok {
			t.Errorf("memSize %#x: address beyond the mapped range is present", size)
		}
		le := binary.LittleEndian
		gdt := mem.b[st.GDT.Base : st.GDT.Base+uint64(st.GDT.Limit)+1]
		if st.GDT.Base != GDTAddr || st.GDT.Limit != 47 {
			t.Errorf("GDTR %+v", st.GDT)
		}
		for _, seg := range []Segment{st.CS, st.DS, st.ES, st.SS, st.FS, st.GS} {
			got := decodeDescriptor(le.Uint64(gdt[seg.Selector:]), seg.Selector)
			if got != seg {
				t.Errorf("selector %#x: GDT says %+v, state says %+v", seg.Selector, got, seg)
			}
		}
		if st.CS.Selector != 0x10 || st.CS.L != 1 || st.CS.DB != 0 || st.DS.Selector != 0x18 {
			t.Errorf("CS %+v DS %+v: want __BOOT_CS 0x10 (64-bit) and __BOOT_DS 0x18", st.CS, st.DS)
		}
		tss := le.Uint64(gdt[st.TR.Selector:])
		if tss>>40&0xf != uint64(st.TR.Type) || tss&0xffff != uint64(st.TR.Limit) || tss>>47&1 != 1 {
			t.Errorf("TSS descriptor %#x does not match TR %+v", tss, st.TR)
		}
	}
	if _, err := SetupLongMode(newGuestRAM(t, 1<<20), 1<<40); err == nil {
		t.Error("1 TiB accepted")
	}
}
