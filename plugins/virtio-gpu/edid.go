package main

import "encoding/binary"

// edidSize is one EDID 1.3 base block.
const edidSize = 128

// maxEDIDDimension is the largest width or height a detailed timing
// descriptor holds (12 bits).
const maxEDIDDimension = 4095

// EDID timing choices: reduced blanking in the style of CVT-RB (horizontal
// blank 160 pixels, front porch 48, sync 32; vertical front porch 3, sync
// 6, at least 460 µs of vertical blank), 60 Hz unless the 16-bit pixel clock
// field (at most 655.35 MHz) needs a lower rate.
const (
	edidHBlank      = 160
	edidHFrontPorch = 48
	edidHSync       = 32
	edidVFrontPorch = 3
	edidVSync       = 6
	edidMinVBackPor = 6
	edidRefreshHz   = 60
	edidMaxClock10k = 65535
	// edidDPI sets the physical size reported for the mode.
	edidDPI = 96
)

// edidTiming is the detailed timing the EDID announces for a mode.
type edidTiming struct {
	hActive, vActive  uint32
	hBlank, vBlank    uint32
	clock10k          uint32 // pixel clock in units of 10 kHz
	widthMM, heightMM uint32
}

// timingFor computes the preferred timing of an xres x yres mode (both in
// [16, maxEDIDDimension]).
func timingFor(xres, yres uint32) edidTiming {
	t := edidTiming{hActive: xres, vActive: yres, hBlank: edidHBlank}
	// vblank/(yres+vblank) >= 460 µs * refresh, rounded up.
	const num, den = 460 * edidRefreshHz, 1000000
	t.vBlank = (num*yres + (den - num) - 1) / (den - num)
	t.vBlank = max(t.vBlank, edidVFrontPorch+edidVSync+edidMinVBackPor)
	total := uint64(xres+t.hBlank) * uint64(yres+t.vBlank)
	refresh := uint64(edidRefreshHz)
	for refresh > 1 && (total*refresh+9999)/10000 > edidMaxClock10k {
		refresh--
	}
	t.clock10k = uint32((total*refresh + 9999) / 10000)
	t.widthMM = (xres*254 + edidDPI*5) / (edidDPI * 10)
	t.heightMM = (yres*254 + edidDPI*5) / (edidDPI * 10)
	return t
}

// buildEDID returns an EDID 1.3 base block whose preferred (first detailed)
// timing is xres x yres, with a range-limits descriptor that includes it,
// the monitor name "wasmvmm" and a valid checksum.
func buildEDID(xres, yres uint32) [edidSize]byte {
	var e [edidSize]byte
	copy(e[0:8], []byte{0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00})
	// Manufacturer "WVM": three 5-bit letters, A = 1, big endian.
	binary.BigEndian.PutUint16(e[8:], uint16('W'-'@')<<10|uint16('V'-'@')<<5|uint16('M'-'@'))
	binary.LittleEndian.PutUint16(e[10:], 0x0001) // product code
	e[16], e[17] = 1, 2024-1990                   // week, year of manufacture
	e[18], e[19] = 1, 3                           // EDID 1.3
	e[20] = 0x80                                  // digital input
	t := timingFor(xres, yres)
	e[21], e[22] = byte((t.widthMM+5)/10), byte((t.heightMM+5)/10)
	e[23] = 220 - 100 // gamma 2.2
	// Features: RGB colour display, sRGB default colour space, preferred
	// timing in the first detailed descriptor.
	e[24] = 0x08 | 0x04 | 0x02
	putChromaticity(e[25:35])
	// No established timings (35..37); standard timings unused.
	for i := 38; i < 54; i++ {
		e[i] = 0x01
	}
	putDetailedTiming(e[54:72], t)
	putRangeLimits(e[72:90], t)
	putName(e[90:108], "wasmvmm")
	e[108+3] = 0x10 // dummy descriptor
	e[126] = 0      // no extension blocks
	var sum byte
	for _, b := range e[:127] {
		sum += b
	}
	e[127] = -sum
	return e
}

// putChromaticity writes the sRGB primaries and D65 white point as 10-bit
// fractions.
func putChromaticity(b []byte) {
	// red x, y; green x, y; blue x, y; white x, y, in 1/1024.
	c := [8]uint32{655, 338, 307, 614, 154, 61, 320, 337}
	b[0] = byte((c[0]&3)<<6 | (c[1]&3)<<4 | (c[2]&3)<<2 | c[3]&3)
	b[1] = byte((c[4]&3)<<6 | (c[5]&3)<<4 | (c[6]&3)<<2 | c[7]&3)
	for i, v := range c {
		b[2+i] = byte(v >> 2)
	}
}

// putDetailedTiming writes an 18-byte detailed timing descriptor.
func putDetailedTiming(b []byte, t edidTiming) {
	binary.LittleEndian.PutUint16(b[0:], uint16(t.clock10k))
	b[2] = byte(t.hActive)
	b[3] = byte(t.hBlank)
	b[4] = byte((t.hActive>>8)<<4 | t.hBlank>>8)
	b[5] = byte(t.vActive)
	b[6] = byte(t.vBlank)
	b[7] = byte((t.vActive>>8)<<4 | t.vBlank>>8)
	b[8] = byte(edidHFrontPorch)
	b[9] = byte(edidHSync)
	b[10] = byte((edidVFrontPorch&0xf)<<4 | edidVSync&0xf)
	b[11] = byte((edidHFrontPorch>>8)<<6 | (edidHSync>>8)<<4 | (edidVFrontPorch>>4)<<2 | edidVSync>>4)
	b[12] = byte(t.widthMM)
	b[13] = byte(t.heightMM)
	b[14] = byte((t.widthMM>>8)<<4 | t.heightMM>>8)
	// Digital separate sync, horizontal polarity positive, vertical
	// negative (as CVT reduced blanking).
	b[17] = 0x18 | 0x02
}

// putRangeLimits writes a monitor range limits descriptor that includes
// timing t.
func putRangeLimits(b []byte, t edidTiming) {
	htotal := uint64(t.hActive + t.hBlank)
	vtotal := uint64(t.vActive + t.vBlank)
	clock := uint64(t.clock10k) * 10000
	hkHz := clock / htotal / 1000
	refresh := clock / htotal / vtotal
	b[3] = 0xfd
	b[5] = byte(min(refresh, 50))
	b[6] = byte(max(refresh+1, 75))
	b[7] = byte(max(1, min(hkHz, 255)))
	b[8] = byte(min(hkHz+1, 255))
	b[9] = byte((clock + 9999999) / 10000000) // in 10 MHz
	b[10] = 0x00                              // default GTF
	b[11] = 0x0a
	for i := 12; i < 18; i++ {
		b[i] = 0x20
	}
}

// putName writes a monitor name descriptor (at most 13 characters).
func putName(b []byte, name string) {
	b[3] = 0xfc
	text := b[5:18]
	n := copy(text, name)
	if n < len(text) {
		text[n] = 0x0a
		for i := n + 1; i < len(text); i++ {
			text[i] = 0x20
		}
	}
}
