package virtio_test

import (
	"encoding/binary"
	"testing"

	"wasmvmm/sdk/virtio"
)

// FuzzTransport drives the transport with arbitrary register accesses while
// guest memory holds arbitrary bytes: whatever the driver does, the
// transport must neither panic nor loop, the interrupt line must follow
// InterruptStatus, and a reset must bring the device back to a working
// state.
func FuzzTransport(f *testing.F) {
	// Each op: 1 byte kind/size, 2 bytes offset, 4 bytes value.
	op := func(kind byte, off uint16, v uint32) []byte {
		b := []byte{kind, byte(off), byte(off >> 8), 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[3:], v)
		return b
	}
	var setup []byte
	for _, o := range [][]byte{
		op(4, virtio.RegStatus, 3), op(4, virtio.RegDriverFeaturesSel, 1), op(4, virtio.RegDriverFeatures, 1),
		op(4, virtio.RegDriverFeaturesSel, 0), op(4, virtio.RegDriverFeatures, 3<<28), op(4, virtio.RegStatus, 11),
		op(4, virtio.RegQueueNum, 16), op(4, virtio.RegQueueDescLow, 0x10000), op(4, virtio.RegQueueDriverLow, 0x11000),
		op(4, virtio.RegQueueDeviceLow, 0x12000), op(4, virtio.RegQueueReady, 1), op(4, virtio.RegStatus, 15),
		op(4, virtio.RegQueueNotify, 0), op(0x84, virtio.RegInterruptStatus, 0), op(4, virtio.RegInterruptACK, 3),
	} {
		setup = append(setup, o...)
	}
	f.Add(setup, []byte{1, 0, 0, 0})
	f.Add(append(setup, op(1, virtio.RegConfig+3, 0xff)...), []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 4, 0})
	f.Fuzz(func(t *testing.T, ops []byte, ram []byte) {
		r := newRig(t, 1<<3, virtio.Limits{MaxDescriptors: 64})
		// Guest memory: the fuzz bytes repeated over the rings and buffers.
		if len(ram) > 0 {
			for i := 0; i < 0x20000; i += len(ram) {
				copy(r.mem.Mem[i:], ram)
			}
		}
		for len(ops) >= 7 {
			kind, off, v := ops[0], uint64(binary.LittleEndian.Uint16(ops[1:])), binary.LittleEndian.Uint32(ops[3:])
			ops = ops[7:]
			size := []int{1, 2, 4, 8}[kind&3]
			if kind&0x80 != 0 {
				r.tr.MMIORead(off%0x200, size)
			} else {
				r.tr.MMIOWrite(off%0x200, size, uint64(v))
			}
			if r.irq != (r.Read(virtio.RegInterruptStatus, 4) != 0) {
				t.Fatalf("line %v with InterruptStatus %#x", r.irq, r.Read(virtio.RegInterruptStatus, 4))
			}
		}
		// A reset and a clean setup always work afterwards.
		clear(r.mem.Mem)
		q := r.up(allFeatures)
		echoRoundTrip(t, r, q, true)
	})
}
