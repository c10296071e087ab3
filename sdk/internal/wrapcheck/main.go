// Command wrapcheck is a test plugin for the SDK's host-call wrappers: each
// write of a command number to offset 0 of its MMIO region runs one
// wrapper against the real host and stores the outcome, which a read of
// offset 0 returns (offset 8: a second value). sdk's tests build it and
// drive it through host/plugin.
package main

import (
	"bytes"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/sdk"
)

func main() {}

// Commands.
const (
	cmdGuestRW       = 1  // GuestWrite then GuestRead at 0x1000: result 1 if equal
	cmdGuestStore    = 2  // GuestStore 4 bytes at 0x2000, GuestLoad them back: result the value
	cmdGuestLoadBad  = 3  // GuestLoad beyond RAM: result the value (all ones)
	cmdGuestReadBad  = 4  // GuestRead beyond RAM: result the status
	cmdGuestSG       = 5  // GuestWriteSG over two ranges, GuestReadSG back: result bytes, second 1 if equal
	cmdTimer         = 6  // arm timer 3 for 1 ms from now: TimerFired sets result2 to 3
	cmdBlocker       = 7  // AddBlocker then (second command) Remove
	cmdBlockerRemove = 8  //
	cmdSubscribe     = 9  // SubscribeMigration(setup|done, normal)
	cmdBlockIO       = 10 // disk: PwriteSG guest 0x3000 (8 bytes) at offset 512, PreadSG to 0x4000; result bytes read
	cmdBlockSize     = 11 // disk: Size
	cmdBlockOps      = 12 // disk: Flush, Discard(0,512), WriteZeroes(1024,16): result 1 if all ok
	cmdNow           = 13 // result Now()
	cmdVetoOn        = 14 // MigrationEvent(setup) fails from now on
	cmdPulse         = 15 // IRQ(0).Pulse
	cmdPreserve      = 16 // disk.PreserveFD("disk-image", 7)
	cmdNetSend       = 17 // net: SendSG of guest 0x3000 (8 bytes) skipping 2: result bytes sent
	cmdNetRecv       = 18 // net: RecvSG into guest 0x5000 (16 bytes) after 4: result frame length
)

var (
	result, result2 uint64
	blocker         sdk.Blocker
	disk, net       *sdk.Backend
	veto            bool
	sg              [2]sdk.SGEntry
	buf             [64]byte
)

type device struct{}

func (device) Realize(r *sdk.Realizer) error {
	if _, err := r.AddMMIO(0x100); err != nil {
		return err
	}
	b, err := sdk.OpenBackend(abi.BackendBlock, "disk")
	if err != nil && !errors.Is(err, abi.ErrNotFound) {
		return err
	}
	disk = b
	if net, err = sdk.OpenBackend(abi.BackendNet, "net"); err != nil && !errors.Is(err, abi.ErrNotFound) {
		return err
	}
	return nil
}

func (device) Reset() { result, result2 = 0, 0 }

func status(err error) uint64 {
	var s abi.Status
	if errors.As(err, &s) {
		return uint64(int64(s))
	}
	if err != nil {
		s = abi.ErrFailed
	}
	return uint64(int64(s))
}

func (device) MMIORead(_ sdk.Region, off uint64, _ int) uint64 {
	if off == 8 {
		return result2
	}
	return result
}

func (device) MMIOWrite(_ sdk.Region, off uint64, _ int, v uint64) {
	if off != 0 {
		return
	}
	result, result2 = 0, 0
	switch v {
	case cmdGuestRW:
		msg := []byte("hello, guest")
		if err := sdk.GuestWrite(0x1000, msg); err != nil {
			result = status(err)
			return
		}
		back := buf[:len(msg)]
		if err := sdk.GuestRead(0x1000, back); err != nil {
			result = status(err)
			return
		}
		if bytes.Equal(back, msg) {
			result = 1
		}
	case cmdGuestStore:
		if err := sdk.GuestStore(0x2000, 4, 0xdeadbeef); err != nil {
			result = status(err)
			return
		}
		result = sdk.GuestLoad(0x2000, 4)
	case cmdGuestLoadBad:
		result = sdk.GuestLoad(1<<40, 8)
	case cmdGuestReadBad:
		result = status(sdk.GuestRead(1<<40, buf[:4]))
	case cmdGuestSG:
		sg[0] = sdk.SGEntry{GPA: 0x3000, Len: 3}
		sg[1] = sdk.SGEntry{GPA: 0x4000, Len: 5}
		n, err := sdk.GuestWriteSG(sg[:], []byte("abcdefgh"))
		if err != nil {
			result = status(err)
			return
		}
		clear(buf[:])
		m, err := sdk.GuestReadSG(sg[:], buf[:8])
		if err != nil {
			result = status(err)
			return
		}
		result = uint64(n)
		if m == 8 && string(buf[:8]) == "abcdefgh" {
			result2 = 1
		}
	case cmdTimer:
		result = status(sdk.Timer(3).Arm(sdk.Now() + 1_000_000))
	case cmdBlocker:
		var err error
		blocker, err = sdk.AddBlocker(abi.ModeCPRTransfer, "wrapcheck cannot be transferred")
		result = status(err)
	case cmdBlockerRemove:
		result = status(blocker.Remove())
	case cmdSubscribe:
		result = status(sdk.SubscribeMigration(abi.MigrationSetup|abi.MigrationDone, abi.ModeNormal))
	case cmdBlockIO:
		sg[0] = sdk.SGEntry{GPA: 0x3000, Len: 8}
		if _, err := disk.PwriteSG(512, sg[:1]); err != nil {
			result = status(err)
			return
		}
		sg[0] = sdk.SGEntry{GPA: 0x4000, Len: 8}
		n, err := disk.PreadSG(512, sg[:1])
		if err != nil {
			result = status(err)
			return
		}
		result = uint64(n)
	case cmdBlockSize:
		n, err := disk.Size()
		if err != nil {
			result = status(err)
			return
		}
		result = uint64(n)
	case cmdBlockOps:
		if err := errors.Join(disk.Flush(), disk.Discard(0, 512), disk.WriteZeroes(1024, 16)); err != nil {
			result = status(err)
			return
		}
		result = 1
	case cmdNow:
		result = uint64(sdk.Now())
	case cmdVetoOn:
		veto = true
	case cmdPulse:
		result = status(sdk.IRQ(0).Pulse())
	case cmdPreserve:
		result = status(disk.PreserveFD("disk-image", 7))
	case cmdNetSend:
		sg[0] = sdk.SGEntry{GPA: 0x3000, Len: 8}
		n, err := net.SendSG(sg[:1], 2)
		result = uint64(n)
		if err != nil {
			result = status(err)
		}
	case cmdNetRecv:
		sg[0] = sdk.SGEntry{GPA: 0x5000, Len: 16}
		n, err := net.RecvSG(sg[:1], 4)
		result = uint64(n)
		if err != nil {
			result = status(err)
		}
	}
}

func (device) TimerFired(t sdk.Timer) { result2 = uint64(t) }

func (device) MigrationEvent(ev abi.MigrationEvent, mode abi.MigrationMode) error {
	result2 = uint64(ev)<<8 | uint64(mode)
	if veto && ev == abi.MigrationSetup {
		return errors.New("wrapcheck vetoes")
	}
	return nil
}

func init() { sdk.Register("wrapcheck", "0.0.1", device{}) }
