package sdk_test

import (
	"errors"

	"wasmvmm/abi"
	"wasmvmm/sdk"
)

// A complete device: an 8-byte MMIO "mailbox" with a doorbell interrupt and
// an output backend. A plugin is this file as package main, plus
// `func main() {}`; its init function registers the device.

// Properties, with defaults.
var (
	mboxIRQOnWrite = sdk.Bool("irq-on-write", true, "raise the interrupt on every write")
	mboxSize       = sdk.U32("size", 8, "bytes in the mailbox (1..8)")
)

// mboxState is the migrated state: section "mailbox", version 2.
type mboxState struct {
	Data    [8]byte `vmstate:"data"`
	Pending bool    `vmstate:"pending"`
	Writes  uint32  `vmstate:"writes,since=2"` // added in version 2
}

var mbox mboxState

var _ = sdk.VMState("mailbox", &mbox, sdk.Version(2), sdk.MinimumVersion(1))

type mailbox struct {
	out *sdk.Backend // nil when nothing is attached
}

func (m *mailbox) Realize(r *sdk.Realizer) error {
	if n := mboxSize.Get(); n == 0 || n > 8 {
		return errors.New("size must be 1..8")
	}
	if _, err := r.AddMMIO(0x1000); err != nil {
		return err
	}
	b, err := sdk.OpenBackend(abi.BackendChar, "console")
	if err != nil && !errors.Is(err, abi.ErrNotFound) {
		return err
	}
	m.out = b
	return nil
}

func (m *mailbox) Reset() {
	mbox = mboxState{}
	_ = sdk.IRQ(0).Set(false)
}

func (m *mailbox) MMIORead(_ sdk.Region, off uint64, size int) uint64 {
	if off == 0x100 { // status: reading acknowledges the interrupt
		p := mbox.Pending
		mbox.Pending = false
		_ = sdk.IRQ(0).Set(false)
		if p {
			return 1
		}
		return 0
	}
	if off >= uint64(mboxSize.Get()) {
		return 0
	}
	return uint64(mbox.Data[off])
}

func (m *mailbox) MMIOWrite(_ sdk.Region, off uint64, size int, v uint64) {
	if off >= uint64(mboxSize.Get()) {
		return
	}
	mbox.Data[off] = byte(v)
	mbox.Writes++
	if m.out != nil {
		_, _ = m.out.Write(mbox.Data[off : off+1]) // a full console drops the byte
	}
	if mboxIRQOnWrite.Get() {
		mbox.Pending = true
		_ = sdk.IRQ(0).Set(true)
	}
}

// PostLoad re-asserts the interrupt line from the loaded state.
func (m *mailbox) PostLoad(version uint32) error {
	return sdk.IRQ(0).Set(mbox.Pending)
}

// Example shows a whole device plugin; in the plugin, the Register call
// sits in func init().
func Example() {
	sdk.Register("mailbox", "1.0.0", &mailbox{})
}
