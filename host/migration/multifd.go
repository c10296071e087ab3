package migration

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

// Parallel RAM channels: QEMU's "multifd" capability with the
// "multifd-channels" parameter. Off by default, as in QEMU; both sides must
// have it on (the pre-flight exchange compares them and refuses a mismatch
// before any RAM moves). It needs the pre-flight framing (x-preflight) and a
// unix or tcp channel: an fd channel cannot be connected to again.
//
// Connections. The source connects the main channel and sends its pre-flight
// description, which carries {"multifd":{"channels":N,"id":UUID}}; the
// destination answers with "multifd":true (a destination without multifd
// refuses, one that does not know it leaves the field out and the source
// refuses). Then the source connects N more times to the same address; each
// connection starts with an init packet, and the destination accepts exactly
// N of them, each index once, with the migration's id.
//
// The main channel carries the normal QEMU-format stream: the RAM section's
// START (the block list), one PART per pass holding only a
// RAM_SAVE_FLAG_MULTIFD_FLUSH record, an END holding only the flush, then
// device sections and EOF. No page record travels on it. Every page (data
// and zero pages) goes over the multifd channels, written straight from
// guest memory (sendmsg of the header and the pages, no copy through a
// buffer) and read straight into guest memory (the header, then readv into
// the pages).
//
// Wire format, all integers big-endian (wasmvmm's own, modeled on QEMU's
// MultiFDInit_t and MultiFDPacket_t; QEMU cannot read it):
//
//	init packet, once per channel, 32 bytes:
//	  0  be32 magic 0x57564d46 ("WVMF")
//	  4  be32 version 1
//	  8  [16] migration id (the uuid of the pre-flight description)
//	  24 u8   channel index, 0..N-1
//	  25 u8   N, the number of channels
//	  26 [6]  zero
//
//	packet header, 288 bytes:
//	  0  be32 magic
//	  4  be32 flags: 1 SYNC, 2 FINAL (only with SYNC)
//	  8  be32 normal pages (with data)
//	  12 be32 zero pages
//	  16 be64 packet number on this channel, from 0 (init not counted)
//	  24 be64 sync number: a SYNC packet carries the number of this sync
//	          (1, 2, ...); a page packet the number of syncs before it
//	  32 u8   RAM block name length (0 in a SYNC packet)
//	  33 [255] RAM block name, zero padded
//	then (normal + zero) be64 page offsets in the block, strictly ascending
//	within each of the two lists, the normal pages' first; then normal * 4096
//	bytes of page data in the order of their offsets. At most 128 pages per
//	packet; a SYNC packet has no pages.
//
// Ordering. The source's passes end at each dirty-log sync (every sweep over
// RAM, and at least once a second): before a page can be sent again it must
// have been sent in an earlier pass. At the end of each pass the source waits
// until every queued page went out, sends a SYNC with the next sync number on
// every channel, then the flush section on the main channel. On the
// destination a channel that reads SYNC k waits there; the main stream's k-th
// flush waits until every channel reached SYNC k and then lets them all go
// on. So a page sent in pass k on one channel and in pass k+1 on another is
// written with pass k's data before pass k+1's. The switchover sends the last
// pages, a SYNC with FINAL on every channel, the flush in the RAM END, then
// vCPU and device state: the destination applies devices and restores vCPUs
// only after every page is in place. A channel that ends, breaks or sends
// anything out of these rules (bad magic, flags, counts, block, offsets,
// packet or sync number) fails the migration; the source then resumes its
// guest and takes its disks back as on any failure.

const (
	multifdMagic     uint32 = 0x57564d46 // "WVMF"
	multifdVersion   uint32 = 1
	multifdInitLen          = 32
	multifdHeaderLen        = 288
	// multifdMaxPages is the most pages a packet carries (512 KiB of data,
	// QEMU's packet size).
	multifdMaxPages         = 128
	multifdFlagSync  uint32 = 1
	multifdFlagFinal uint32 = 2
	// maxMultifdChannels is multifd-channels' upper bound (QEMU's).
	maxMultifdChannels = 255
)

// multifdDesc is the pre-flight description's multifd member.
type multifdDesc struct {
	Channels int    `json:"channels"`
	ID       string `json:"id"` // 32 hex digits
}

