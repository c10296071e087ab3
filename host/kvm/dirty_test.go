package kvm

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// mov rdi,0x100000; mov ecx,16; 1: mov [rdi],rcx; add rdi,0x3000; dec ecx;
// jnz 1b; mov dx,0x40; out dx,al; mov rdi,0x100000; mov [rdi+0x6000],rax;
// out dx,al; ud2
var codeDirty = []byte{
	0x48, 0xc7, 0xc7, 0x00, 0x00, 0x10, 0x00,
	0xb9, 0x10, 0x00, 0x00, 0x00,
	0x48, 0x89, 0x0f,
	0x48, 0x81, 0xc7, 0x00, 0x30, 0x00, 0x00,
	0xff, 0xc9,
	0x75, 0xf2,
	0x66, 0xba, 0x40, 0x00, 0xee,
	0x48, 0xc7, 0xc7, 0x00, 0x00, 0x10, 0x00,
	0x48, 0x89, 0x87, 0x00, 0x60, 0x00, 0x00,
	0xee,
	0x0f, 0x0b,
}

// dirtyPages lists the set bits of a bitmap.
func dirtyPages(bitmap []uint64) []int {
	var pages []int
	for w, word := range bitmap {
		for b := 0; b < 64; b++ {
			if word&(1<<b) != 0 {
				pages = append(pages, w*64+b)
			}
		}
	}
	return pages
}

func TestDirtyLogIsExact(t *testing.T) {
	sys := openKVM(t)
	g := newGuest(t, sys, guestConfig{code: codeDirty, dirtyLog: true})
	const slot = 1
	bitmap := make([]uint64, DirtyBitmapWords(guestMem-lowSlotSize))
	get := func() []int {
		t.Helper()
		clear(bitmap)
		if err := g.vm.GetDirtyLog(slot, bitmap); err != nil {
			t.Fatal(err)
		}
		return dirtyPages(bitmap)
	}
	if pages := get(); len(pages) != 0 {
		t.Fatalf("dirty before the guest ran (host writes must not count): %v", pages)
	}

	expectIO(t, g.vcpu, 0x40, IOOut, 1)
	var want []int
	for k := 0; k < 16; k++ {
		want = append(want, 3*k)
		if got := binary.LittleEndian.Uint64(g.mem[guestData+3*k*pageSize:]); got != uint64(16-k) {
			t.Errorf("page %d holds %d, want %d", 3*k, got, 16-k)
		}
	}
	if got := get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dirty pages %v, want %v", got, want)
	}

	if g.vm.ManualDirtyLogProtect() {
		// GET only reads: the same pages stay dirty until cleared.
		if got := get(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("second get without clear: %v, want %v", got, want)
		}
		// Clear one page only: exactly that page disappears.
		one := make([]uint64, len(bitmap))
		one[0] = 1 << 3
		if err := g.vm.ClearDirtyLog(slot, 0, uint32(len(bitmap)*64), one); err != nil {
			t.Fatal(err)
		}
		if got := get(); fmt.Sprint(got) != fmt.Sprint(append([]int{0}, want[2:]...)) {
			t.Fatalf("after clearing page 3: %v", got)
		}
		// Clear everything that was fetched.
		if err := g.vm.ClearDirtyLog(slot, 0, uint32(len(bitmap)*64), bitmap); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.ClearDirtyLog(slot, 1, 64, bitmap); err == nil {
			t.Error("ClearDirtyLog accepted a first page that is not a multiple of 64")
		}
	}
	if got := get(); len(got) != 0 {
		t.Fatalf("dirty after get/clear with no guest write: %v", got)
	}

	// The guest writes page 6 again: it must be reported again, and alone.
	expectIO(t, g.vcpu, 0x40, IOOut, 1)
	if got := get(); fmt.Sprint(got) != "[6]" {
		t.Fatalf("after rewriting page 6: dirty %v, want [6]", got)
	}
	if err := g.vm.GetDirtyLog(0, bitmap); err == nil {
		t.Error("GetDirtyLog on a slot without logging succeeded")
	}
}
