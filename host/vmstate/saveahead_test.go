package vmstate

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// countingHooks are recHooks whose device counts its changes
// (ChangeCounter); a PreSave that "asks the host" moves the count.
type countingHooks struct {
	recHooks
	changes   uint64
	preAsks   bool
	subsAsked int
}

func (h *countingHooks) PreSave() error {
	if h.preAsks {
		h.changes++
	}
	return h.recHooks.PreSave()
}

func (h *countingHooks) SubsectionNeeded(id int32) bool {
	h.subsAsked++
	return h.recHooks.SubsectionNeeded(id)
}

func (h *countingHooks) StateChanges() uint64 { return h.changes }

// TestSaveAheadReusesUnchangedDevices checks that a body saved ahead is sent
// again, without the hooks, exactly while the device's count stands still,
// and that the stream is then what a plain save of the same state gives.
func TestSaveAheadReusesUnchangedDevices(t *testing.T) {
	serial := make(ByteStore, 64)
	fill(serial, 3)
	cpu := make(ByteStore, 136)
	fill(cpu, 9)
	h := &countingHooks{recHooks: recHooks{needed: map[int32]bool{1: true}}}
	cpuHooks := &recHooks{}
	reg := NewRegistry()
	if _, err := reg.Register(Device{Schema: serialSchema(), Store: serial, Hooks: h}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Register(Device{Schema: cpuSchema(), InstanceID: 0, Store: cpu, Hooks: cpuHooks}); err != nil {
		t.Fatal(err)
	}
	// plain saves the same stores through a registry that never reuses.
	plain := func() []byte {
		r := NewRegistry()
		r.Register(Device{Schema: serialSchema(), Store: serial, Hooks: &recHooks{needed: map[int32]bool{1: true}}})
		r.Register(Device{Schema: cpuSchema(), InstanceID: 0, Store: cpu, Hooks: &recHooks{}})
		return saveStream(t, "m", nil, r)
	}

	if err := reg.SaveAhead(); err != nil {
		t.Fatal(err)
	}
	if h.preSave != 1 || h.subsAsked != 1 || cpuHooks.preSave != 0 {
		t.Fatalf("save ahead: serial pre_save %d, subsection_needed %d, cpu pre_save %d; want 1, 1, 0 (a device without a count is not saved ahead)",
			h.preSave, h.subsAsked, cpuHooks.preSave)
	}
	want := plain()
	got := saveStream(t, "m", nil, reg)
	if !bytes.Equal(got, want) {
		t.Fatalf("stream with the body saved ahead differs from a plain save")
	}
	if h.preSave != 1 || h.subsAsked != 1 || cpuHooks.preSave != 1 {
		t.Fatalf("save: serial pre_save %d, subsection_needed %d, cpu pre_save %d; want 1, 1, 1 (serial unchanged: its hooks are not run again)",
			h.preSave, h.subsAsked, cpuHooks.preSave)
	}

	// The device changes: its count moves, the save runs its hooks and
	// sends the new state.
	serial[1] ^= 0xff
	h.changes++
	if got := saveStream(t, "m", nil, reg); !bytes.Equal(got, plain()) || h.preSave != 2 {
		t.Fatalf("after a change: pre_save ran %d times (want 2), stream equal to a plain save: %v", h.preSave, bytes.Equal(got, plain()))
	}
	// ... and that save is reused in turn while nothing changes.
	saveStream(t, "m", nil, reg)
	if h.preSave != 2 {
		t.Fatalf("unchanged since the last save: pre_save ran again (%d)", h.preSave)
	}

	// A pre_save that asks the host something is never skipped.
	h.preAsks = true
	h.changes++
	if err := reg.SaveAhead(); err != nil {
		t.Fatal(err)
	}
	saveStream(t, "m", nil, reg)
	if h.preSave != 4 {
		t.Fatalf("asking pre_save: ran %d times in all, want 4 (ahead and again in the save)", h.preSave)
	}

	// A failing pre_save: SaveAhead reports it and keeps nothing; the save
	// runs the hook again and fails the same way.
	h.preAsks = false
	h.failPre = errors.New("not now")
	h.changes++
	if err := reg.SaveAhead(); err == nil || !strings.Contains(err.Error(), "save serial (instance 0) ahead: pre-save: not now") {
		t.Fatalf("SaveAhead error %v", err)
	}
	before := h.preSave
	if err := Save(&bytes.Buffer{}, "m", nil, reg); err == nil || !strings.Contains(err.Error(), "not now") {
		t.Fatalf("save after a failed save ahead: %v", err)
	}
	if h.preSave != before+1 {
		t.Fatalf("the save did not run the failing pre_save again")
	}
}
