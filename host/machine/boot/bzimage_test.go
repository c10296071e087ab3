package boot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// testBzImage describes a bzImage the tests build: a boot sector and setup
// sectors with a setup header, then the protected-mode code.
type testBzImage struct {
	setupSects  uint8 // as stored in the file (0 means 4)
	version     uint16
	loadflags   uint8
	xloadflags  uint16
	relocatable bool
	align       uint32
	prefAddress uint64
	initSize    uint32
	code        []byte
	magic       uint32
}

func defaultBzImage() testBzImage {
	code := make([]byte, 0x5000)
	for i := range code {
		code[i] = byte(i*7 + 3)
	}
	return testBzImage{
		setupSects: 3, version: 0x020f, loadflags: LoadflagLoadedHigh,
		xloadflags: XLFKernel64 | XLFCanBeLoadedAbove4G, relocatable: true,
		align: 0x200000, prefAddress: 0x1000000, initSize: 0x20000,
		code: code, magic: headerMagic,
	}
}

func (z testBzImage) bytes() []byte {
	sects := int(z.setupSects)
	if sects == 0 {
		sects = 4
	}
	img := make([]byte, (sects+1)*512)
	le := binary.LittleEndian
	img[offSetupSects] = z.setupSects
	le.PutUint32(img[offSyssize:], uint32((len(z.code)+15)/16))
	le.PutUint16(img[offBootFlag:], bootFlagMagic)
	img[offJump] = 0xeb
	img[offJump+1] = 0x6a // header ends at 0x26c
	le.PutUint32(img[offHeader:], z.magic)
	le.PutUint16(img[offVersion:], z.version)
	img[offLoadflags] = z.loadflags
	le.PutUint32(img[offInitrdAddrMax:], 0x7fffffff)
	le.PutUint32(img[offKernelAlignment:], z.align)
	if z.relocatable {
		img[offRelocatable] = 1
	}
	img[offMinAlignment] = 21
	le.PutUint16(img[offXloadflags:], z.xloadflags)
	le.PutUint32(img[offCmdlineSize:], 2047)
	le.PutUint64(img[offPrefAddress:], z.prefAddress)
	le.PutUint32(img[offInitSize:], z.initSize)
	return append(img, z.code...)
}

func TestLoadBzImage(t *testing.T) {
	z := defaultBzImage()
	const ram = 64 << 20
	mem := newGuestRAM(t, ram)
	k, err := LoadBzImage(bytes.NewReader(z.bytes()), mem, ram, 0)
	if err != nil {
		t.Fatalf("LoadBzImage: %v", err)
	}
	if k.LoadAddr != 0x1000000 || k.Entry != 0x1000200 {
		t.Errorf("load %#x entry %#x, want pref_address 0x1000000 and entry +0x200", k.LoadAddr, k.Entry)
	}
	if k.End != 0x1000000+0x20000 {
		t.Errorf("end = %#x, want load + init_size", k.End)
	}
	if !bytes.Equal(mem.b[0x1000000:0x1005000], z.code) {
		t.Error("protected-mode code not at the load address")
	}
	h := k.Header
	if h.Version != 0x020f || h.SetupSects != 3 || !h.Relocatable || h.KernelAlignment != 0x200000 || h.CmdlineSize != 2047 || h.InitrdAddrMax != 0x7fffffff {
		t.Errorf("parsed header %+v", *h)
	}
	if len(h.Raw) != 0x26c-0x1f1 || binary.LittleEndian.Uint32(h.Raw[offHeader-hdrStart:]) != headerMagic {
		t.Errorf("raw header of %d bytes does not span 0x1f1..0x26c", len(h.Raw))
	}
}

