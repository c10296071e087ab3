package machine

import (
	"sync"
	"time"
)

// The legacy ports are host devices, not plugins: each one is a few lines
// that act on the machine itself (reset, power-off, suspend), which a
// sandboxed plugin cannot and should not be able to do, and none has state
// worth migrating except the ACPI PM registers, which are tiny and saved with
// the machine's own state.
const (
	portPOST      = 0x80  // POST code sink
	portI8042Data = 0x60  // i8042 data
	portI8042Cmd  = 0x64  // i8042 command/status
	portResetCtl  = 0xcf9 // PCI reset control
	portPM1aEvt   = 0x600 // ACPI PM1a_EVT_BLK: status (2 bytes), enable (2 bytes)
	portPM1aCnt   = 0x604 // ACPI PM1a_CNT_BLK (2 bytes)
	portPMTimer   = 0x608 // ACPI PM timer (4 bytes, 3.579545 MHz, 24 bits)

	i8042CmdReset  = 0xfe
	resetCtlSystem = 0x02 // system reset (with the CPU reset bit 0x04)
	resetCtlCPU    = 0x04

	pm1SCIEn       = 1 << 0 // reads as 1: the FADT has no SMI_CMD, so the platform is always in ACPI mode
	pm1SLPEn       = 1 << 13
	pm1SLPTypShift = 10
	pm1SLPTypMask  = 7 << pm1SLPTypShift
	pm1WakSts      = 1 << 15
	slpTypS5       = 0 // matches the DSDT's _S5_ package
	slpTypS3       = 1 // matches the DSDT's _S3_ package
	pmTimerHz      = 3579545
)

// legacyDevice serves the legacy ports through the bus.
type legacyDevice struct {
	m     *Machine
	start time.Time
}

// Region numbers of the legacy device on the PIO bus.
const (
	regPOST = iota
	regI8042Data
	regI8042Cmd
	regResetCtl
	regPM1aEvt
	regPM1aCnt
	regPMTimer
)

func (m *Machine) addLegacyDevices() error {
	d := &legacyDevice{m: m, start: time.Now()}
	for _, r := range []struct {
		port, size uint64
		name       string
		region     int
	}{
		{portPOST, 1, "post", regPOST},
		{portI8042Data, 1, "i8042-data", regI8042Data},
		{portI8042Cmd, 1, "i8042-cmd", regI8042Cmd},
		{portResetCtl, 1, "reset-control", regResetCtl},
		{portPM1aEvt, 4, "acpi-pm1a-evt", regPM1aEvt},
		{portPM1aCnt, 2, "acpi-pm1a-cnt", regPM1aCnt},
		{portPMTimer, 4, "acpi-pm-timer", regPMTimer},
	} {
		if err := m.PIO.Add(r.port, r.size, r.name, d, r.region); err != nil {
			return err
		}
	}
	return nil
}

// pmState holds the ACPI PM1a registers.
type pmState struct {
	mu     sync.Mutex
	status uint16
	enable uint16
	cnt    uint16
}

func (p *pmState) reset() {
	p.mu.Lock()
	p.status, p.enable, p.cnt = 0, 0, 0
	p.mu.Unlock()
}

// wake sets WAK_STS, as a platform does on resume from S3.
func (p *pmState) wake() {
	p.mu.Lock()
	p.status |= pm1WakSts
	p.mu.Unlock()
}

func (d *legacyDevice) Read(region int, off uint64, size int) uint64 {
	pm := &d.m.pm
	switch region {
	case regI8042Cmd:
		return 0 // status: no data, input buffer empty
	case regResetCtl:
		return 0
	case regPM1aEvt:
		pm.mu.Lock()
		v := uint64(pm.status) | uint64(pm.enable)<<16
		pm.mu.Unlock()
		return v >> (8 * off) & mask(size)
	case regPM1aCnt:
		pm.mu.Lock()
		v := uint64(pm.cnt | pm1SCIEn)
		pm.mu.Unlock()
		return v >> (8 * off) & mask(size)
	case regPMTimer:
		ticks := uint64(time.Since(d.start)) * pmTimerHz / uint64(time.Second)
		return (ticks & 0xffffff) >> (8 * off) & mask(size)
	}
	return mask(size)
}

func (d *legacyDevice) Write(region int, off uint64, size int, v uint64) {
	m := d.m
	pm := &m.pm
	switch region {
	case regI8042Cmd:
		if v&0xff == i8042CmdReset {
			m.log.Info("guest requested a reset through the i8042")
			m.guestReset()
		}
	case regResetCtl:
		if v&resetCtlCPU != 0 {
			m.log.Info("guest requested a reset through port 0xcf9")
			m.guestReset()
		}
	case regPM1aEvt:
		pm.mu.Lock()
		full := uint32(pm.status) | uint32(pm.enable)<<16
		w := uint32(v&mask(size)) << (8 * off)
		// Status bits are write-one-to-clear; enable bits are plain.
		status := uint16(full) &^ uint16(w)
		if off+uint64(size) > 2 {
			pm.enable = uint16(w >> 16)
		}
		if off < 2 {
			pm.status = status
		}
		pm.mu.Unlock()
	case regPM1aCnt:
		val := uint16(v << (8 * off))
		pm.mu.Lock()
		pm.cnt = val &^ pm1SLPEn
		pm.mu.Unlock()
		if val&pm1SLPEn != 0 {
			switch (val & pm1SLPTypMask) >> pm1SLPTypShift {
			case slpTypS5:
				m.log.Info("guest requested power-off (ACPI S5)")
				m.Shutdown("guest-shutdown", true)
			case slpTypS3:
				m.log.Info("guest requested suspend to RAM (ACPI S3)")
				m.suspend()
			}
		}
	}
}

func mask(size int) uint64 {
	if size >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*size) - 1
}
