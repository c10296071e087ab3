package guest

import (
	"bytes"
	"fmt"
	"net"
	"os"
)

// What the guest's device checks write, send and draw (README.md, "Virtio
// devices"), for host-side tests to check against.

// SectorSize is the virtio-blk sector size.
const SectorSize = 512

// BlkPattern is byte i (0..511) of sector s written by blk_test with blk_seed.
func BlkPattern(sector, i, seed uint64) byte { return byte(sector*7 + i + seed) }

// CheckImage reads the disk image at path and reports the first difference
// from blk_test's result: the pattern in sectors [start, start+n) and zero
// bytes everywhere else (for an image that was all zeros before the run).
func CheckImage(path string, start, n, seed uint64) error {
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	bad, first := 0, ""
	for off := range img {
		s, i := uint64(off)/SectorSize, uint64(off)%SectorSize
		want := byte(0)
		if s >= start && s < start+n {
			want = BlkPattern(s, i, seed)
		}
		if img[off] != want {
			if bad == 0 {
				first = fmt.Sprintf("byte %d (sector %d byte %d) = %#x, want %#x", off, s, i, img[off], want)
			}
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("image %s: %d bytes differ from the blk_test pattern, first: %s", path, bad, first)
	}
	return nil
}

// EchoEthertype is the ethertype of net_test's frames (IEEE local experimental).
const EchoEthertype = 0x88b5

// EchoFrame is the frame net_test sends with sequence number seq (from 1)
// and length size, from the device MAC mac.
func EchoFrame(mac net.HardwareAddr, seq, size int) []byte {
	f := make([]byte, size)
	for k := range f {
		f[k] = byte(k)
	}
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	f[12], f[13] = EchoEthertype>>8, EchoEthertype&0xff
	text := fmt.Sprintf("WASMVMM-ECHO %d", seq)
	copy(f[14:], text)
	if 14+len(text) < size {
		f[14+len(text)] = 0
	}
	return f
}

// CheckEchoFrames checks that frames are net_test's frames 1, 2, ... in
// order, each possibly repeated (the guest sends a frame again when its echo
// is late or lost), and returns how many distinct frames there were.
func CheckEchoFrames(frames [][]byte, mac net.HardwareAddr, size int) (distinct int, err error) {
	for i, f := range frames {
		if distinct > 0 && bytes.Equal(f, EchoFrame(mac, distinct, size)) {
			continue // sent again
		}
		if want := EchoFrame(mac, distinct+1, size); !bytes.Equal(f, want) {
			return distinct, fmt.Errorf("frame %d received (after %d distinct):\n got %x\nwant %x", i+1, distinct, f, want)
		}
		distinct++
	}
	return distinct, nil
}

// EchoReply is what an echo peer sends back for frame f: the same frame
// with source and destination MAC addresses swapped.
func EchoReply(f []byte) []byte {
	r := append([]byte(nil), f...)
	if len(r) >= 12 {
		copy(r[0:6], f[6:12])
		copy(r[6:12], f[0:6])
	}
	return r
}

// TestCard is pixel (x, y) of gpu_test's test card on a w x h resource.
func TestCard(x, y, w, h int) (r, g, b byte) {
	r = byte(x * 255 / max(w-1, 1))
	g = byte(y * 255 / max(h-1, 1))
	if (x/32+y/32)%2 == 1 {
		b = 255
	}
	return r, g, b
}

// CheckTestCard compares a w x h picture, whose pixel (x, y) is given by at,
// with the test card and reports how many pixels differ and the first one.
func CheckTestCard(w, h int, at func(x, y int) (r, g, b byte)) error {
	bad, first := 0, ""
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, b := at(x, y)
			wr, wg, wb := TestCard(x, y, w, h)
			if r != wr || g != wg || b != wb {
				if bad == 0 {
					first = fmt.Sprintf("pixel (%d,%d) = %d,%d,%d, want %d,%d,%d", x, y, r, g, b, wr, wg, wb)
				}
				bad++
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d pixels differ from the test card, first: %s", bad, w*h, first)
	}
	return nil
}
