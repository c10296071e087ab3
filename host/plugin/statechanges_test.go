package plugin

import "testing"

// TestStateChanges checks the count a migration relies on to resend a
// device's state saved ahead: the save hooks leave it alone unless they ask
// the host something, and every other way into the device moves it.
func TestStateChanges(t *testing.T) {
	h := newTestHost(t, 1<<20)
	rt := func() *Runtime { r, _ := newTestRuntime(t, Config{}); return r }()
	_, inst := realizeEchoIn(t, rt, h)

	c := inst.StateChanges()
	moved := func(what string, want bool) {
		t.Helper()
		now := inst.StateChanges()
		if (now != c) != want {
			t.Errorf("%s: count %d -> %d, want moved=%v", what, c, now, want)
		}
		c = now
	}
	if err := inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	inst.SubsectionNeeded(1)
	moved("pre_save and subsection_needed that ask nothing", false)

	inst.MMIOWrite(1, 0, 8, 42)
	moved("mmio write", true)
	inst.MMIORead(1, 0, 8)
	moved("mmio read", true)
	inst.PIOWrite(0, 1, 1, 7)
	moved("pio write", true)
	if err := inst.WriteMemory(inst.Sections()[0].Fields[0].Offset, []byte{1}); err != nil {
		t.Fatal(err)
	}
	moved("write to plugin memory", true)
	if _, err := inst.ReadMemory(inst.Sections()[0].Fields[0].Offset, 8); err != nil {
		t.Fatal(err)
	}
	moved("read of plugin memory", false)
	if err := inst.PostLoad(1); err != nil {
		t.Fatal(err)
	}
	moved("post_load", true)

	inst.MMIOWrite(1, 0x528, 8, 1) // pre_save now reads the host clock
	moved("mmio write", true)
	if err := inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	moved("pre_save that reads the clock", true)
}
