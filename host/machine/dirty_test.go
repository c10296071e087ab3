package machine

import (
	"testing"
	"time"

	"wasmvmm/host/kvm"
)

func dirtyBitmaps(m *Machine) [][]uint64 {
	var out [][]uint64
	for _, b := range m.Memory().Blocks() {
		out = append(out, make([]uint64, kvm.DirtyBitmapWords(b.Size())))
	}
	return out
}

// TestSyncDirtyMergesGuestAndHostWrites: the dirtier's pages (guest writes,
// KVM's log) and a device's write through guestmem (the host bitmap) both
// show up; a quiet guest shows nothing. (Throttling: throttle_test.go.)
func TestSyncDirtyMergesGuestAndHostWrites(t *testing.T) {
	requireKVM(t)
	m, sink := newTestMachine(t, "workload=dirtier dirty_start=16M dirty_end=20M dirty_rate_mb=8", 64<<20)
	if err := m.Start(false); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "DIRTY pass=1\n", 20*time.Second)
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	defer m.StopDirtyLog()
	if err := m.StartDirtyLog(); err == nil {
		t.Fatal("dirty logging started twice")
	}
	time.Sleep(100 * time.Millisecond)
	bms := dirtyBitmaps(m)
	n, err := m.SyncDirty(bms)
	if err != nil {
		t.Fatal(err)
	}
	// 8 MiB/s for ~0.1 s: about 200 pages, all inside [16M, 20M).
	if n < 50 || n > 1024 {
		t.Fatalf("%d dirty pages after 0.1 s at 8 MiB/s", n)
	}
	low := bms[0]
	for p := 0; p < len(low)*64; p++ {
		if low[p/64]&(1<<(p%64)) != 0 && (p < 16<<8 || p >= 20<<8) {
			if p >= 0x100 && p < 0x200 {
				continue // the guest's own image (stack, data) is written too
			}
			t.Logf("dirty page outside the dirtier's range: %#x", p*4096)
		}
	}
	// A host write on a device's behalf.
	m.Pause()
	clear(bms[0])
	m.SyncDirty(bms) // drain what ran before the pause
	clear(bms[0])
	if _, err := m.Memory().WriteAt([]byte{1, 2, 3}, 40<<20); err != nil {
		t.Fatal(err)
	}
	n, err = m.SyncDirty(bms)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || bms[0][(40<<8)/64]&(1<<((40<<8)%64)) == 0 {
		t.Fatalf("host write: %d pages, page 40M set: %v", n, bms[0][(40<<8)/64] != 0)
	}
	// Range sync: re-arms exactly a range.
	clear(bms[0])
	if n, err := m.SyncDirtyRange(0, 0, 64, bms[0][:64]); err != nil || n != 0 {
		t.Fatalf("range sync of a quiet paused guest: %d %v", n, err)
	}
	if err := m.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SyncDirty(bms); err == nil {
		t.Fatal("sync with logging off")
	}
}
