// Command migpolicy is a test device plugin that uses the plugin ABI's
// migration policy calls: with its "block-modes" property it blocks
// migration in those modes (migration_blocker_add), and with "veto" it
// refuses every migration at setup (migration_subscribe and an error from
// MigrationEvent). It has no registers and no state.
package main

import (
	"errors"

	"wasmvmm/abi"
	"wasmvmm/sdk"
)

var (
	blockModes = sdk.U32("block-modes", 0, "abi.MigrationMode bits in which the device blocks migration")
	veto       = sdk.Bool("veto", false, "veto every migration at setup")
)

type device struct{}

func (device) Realize(*sdk.Realizer) error {
	if m := blockModes.Get(); m != 0 {
		if _, err := sdk.AddBlocker(abi.MigrationMode(m), "migpolicy test device holds a host resource"); err != nil {
			return err
		}
	}
	return sdk.SubscribeMigration(abi.MigrationSetup, abi.ModeAll)
}

func (device) Reset() {}

func (device) MigrationEvent(ev abi.MigrationEvent, _ abi.MigrationMode) error {
	if ev == abi.MigrationSetup && veto.Get() {
		return errors.New("its peer is not ready")
	}
	return nil
}

func init() { sdk.Register("migpolicy", "1.0.0", device{}) }

func main() {}
