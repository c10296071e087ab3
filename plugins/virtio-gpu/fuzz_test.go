//go:build !wasip1

package main

import (
	"encoding/binary"
	"testing"

	"wasmvmm/host/display"
	"wasmvmm/sdk/virtio"
	"wasmvmm/sdk/virtio/virtiotest"
)

// FuzzCommands sends arbitrary control commands (the first 64 bytes of the
// input; the rest is a second readable buffer, as attach-backing entries)
// to one device that already holds a resource on a scanout: every command
// gets a response of a known type, the device never needs a reset, the
// instance never fails, and a scanout that still shows something renders.
func FuzzCommands(f *testing.F) {
	seed := func(b []byte, extra []byte) { f.Add(append(b, extra...)) }
	seed(words(hdr(cmdGetDisplayInfo, 0)), nil)
	seed(words(hdr(cmdGetEDID, 0), 0, 0), nil)
	seed(words(hdr(cmdResourceCreate2D, 0), 2, formatB8G8R8X8, 100, 50), nil)
	seed(words(hdr(cmdResourceUnref, 0), 1, 0), nil)
	seed(words(hdr(cmdSetScanout, 0), 0, 0, 64, 64, 0, 1), nil)
	seed(words(hdr(cmdResourceFlush, 0), 0, 0, 64, 64, 1, 0), nil)
	seed(append(words(hdr(cmdTransferToHost2D, 1), 3, 5, 20, 20), make([]byte, 16)...), nil)
	ent := binary.LittleEndian.AppendUint64(nil, fbBase)
	ent = words(ent, 4096, 0)
	seed(append(words(hdr(cmdResourceAttachBacking, 0), 1, 1), make([]byte, 32)...), ent)
	seed(words(hdr(cmdResourceDetachBacking, 0), 1, 0), nil)
	seed(words(hdr(cmdSubmit3D, 0), 0, 0), nil)
	seed([]byte{1, 2, 3}, nil)

	e := start(f, nil, nil)
	e.up()
	pages := pageList(fbBase, 64*64*4)
	e.create(1, formatB8G8R8X8, 64, 64)
	e.attach(1, pages)
	e.setScanout(0, 1, 0, 0, 64, 64)
	known := map[uint32]bool{respOKNoData: true, respOKDisplayInfo: true, respOKEDID: true, respErrUnspec: true,
		respErrOutOfMemory: true, respErrInvalidScanoutID: true, respErrInvalidResourceID: true,
		respErrInvalidContextID: true, respErrInvalidParameter: true}
	f.Fuzz(func(t *testing.T, in []byte) {
		e.t = t
		if len(in) == 0 {
			return
		}
		cmd, extra := in[:min(len(in), cmdBufSize)], in[min(len(in), cmdBufSize):]
		var bufs []virtiotest.Buf
		if len(extra) > 0 {
			e.guest.Write(entriesAddr, extra)
			bufs = append(bufs, virtiotest.Buf{Addr: entriesAddr, Len: uint32(len(extra))})
		}
		r := e.exec(cmd, respBufSize, bufs...)
		if len(r) < hdrSize || !known[le.Uint32(r)] {
			t.Fatalf("response % x", r[:min(len(r), hdrSize)])
		}
		if e.inst.Err() != nil || e.drv.Status()&virtio.StatusDeviceNeedsReset != 0 {
			t.Fatalf("device broken: %v, status %#x", e.inst.Err(), e.drv.Status())
		}
		if _, err := display.Capture(e.inst, 0); err != nil && e.scanoutField(0, "resource_id") != 0 {
			t.Fatalf("scanout shows resource %d but does not render: %v", e.scanoutField(0, "resource_id"), err)
		}
	})
}