// parseMultifdID decodes the hex id of a multifdDesc.
func parseMultifdID(s string) ([16]byte, error) {
	var id [16]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("multifd id %q is not 32 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// encodeMultifdInit returns a channel's init packet.
func encodeMultifdInit(id [16]byte, index, channels int) []byte {
	b := make([]byte, multifdInitLen)
	binary.BigEndian.PutUint32(b[0:], multifdMagic)
	binary.BigEndian.PutUint32(b[4:], multifdVersion)
	copy(b[8:24], id[:])
	b[24], b[25] = byte(index), byte(channels)
	return b
}

// decodeMultifdInit checks an init packet against the migration's id and
// channel count and returns the channel index.
func decodeMultifdInit(b []byte, id [16]byte, channels int) (int, error) {
	if len(b) != multifdInitLen {
		return 0, fmt.Errorf("multifd init packet of %d bytes, want %d", len(b), multifdInitLen)
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != multifdMagic {
		return 0, fmt.Errorf("multifd init packet: bad magic %#08x, want %#08x", m, multifdMagic)
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != multifdVersion {
		return 0, fmt.Errorf("multifd init packet: version %d, this destination speaks %d", v, multifdVersion)
	}
	if [16]byte(b[8:24]) != id {
		return 0, fmt.Errorf("multifd init packet: migration id %x is not this migration's %x", b[8:24], id)
	}
	if int(b[25]) != channels {
		return 0, fmt.Errorf("multifd init packet: %d channels, the pre-flight said %d", b[25], channels)
	}
	if int(b[24]) >= channels {
		return 0, fmt.Errorf("multifd init packet: channel index %d out of 0..%d", b[24], channels-1)
	}
	for _, x := range b[26:] {
		if x != 0 {
			return 0, errors.New("multifd init packet: reserved bytes are not zero")
		}
	}
	return int(b[24]), nil
}

// multifdHeader is a packet header.
type multifdHeader struct {
	Flags  uint32
	Normal uint32
	Zero   uint32
	Packet uint64
	Sync   uint64
	Block  string
}

// pages is the number of page offsets after the header.
func (h *multifdHeader) pages() int { return int(h.Normal) + int(h.Zero) }

// appendMultifdPacket appends the header and the offsets (normal pages'
// first, then zero pages') to b.
func appendMultifdPacket(b []byte, h *multifdHeader, normal, zero []uint64) []byte {
	var hdr [multifdHeaderLen]byte
	binary.BigEndian.PutUint32(hdr[0:], multifdMagic)
	binary.BigEndian.PutUint32(hdr[4:], h.Flags)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(normal)))
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(zero)))
	binary.BigEndian.PutUint64(hdr[16:], h.Packet)
	binary.BigEndian.PutUint64(hdr[24:], h.Sync)
	hdr[32] = byte(len(h.Block))
	copy(hdr[33:], h.Block)
	b = append(b, hdr[:]...)
	for _, o := range normal {
		b = binary.BigEndian.AppendUint64(b, o)
	}
	for _, o := range zero {
		b = binary.BigEndian.AppendUint64(b, o)
	}
	return b
}

// parseMultifdHeader decodes and checks a packet header on its own (the
// block and the sequence numbers are checked by the receiver).
func parseMultifdHeader(b []byte) (multifdHeader, error) {
	var h multifdHeader
	if len(b) != multifdHeaderLen {
		return h, fmt.Errorf("multifd packet header of %d bytes, want %d", len(b), multifdHeaderLen)
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != multifdMagic {
		return h, fmt.Errorf("multifd packet: bad magic %#08x, want %#08x", m, multifdMagic)
	}
	h.Flags = binary.BigEndian.Uint32(b[4:])
	h.Normal = binary.BigEndian.Uint32(b[8:])
	h.Zero = binary.BigEndian.Uint32(b[12:])
	h.Packet = binary.BigEndian.Uint64(b[16:])
	h.Sync = binary.BigEndian.Uint64(b[24:])
	n := int(b[32])
	h.Block = string(b[33 : 33+n])
	for _, x := range b[33+n:] {
		if x != 0 {
			return h, errors.New("multifd packet: the block name's padding is not zero")
		}
	}
	if h.Flags&^(multifdFlagSync|multifdFlagFinal) != 0 {
		return h, fmt.Errorf("multifd packet: unknown flags %#x", h.Flags)
	}
	if h.Flags&multifdFlagSync != 0 {
		if h.Normal != 0 || h.Zero != 0 || n != 0 {
			return h, errors.New("multifd sync packet with pages or a block name")
		}
		if h.Sync == 0 {
			return h, errors.New("multifd sync packet numbered 0")
		}
		return h, nil
	}
	if h.Flags&multifdFlagFinal != 0 {
		return h, errors.New("multifd packet: FINAL without SYNC")
	}
	if h.Normal > multifdMaxPages || h.Zero > multifdMaxPages || h.Normal+h.Zero > multifdMaxPages {
		return h, fmt.Errorf("multifd packet of %d+%d pages exceeds %d", h.Normal, h.Zero, multifdMaxPages)
	}
	if h.Normal+h.Zero == 0 {
		return h, errors.New("multifd page packet without pages")
	}
	if n == 0 {
		return h, errors.New("multifd page packet without a RAM block name")
	}
	return h, nil
}

// parseMultifdOffsets decodes the offsets after a page packet's header and
// checks them against the block: page aligned, inside it, strictly
// ascending in each list.
func parseMultifdOffsets(b []byte, h *multifdHeader, blk *guestmem.Block, out []uint64) ([]uint64, error) {
	if len(b) != 8*h.pages() {
		return nil, fmt.Errorf("multifd packet: %d bytes of offsets for %d pages", len(b), h.pages())
	}
	out = out[:0]
	for i := 0; i < h.pages(); i++ {
		o := binary.BigEndian.Uint64(b[8*i:])
		if o%vmstate.PageSize != 0 {
			return nil, fmt.Errorf("multifd packet: page offset %#x in RAM block %q is not page aligned", o, blk.Name)
		}
		if o >= blk.Size() {
			return nil, fmt.Errorf("multifd packet: page offset %#x is outside RAM block %q (%#x bytes)", o, blk.Name, blk.Size())
		}
		if i != 0 && i != int(h.Normal) && o <= out[i-1] {
			return nil, fmt.Errorf("multifd packet: page offsets in RAM block %q not ascending (%#x after %#x)", blk.Name, o, out[i-1])
		}
		out = append(out, o)
	}
	// The two lists must not share a page.
	normal, zero := out[:h.Normal], out[h.Normal:]
	for i, j := 0, 0; i < len(normal) && j < len(zero); {
		switch {
		case normal[i] == zero[j]:
			return nil, fmt.Errorf("multifd packet: page %#x of RAM block %q is listed as data and as zero", normal[i], blk.Name)
		case normal[i] < zero[j]:
			i++
		default:
			j++
		}
	}
	return out, nil
}