func TestLoadBzImagePlacement(t *testing.T) {
	const ram = 64 << 20
	t.Run("setup_sects 0 means 4", func(t *testing.T) {
		z := defaultBzImage()
		z.setupSects = 0
		mem := newGuestRAM(t, ram)
		k, err := LoadBzImage(bytes.NewReader(z.bytes()), mem, ram, 0)
		if err != nil {
			t.Fatal(err)
		}
		if k.Header.SetupSects != 4 || !bytes.Equal(mem.b[k.LoadAddr:k.LoadAddr+0x5000], z.code) {
			t.Error("code not taken from after 5 sectors")
		}
	})
	t.Run("unaligned pref_address falls back to aligned 1 MiB", func(t *testing.T) {
		z := defaultBzImage()
		z.prefAddress = 0x1100000
		k, err := LoadBzImage(bytes.NewReader(z.bytes()), newGuestRAM(t, ram), ram, 0)
		if err != nil || k.LoadAddr != 0x200000 {
			t.Fatalf("load %v, %v; want 0x200000", k, err)
		}
	})
	t.Run("explicit aligned address", func(t *testing.T) {
		k, err := LoadBzImage(bytes.NewReader(defaultBzImage().bytes()), newGuestRAM(t, ram), ram, 0x400000)
		if err != nil || k.LoadAddr != 0x400000 || k.Entry != 0x400200 {
			t.Fatalf("load %v, %v; want 0x400000", k, err)
		}
	})
	t.Run("explicit unaligned address", func(t *testing.T) {
		_, err := LoadBzImage(bytes.NewReader(defaultBzImage().bytes()), newGuestRAM(t, ram), ram, 0x300000)
		if err == nil || !strings.Contains(err.Error(), "kernel_alignment") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("non-relocatable loads only at its address", func(t *testing.T) {
		z := defaultBzImage()
		z.relocatable = false
		_, err := LoadBzImage(bytes.NewReader(z.bytes()), newGuestRAM(t, ram), ram, 0x400000)
		if err == nil || !strings.Contains(err.Error(), "not relocatable") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestLoadBzImageRejects(t *testing.T) {
	const ram = 64 << 20
	cases := []struct {
		name   string
		mod    func(*testBzImage)
		trunc  int
		ram    uint64
		substr string
	}{
		{name: "no HdrS", mod: func(z *testBzImage) { z.magic = 0x12345678 }, substr: "HdrS"},
		{name: "protocol 2.05", mod: func(z *testBzImage) { z.version = 0x0205 }, substr: "2.06"},
		{name: "no 64-bit entry", mod: func(z *testBzImage) { z.xloadflags = 0 }, substr: "64-bit"},
		{name: "protocol 2.10 has no xloadflags", mod: func(z *testBzImage) { z.version = 0x020a }, substr: "64-bit"},
		{name: "zImage", mod: func(z *testBzImage) { z.loadflags = 0 }, substr: "LOADED_HIGH"},
		{name: "truncated code", trunc: 100, substr: "truncated"},
		{name: "init_size beyond RAM", mod: func(z *testBzImage) { z.initSize = 0x4000000 }, substr: "beyond guest RAM"},
		{name: "RAM too small", ram: 0x1001000, substr: "beyond guest RAM"},
		{name: "bad alignment", mod: func(z *testBzImage) { z.align = 0x300000 }, substr: "power of two"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			z := defaultBzImage()
			if c.mod != nil {
				c.mod(&z)
			}
			b := z.bytes()
			b = b[:len(b)-c.trunc]
			size := uint64(ram)
			if c.ram != 0 {
				size = c.ram
			}
			_, err := LoadBzImage(bytes.NewReader(b), newGuestRAM(t, ram), size, 0)
			if err == nil || !strings.Contains(err.Error(), c.substr) {
				t.Fatalf("err = %v, want one mentioning %q", err, c.substr)
			}
		})
	}
}

// FuzzLoadBzImage checks that no image makes the header parser, the
// loader or KernelVersion panic, and that accepted images stay in RAM.
func FuzzLoadBzImage(f *testing.F) {
	small := defaultBzImage()
	small.code = small.code[:0x100]
	small.prefAddress = 0x200000
	f.Add(small.bytes())
	f.Add(defaultBzImage().bytes()[:0x400])
	const ram = 4 << 20
	mem := newGuestRAM(f, ram)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseSetupHeader(bytes.NewReader(b))
		if err == nil && (h.Version < minVersion || len(h.Raw) == 0) {
			t.Fatalf("accepted header %+v", h)
		}
		k, err := LoadBzImage(bytes.NewReader(b), mem, ram, 0)
		if err == nil && (k.End > ram || k.Entry != k.LoadAddr+0x200) {
			t.Fatalf("accepted image placed at %#x..%#x", k.LoadAddr, k.End)
		}
		_, _ = KernelVersion(bytes.NewReader(b))
	})
}

func TestKernelVersion(t *testing.T) {
	img := defaultBzImage().bytes()
	binary.LittleEndian.PutUint16(img[offKernelVersion:], 0x300) // string at 0x500
	copy(img[0x500:], "6.99.0-test (builder@host) #1\x00garbage")
	v, err := KernelVersion(bytes.NewReader(img))
	if err != nil || v != "6.99.0-test (builder@host) #1" {
		t.Fatalf("KernelVersion = %q, %v", v, err)
	}
	binary.LittleEndian.PutUint16(img[offKernelVersion:], 0xff00) // beyond the file
	if _, err := KernelVersion(bytes.NewReader(img)); err == nil {
		t.Error("version pointer beyond the file accepted")
	}
}
