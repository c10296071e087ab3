package migration

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/vmstate"
)

func TestMultifdInitRoundTrip(t *testing.T) {
	id := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	b := encodeMultifdInit(id, 3, 4)
	if i, err := decodeMultifdInit(b, id, 4); err != nil || i != 3 {
		t.Fatalf("decode: %d %v", i, err)
	}
	bad := func(name string, mod func([]byte) []byte, id [16]byte, n int, want string) {
		t.Helper()
		c := mod(append([]byte(nil), b...))
		if _, err := decodeMultifdInit(c, id, n); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	same := func(b []byte) []byte { return b }
	bad("magic", func(b []byte) []byte { b[0] ^= 1; return b }, id, 4, "bad magic")
	bad("version", func(b []byte) []byte { b[7] = 9; return b }, id, 4, "version 9")
	bad("id", same, [16]byte{}, 4, "migration id")
	bad("count", same, id, 2, "4 channels, the pre-flight said 2")
	bad("index", func(b []byte) []byte { b[24] = 4; return b }, id, 4, "channel index 4")
	bad("reserved", func(b []byte) []byte { b[31] = 1; return b }, id, 4, "reserved")
	bad("short", func(b []byte) []byte { return b[:20] }, id, 4, "20 bytes")
}

func TestMultifdHeaderValidation(t *testing.T) {
	blk := &guestmem.Block{Name: "pc.ram", Mem: make([]byte, 16*vmstate.PageSize)}
	h := multifdHeader{Packet: 7, Sync: 2, Block: "pc.ram"}
	b := appendMultifdPacket(nil, &h, []uint64{0, 3 * vmstate.PageSize}, []uint64{vmstate.PageSize})
	got, err := parseMultifdHeader(b[:multifdHeaderLen])
	if err != nil {
		t.Fatal(err)
	}
	if got.Normal != 2 || got.Zero != 1 || got.Packet != 7 || got.Sync != 2 || got.Block != "pc.ram" || got.Flags != 0 {
		t.Fatalf("header %+v", got)
	}
	offs, err := parseMultifdOffsets(b[multifdHeaderLen:], &got, blk, nil)
	if err != nil || len(offs) != 3 || offs[1] != 3*vmstate.PageSize || offs[2] != vmstate.PageSize {
		t.Fatalf("offsets %v %v", offs, err)
	}
	s := multifdHeader{Flags: multifdFlagSync | multifdFlagFinal, Sync: 3}
	if got, err := parseMultifdHeader(appendMultifdPacket(nil, &s, nil, nil)); err != nil || got.Flags != s.Flags || got.Sync != 3 {
		t.Fatalf("sync %+v %v", got, err)
	}

	hdrCases := []struct {
		name string
		mod  func(b []byte)
		want string
	}{
		{"magic", func(b []byte) { b[3] ^= 0xff }, "bad magic"},
		{"flags", func(b []byte) { b[7] = 8 }, "unknown flags"},
		{"final without sync", func(b []byte) { b[7] = 2 }, "FINAL without SYNC"},
		{"too many", func(b []byte) { binary.BigEndian.PutUint32(b[8:], 129) }, "exceeds 128"},
		{"none", func(b []byte) { binary.BigEndian.PutUint32(b[8:], 0); binary.BigEndian.PutUint32(b[12:], 0) }, "without pages"},
		{"no block", func(b []byte) { clear(b[32:]) }, "without a RAM block name"},
		{"padding", func(b []byte) { b[287] = 1 }, "padding"},
		{"sync with pages", func(b []byte) { b[7] = 1 }, "sync packet with pages"},
	}
	for _, c := range hdrCases {
		x := append([]byte(nil), b[:multifdHeaderLen]...)
		c.mod(x)
		if _, err := parseMultifdHeader(x); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	zeroSync := appendMultifdPacket(nil, &multifdHeader{Flags: multifdFlagSync}, nil, nil)
	if _, err := parseMultifdHeader(zeroSync); err == nil {
		t.Error("sync numbered 0 accepted")
	}

	offCases := []struct {
		name         string
		normal, zero []uint64
		want         string
	}{
		{"unaligned", []uint64{100}, nil, "not page aligned"},
		{"outside", []uint64{16 * vmstate.PageSize}, nil, "outside RAM block"},
		{"descending", []uint64{2 * vmstate.PageSize, vmstate.PageSize}, nil, "not ascending"},
		{"duplicate", []uint64{vmstate.PageSize, vmstate.PageSize}, nil, "not ascending"},
		{"data and zero", []uint64{vmstate.PageSize}, []uint64{vmstate.PageSize}, "as data and as zero"},
	}
	for _, c := range offCases {
		h := multifdHeader{Block: "pc.ram"}
		p := appendMultifdPacket(nil, &h, c.normal, c.zero)
		hh, err := parseMultifdHeader(p[:multifdHeaderLen])
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if _, err := parseMultifdOffsets(p[multifdHeaderLen:], &hh, blk, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// multifdPair connects n channels over a real unix socket: the source's
// sender and the destination's receivers, with their init packets checked.
func multifdPair(t *testing.T, n int, src, dst *guestmem.Block) (*multifdOut, *multifdIn, context.CancelFunc) {
	t.Helper()
	ch := Channel{Type: "main", Transport: "unix", Path: filepath.Join(t.TempDir(), "mf.sock")}
	ln, err := listen(ch)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.close()
	id, err := newMultifdID()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	type acc struct {
		conns []net.Conn
		err   error
	}
	res := make(chan acc, 1)
	go func() {
		c, err := acceptMultifd(ctx, ln, id, n, 10*time.Second)
		res <- acc{c, err}
	}()
	g := New(Config{})
	out, err := openMultifd(ctx, g, ch, id, n, []*guestmem.Block{src}, &rateLimiter{rate: func() int64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	a := <-res
	if a.err != nil {
		t.Fatal(a.err)
	}
	in := startMultifdIn(a.conns, []*guestmem.Block{dst}, 10*time.Second, nil)
	t.Cleanup(func() { cancel(); out.close(); in.stop(errCancelled) })
	return out, in, cancel
}

// TestMultifdPassesOverSockets sends two passes over 3 channels, the
// second rewriting pages of the first (which may go on another channel),
// and checks the destination ends with the second pass's data.
func TestMultifdPassesOverSockets(t *testing.T) {
	const pages = 4096 + 77
	src := &guestmem.Block{Name: "pc.ram", Mem: make([]byte, pages*vmstate.PageSize)}
	dst := &guestmem.Block{Name: "pc.ram", Mem: make([]byte, pages*vmstate.PageSize)}
	rng := rand.New(rand.NewSource(1))
	for p := 0; p < pages; p++ {
		if p%3 != 0 { // every third page stays zero
			rng.Read(src.Mem[p*vmstate.PageSize : p*vmstate.PageSize+64])
		}
	}
	for p := 0; p < pages; p += 5 { // stale data the zero pages must clear
		dst.Mem[p*vmstate.PageSize+1] = 0xee
	}
	out, in, _ := multifdPair(t, 3, src, dst)
	words := (pages + 63) / 64
	all := make([]uint64, words)
	for i := range all {
		all[i] = ^uint64(0)
	}
	all[words-1] = 1<<(pages%64) - 1
	flushes := make(chan error, 2)
	go func() {
		for i := 0; i < 2; i++ {
			flushes <- in.flush()
		}
	}()
	sendAll := func(bm []uint64) {
		for w := 0; w < len(bm); w += chunkWords {
			if err := out.send(0, w, bm[w:min(w+chunkWords, len(bm))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	sendAll(all)
	if err := out.sync(false); err != nil {
		t.Fatal(err)
	}
	if err := <-flushes; err != nil {
		t.Fatal(err)
	}
	// Pass 2: every page again with new data, in chunks in reverse order
	// so that a page's two copies likely travel on different channels.
	for p := 0; p < pages; p++ {
		src.Mem[p*vmstate.PageSize+2] = byte(p) | 1
	}
	for w := (words - 1) / chunkWords * chunkWords; w >= 0; w -= chunkWords {
		if err := out.send(0, w, all[w:min(w+chunkWords, words)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := out.sync(true); err != nil {
		t.Fatal(err)
	}
	if err := <-flushes; err != nil {
		t.Fatal(err)
	}
	if err := in.finish(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.Mem, dst.Mem) {
		t.Fatal("destination RAM differs from the source")
	}
	if got := in.pages.Load() + in.zeros.Load(); got != 2*pages {
		t.Fatalf("%d pages received, want %d", got, 2*pages)
	}
}

// TestMultifdReceiverRejects feeds corrupt or truncated channels to the
// receiver over a socket: the main stream's flush fails with the reason.
func TestMultifdReceiverRejects(t *testing.T) {
	blk := func() *guestmem.Block {
		return &guestmem.Block{Name: "pc.ram", Mem: make([]byte, 8*vmstate.PageSize)}
	}
	page := func(h multifdHeader, normal []uint64) []byte {
		b := appendMultifdPacket(nil, &h, normal, nil)
		return append(b, make([]byte, len(normal)*vmstate.PageSize)...)
	}
	sync1 := appendMultifdPacket(nil, &multifdHeader{Flags: multifdFlagSync, Sync: 1, Packet: 1}, nil, nil)
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"unknown block", page(multifdHeader{Block: "other"}, []uint64{0}), `RAM block "other" is not on this machine`},
		{"offset out of range", page(multifdHeader{Block: "pc.ram"}, []uint64{8 * vmstate.PageSize}), "outside RAM block"},
		{"packet number", page(multifdHeader{Block: "pc.ram", Packet: 5}, []uint64{0}), "packet number 5, want 0"},
		{"sync number", appendMultifdPacket(nil, &multifdHeader{Flags: multifdFlagSync, Sync: 2}, nil, nil), "sync number 2, want 1"},
		{"truncated data", page(multifdHeader{Block: "pc.ram"}, []uint64{0})[:multifdHeaderLen+8+100], "page data"},
		{"truncated header", []byte{0x57, 0x56}, "header"},
		{"closed before sync", page(multifdHeader{Block: "pc.ram"}, []uint64{0}), "closed the channel"},
		{"bad magic", append([]byte("XXXX"), sync1[4:]...), "bad magic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sp := filepath.Join(t.TempDir(), "s")
			ln, err := net.Listen("unix", sp)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cl, err := net.Dial("unix", sp)
			if err != nil {
				t.Fatal(err)
			}
			sv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			in := startMultifdIn([]net.Conn{sv}, []*guestmem.Block{blk()}, 5*time.Second, nil)
			defer in.stop(errCancelled)
			cl.Write(c.data)
			cl.Close()
			err = in.flush()
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "multifd channel 0") {
				t.Fatalf("flush: %v, want %q", err, c.want)
			}
		})
	}
}
