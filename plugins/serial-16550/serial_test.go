//go:build !wasip1

// These tests load the built plugin with host/plugin (wazero) and drive it
// the way a guest's 8250 driver does: register accesses through the
// instance's port I/O calls, a console backend the test feeds and drains,
// the interrupt line as the device drives it, and a save/load through the
// registered vmstate schema into a fresh instance.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/abi"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
)

// console is a char backend held in memory: input the test feeds, output
// the device wrote, and an output capacity to make the backend block.
type console struct {
	mu     sync.Mutex
	in     []byte
	out    []byte
	outCap int // bytes the output holds before Write blocks; < 0: unbounded
	notify func()
}

func (c *console) Kind() abi.BackendKind { return abi.BackendChar }

func (c *console) TryRead(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.in) == 0 {
		return 0, plugin.ErrWouldBlock
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *console) roomLocked() int {
	if c.outCap < 0 {
		return 1 << 20
	}
	return c.outCap - len(c.out)
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(c.roomLocked(), len(p))
	if n <= 0 {
		return 0, plugin.ErrWouldBlock
	}
	c.out = append(c.out, p[:n]...)
	if n < len(p) {
		return n, plugin.ErrWouldBlock
	}
	return n, nil
}

func (c *console) Ready() abi.BackendEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ev abi.BackendEvent
	if len(c.in) > 0 {
		ev |= abi.EventReadable
	}
	if c.roomLocked() > 0 {
		ev |= abi.EventWritable
	}
	return ev
}

func (c *console) Watch(notify func()) {
	c.mu.Lock()
	c.notify = notify
	c.mu.Unlock()
}

func (c *console) signal() {
	c.mu.Lock()
	f := c.notify
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

// feed makes p available as input.
func (c *console) feed(p string) {
	c.mu.Lock()
	c.in = append(c.in, p...)
	c.mu.Unlock()
	c.signal()
}

// take returns and removes what the device wrote.
func (c *console) take() string {
	c.mu.Lock()
	s := string(c.out)
	c.out = nil
	c.mu.Unlock()
	c.signal()
	return s
}

func (c *console) setCap(n int) {
	c.mu.Lock()
	c.outCap = n
	c.mu.Unlock()
	c.signal()
}

func (c *console) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.in)
}

// testHost is the machine side of one device instance.
type testHost struct {
	clock *plugin.VMClock
	con   *console // nil: no console attached

	mu     sync.Mutex
	level  bool
	raises int
}

func (h *testHost) Memory() *guestmem.Memory { return nil }
func (h *testHost) Clock() plugin.Clock      { return h.clock }

func (h *testHost) SetIRQ(line int, level bool) error {
	if line != 0 {
		return fmt.Errorf("the UART has one interrupt line, got line %d", line)
	}
	h.mu.Lock()
	if level && !h.level {
		h.raises++
	}
	h.level = level
	h.mu.Unlock()
	return nil
}

func (h *testHost) Backend(kind abi.BackendKind, name string) (plugin.Backend, error) {
	if name == "console" && kind == abi.BackendChar && h.con != nil {
		return h.con, nil
	}
	return nil, plugin.ErrNoBackend
}

func (h *testHost) irq() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.level
}

// lockedBuffer collects log output from any goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// builtPlugin builds the plugins once per test binary.
var builtPlugin = sync.OnceValues(func() (string, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return "", fmt.Errorf("go toolchain: %w", err)
	}
	root, err := pluginbuild.RepoRoot(".")
	if err != nil {
		return "", err
	}
	out, err := pluginbuild.DefaultOutDir(root)
	if err != nil {
		return "", err
	}
	res, err := pluginbuild.Build(context.Background(), root, out, "serial-16550")
	if err != nil {
		return "", err
	}
	if len(res) != 1 {
		return "", errors.New("pluginbuild did not build serial-16550")
	}
	return res[0].Path, nil
})

// rig is one UART instance and its machine side.
type rig struct {
	t    testing.TB
	inst *plugin.Instance
	host *testHost
	con  *console
	log  *lockedBuffer
}

type rigOptions struct {
	noConsole bool
	props     plugin.PropertyValues
	rt        *plugin.Runtime
}

func newRuntime(t testing.TB) *plugin.Runtime {
	t.Helper()
	rt, err := plugin.NewRuntime(context.Background(), plugin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	return rt
}

func newRig(t testing.TB, opt rigOptions) *rig {
	t.Helper()
	path, err := builtPlugin()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("build plugin: %v", err)
		}
		t.Skipf("cannot build the plugin here: %v", err)
	}
	rt := opt.rt
	if rt == nil {
		rt = newRuntime(t)
	}
	mod, err := rt.Load(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, host: &testHost{clock: plugin.NewVMClock(true)}, log: &lockedBuffer{}}
	if !opt.noConsole {
		r.con = &console{outCap: -1}
		r.host.con = r.con
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: r.log, Level: hclog.Debug})
	inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "serial0", Host: r.host, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	var layers []plugin.PropertyValues
	if opt.props != nil {
		layers = append(layers, opt.props)
	}
	if err := inst.Realize(layers...); err != nil {
		t.Fatalf("realize: %v\n%s", err, r.log.String())
	}
	r.inst = inst
	t.Cleanup(func() {
		if err := inst.Err(); err != nil {
			t.Errorf("instance failed: %v", err)
		}
		if t.Failed() {
			t.Logf("plugin log:\n%s", r.log.String())
		}
	})
	return r
}

func (r *rig) out(reg uint32, v uint8) { r.inst.PIOWrite(0, reg, 1, uint32(v)) }
func (r *rig) in(reg uint32) uint8     { return uint8(r.inst.PIORead(0, reg, 1)) }

func (r *rig) expect(reg uint32, want uint8, what string) {
	r.t.Helper()
	if got := r.in(reg); got != want {
		r.t.Fatalf("%s: register %d = %#02x, want %#02x", what, reg, got, want)
	}
}

func (r *rig) expectIRQ(level bool, what string) {
	r.t.Helper()
	if got := r.host.irq(); got != level {
		r.t.Fatalf("%s: interrupt line %v, want %v", what, got, level)
	}
}

// eventually polls cond (which may touch registers) for up to 2 s.
func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// readAll reads n bytes from RBR, checking DR before each.
func (r *rig) readAll(n int) string {
	r.t.Helper()
	var b []byte
	for i := 0; i < n; i++ {
		if r.in(regLSR)&lsrDR == 0 {
			r.t.Fatalf("DR clear after %d of %d bytes (%q)", i, n, b)
		}
		b = append(b, r.in(regRBR))
	}
	return string(b)
}

// setup8N1 programs the line like Linux's set_termios at 115200 baud with
// the FIFOs enabled at trigger level fcrTrig.
func (r *rig) setup8N1(fcr uint8) {
	r.out(regLCR, lcrDLAB|0x03)
	r.out(regRBR, 1) // DLL
	r.out(regIER, 0) // DLM
	r.out(regLCR, 0x03)
	r.out(regIIR, fcr)
}

// TestLinuxAutoconfig follows the probe of Linux's 8250 driver
// (autoconfig and autoconfig_16550a) and expects it to find a 16550A.
func TestLinuxAutoconfig(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after reset")
	r.expect(regIIR, iirNone, "IIR after reset (FIFOs off)")
	r.expect(regMSR, msrIdle, "MSR after reset")

	// Is there a UART: IER must hold exactly the 4 enable bits.
	save := r.in(regIER)
	r.out(regIER, 0)
	r.expect(regIER, 0, "scratch test, IER cleared")
	r.out(regIER, 0xff)
	r.expect(regIER, 0x0f, "scratch test, IER set")
	r.out(regIER, save)

	// Loopback: MSR follows MCR (RTS -> CTS, OUT2 -> DCD).
	saveMCR, saveLCR := r.in(regMCR), r.in(regLCR)
	r.out(regMCR, mcrLoop|mcrOUT2|mcrRTS)
	if got := r.in(regMSR) & 0xf0; got != msrDCD|msrCTS {
		t.Fatalf("loopback MSR status = %#x, want %#x", got, msrDCD|msrCTS)
	}
	r.out(regMCR, saveMCR)

	// EFR probe: LCR=0xBF, write EFR (our FCR) 0, then enable the FIFOs
	// and read the FIFO bits of IIR: 3 means a 16550A.
	r.out(regLCR, 0xbf)
	r.out(regIIR, 0)
	r.out(regLCR, 0)
	r.out(regIIR, fcrEnable)
	if got := r.in(regIIR) >> 6; got != 3 {
		t.Fatalf("IIR FIFO bits = %d, want 3 (16550A)", got)
	}

	// autoconfig_16550a: no EFR (reads as IIR, non-zero) under either
	// configuration mode, so not a 16650 or later.
	r.out(regLCR, 0xbf)
	if r.in(regIIR) == 0 {
		t.Fatal("EFR reads as 0 in mode B: would be probed as a 16650")
	}
	r.out(regLCR, lcrDLAB)
	if r.in(regIIR) == 0 {
		t.Fatal("EFR reads as 0 in mode A: would be probed as a 16650")
	}
	// No 64-byte FIFO (16750): IIR bit 5 never sets.
	r.out(regLCR, 0)
	r.out(regIIR, fcrEnable|0x20)
	s1 := r.in(regIIR) & 0xe0
	r.out(regIIR, fcrEnable)
	r.out(regLCR, lcrDLAB)
	r.out(regIIR, fcrEnable|0x20)
	s2 := r.in(regIIR) & 0xe0
	r.out(regLCR, 0)
	if s1 != 0xc0 || s2 != 0xc0 {
		t.Fatalf("16750 probe: IIR bits %#x, %#x; want 0xc0, 0xc0", s1, s2)
	}
	// IER bit 6 (XScale UUE) does not stick.
	ier := r.in(regIER)
	r.out(regIER, ier|0x40)
	if r.in(regIER)&0x40 != 0 {
		t.Fatal("IER bit 6 sticks: would be probed as an XScale UART")
	}
	r.out(regIER, ier)
	r.out(regLCR, saveLCR)

	// Scratch register.
	for _, v := range []uint8{0x00, 0xa5, 0x5a, 0xff} {
		r.out(regSCR, v)
		r.expect(regSCR, v, "scratch register")
	}
}

// TestLinuxStartup runs serial8250_do_startup and set_termios and checks
// the THRE interrupt test the driver makes (UART_BUG_THRE).
func TestLinuxStartup(t *testing.T) {
	r := newRig(t, rigOptions{})
	// Clear the FIFOs, then leave them off.
	r.out(regIIR, fcrEnable)
	r.out(regIIR, fcrEnable|fcrClearRX|fcrClearTX)
	r.out(regIIR, 0)
	// Clear the interrupt registers.
	if r.in(regLSR) == 0xff {
		t.Fatal("LSR reads 0xff: no UART")
	}
	r.in(regRBR)
	r.in(regIIR)
	r.in(regMSR)
	r.out(regLCR, 0x03) // 8N1
	r.out(regMCR, mcrDTR|mcrRTS|mcrOUT2)

	// THRE test: enabling THRI with the transmitter empty interrupts at
	// once, and again after disabling and re-enabling.
	r.out(regIER, ierTHRI)
	r.expectIRQ(true, "IER=THRI with THR empty")
	iir1 := r.in(regIIR)
	r.out(regIER, 0)
	r.expectIRQ(false, "IER=0")
	r.out(regIER, ierTHRI)
	iir := r.in(regIIR)
	r.out(regIER, 0)
	if iir1&iirNone != 0 || iir&iirNone != 0 {
		t.Fatalf("THRE not re-asserted: IIR %#x then %#x", iir1, iir)
	}
	if iir1&0x0f != iirTHRI || iir&0x0f != iirTHRI {
		t.Fatalf("IIR = %#x, %#x; want THRI", iir1, iir)
	}

	r.setup8N1(fcrEnable | 0x80) // trigger 8, as Linux sets for a 16550A
	r.expect(regIIR, iirFIFOs|iirNone, "IIR with FIFOs, nothing pending")
	r.out(regLCR, lcrDLAB|0x03)
	r.expect(regRBR, 1, "DLL")
	r.expect(regIER, 0, "DLM")
	r.out(regLCR, 0x03)
	r.expect(regLCR, 0x03, "LCR")
	r.out(regIER, ierRDI|ierRLSI)
	r.expect(regIER, ierRDI|ierRLSI, "IER")
	r.expectIRQ(false, "nothing pending after startup")
}

func TestTransmit(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setup8N1(fcrEnable | fcrClearRX | fcrClearTX | 0x80)
	msg := "Linux version 6.1\r\n"
	for i := 0; i < len(msg); i++ {
		r.eventually("THRE", func() bool { return r.in(regLSR)&lsrTHRE != 0 })
		r.out(regRBR, msg[i])
	}
	if got := r.con.take(); got != msg {
		t.Fatalf("console got %q, want %q", got, msg)
	}
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after transmit")

	// Without FIFOs too.
	r.out(regIIR, 0)
	r.out(regRBR, 'x')
	if got := r.con.take(); got != "x" {
		t.Fatalf("console got %q", got)
	}
}

// TestTransmitBackpressure: output the backend cannot take waits in the
// transmit FIFO (THRE clear), and leaves in order when it drains.
func TestTransmitBackpressure(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setup8N1(fcrEnable | 0x80)
	r.out(regMCR, mcrOUT2)
	r.out(regIER, ierTHRI)
	r.in(regIIR) // acknowledge the THRE interrupt of enabling
	r.expectIRQ(false, "THRE acknowledged")

	r.con.setCap(4)
	msg := "0123456789abcdef"
	for i := 0; i < len(msg); i++ {
		r.out(regRBR, msg[i])
	}
	if lsr := r.in(regLSR); lsr&(lsrTHRE|lsrTEMT) != 0 {
		t.Fatalf("LSR = %#x with 12 bytes queued; THRE and TEMT must be clear", lsr)
	}
	r.expectIRQ(false, "no THRE interrupt while output is queued")
	var got strings.Builder
	got.WriteString(r.con.take()) // frees room; the device is told
	for got.Len() < len(msg) {
		r.eventually("more output", func() bool {
			r.con.mu.Lock()
			defer r.con.mu.Unlock()
			return len(r.con.out) > 0
		})
		got.WriteString(r.con.take())
	}
	if got.String() != msg {
		t.Fatalf("console got %q, want %q", got.String(), msg)
	}
	r.eventually("THRE interrupt after draining", func() bool { return r.host.irq() })
	r.expect(regIIR, iirFIFOs|iirTHRI, "IIR after draining")
	r.expect(regIIR, iirFIFOs|iirNone, "IIR read acknowledged THRE")
	r.expectIRQ(false, "THRE acknowledged")
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after draining")
}

func TestReceiveInterrupt(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setup8N1(fcrEnable | fcrClearRX | fcrClearTX) // trigger 1
	r.out(regMCR, mcrDTR|mcrRTS|mcrOUT2)
	r.out(regIER, ierRDI|ierRLSI)
	r.expectIRQ(false, "idle")

	r.con.feed("abc")
	r.eventually("interrupt for received data", r.host.irq)
	r.eventually("three bytes", func() bool { return r.con.pending() == 0 })
	r.expect(regIIR, iirFIFOs|iirRDI, "IIR with data at trigger 1")
	if got := r.readAll(3); got != "abc" {
		t.Fatalf("read %q", got)
	}
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after draining")
	r.expect(regIIR, iirFIFOs|iirNone, "IIR after draining")
	r.expectIRQ(false, "drained")

	// Trigger 8: fewer bytes report a character timeout instead.
	r.out(regIIR, fcrEnable|0x80)
	r.con.feed("hi")
	r.eventually("timeout interrupt", r.host.irq)
	r.expect(regIIR, iirFIFOs|iirTimeout, "IIR character timeout")
	if got := r.readAll(2); got != "hi" {
		t.Fatalf("read %q", got)
	}
	r.expectIRQ(false, "timeout cleared by reading")

	// Reaching the trigger level reports received data at once.
	r.con.feed("ABCDEFGHIJ")
	r.eventually("trigger level", func() bool { return r.in(regIIR) == iirFIFOs|iirRDI })
	r.expectIRQ(true, "trigger level reached")
	if got := r.readAll(10); got != "ABCDEFGHIJ" {
		t.Fatalf("read %q", got)
	}
	r.expectIRQ(false, "drained")

	// Without FIFOs: one holding register, flow controlled.
	r.out(regIIR, 0)
	r.con.feed("xyz")
	var got []byte
	for len(got) < 3 {
		r.eventually("DR", func() bool { return r.in(regLSR)&lsrDR != 0 })
		r.expectIRQ(true, "data ready without FIFOs")
		r.expect(regIIR, iirRDI, "IIR without FIFOs")
		got = append(got, r.in(regRBR))
	}
	if string(got) != "xyz" {
		t.Fatalf("read %q", got)
	}
	if lsr := r.in(regLSR); lsr&lsrOE != 0 {
		t.Fatalf("overrun with flow control: LSR %#x", lsr)
	}
	r.expectIRQ(false, "drained")
}

// TestReceiveFlowControl: input beyond the FIFO waits in the backend; no
// byte is lost and no overrun is reported.
func TestReceiveFlowControl(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setup8N1(fcrEnable | 0xc0) // trigger 14
	var in strings.Builder
	for i := 0; i < 40; i++ {
		in.WriteByte(byte('!' + i))
	}
	r.con.feed(in.String())
	r.eventually("FIFO full", func() bool { return r.con.pending() == 40-fifoSize })
	time.Sleep(5 * time.Millisecond)
	if p := r.con.pending(); p != 40-fifoSize {
		t.Fatalf("backend holds %d bytes, want %d", p, 40-fifoSize)
	}
	var got []byte
	for len(got) < 40 {
		r.eventually("data", func() bool { return r.in(regLSR)&lsrDR != 0 })
		got = append(got, r.in(regRBR))
	}
	if string(got) != in.String() {
		t.Fatalf("read %q, want %q", got, in.String())
	}
	if lsr := r.in(regLSR); lsr&lsrOE != 0 {
		t.Fatalf("overrun: LSR %#x", lsr)
	}
}

func TestLoopback(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setup8N1(fcrEnable | 0x40) // trigger 4
	r.out(regIER, ierRDI|ierMSI|ierRLSI)
	r.out(regMCR, mcrLoop)
	r.in(regMSR) // clear the deltas of entering loopback
	r.expectIRQ(false, "loopback idle")

	// Modem outputs appear as inputs, with delta bits and an interrupt.
	r.out(regMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT1|mcrOUT2)
	r.expectIRQ(true, "modem status change")
	r.expect(regIIR, iirFIFOs|iirMSI, "IIR modem status")
	r.expect(regMSR, msrCTS|msrDSR|msrRI|msrDCD|msrDCTS|msrDDSR|msrDDCD, "MSR with deltas")
	r.expect(regMSR, msrCTS|msrDSR|msrRI|msrDCD, "MSR deltas cleared by reading")
	r.expectIRQ(false, "deltas read")
	r.out(regMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT2) // RI falls: trailing edge
	r.expect(regMSR, msrCTS|msrDSR|msrDCD|msrTERI, "MSR trailing edge of RI")

	// Output goes to the receiver, not to the console.
	for _, c := range []byte("loop") {
		r.out(regRBR, c)
	}
	r.expect(regIIR, iirFIFOs|iirRDI, "IIR after looping 4 bytes back")
	if got := r.readAll(4); got != "loop" {
		t.Fatalf("looped back %q", got)
	}
	if out := r.con.take(); out != "" {
		t.Fatalf("console got %q in loopback", out)
	}
	// Input from the console is not received in loopback.
	r.con.feed("z")
	time.Sleep(5 * time.Millisecond)
	if r.in(regLSR)&lsrDR != 0 || r.con.pending() != 1 {
		t.Fatal("console input received in loopback")
	}

	// Overrun: 17 bytes into a 16-byte FIFO.
	for i := 0; i < fifoSize+1; i++ {
		r.out(regRBR, byte('a'+i))
	}
	r.expectIRQ(true, "overrun")
	r.expect(regIIR, iirFIFOs|iirRLSI, "IIR line status")
	if lsr := r.in(regLSR); lsr&(lsrOE|lsrDR) != lsrOE|lsrDR {
		t.Fatalf("LSR = %#x, want OE and DR", lsr)
	}
	if lsr := r.in(regLSR); lsr&lsrOE != 0 {
		t.Fatalf("OE not cleared by reading LSR: %#x", lsr)
	}
	if got := r.readAll(fifoSize); got != "abcdefghijklmnop" {
		t.Fatalf("FIFO after overrun %q", got)
	}

	// Leaving loopback: the queued console input arrives.
	r.out(regMCR, mcrOUT2)
	r.eventually("console input after loopback", func() bool { return r.in(regLSR)&lsrDR != 0 })
	if got := r.in(regRBR); got != 'z' {
		t.Fatalf("read %q", got)
	}
}

func TestNoConsole(t *testing.T) {
	r := newRig(t, rigOptions{noConsole: true})
	if len(r.inst.Backends()) != 0 {
		t.Fatalf("backends: %+v", r.inst.Backends())
	}
	r.setup8N1(fcrEnable)
	for _, c := range []byte("discarded") {
		r.out(regRBR, c)
	}
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR: output discarded at once")
}

func TestResetAndProperties(t *testing.T) {
	r := newRig(t, rigOptions{props: plugin.PropertyValues{"baudbase": uint64(1843200 / 16)}})
	info := r.inst.Info()
	if info.Name != "serial-16550" || len(info.Properties) != 1 || info.Properties[0].Name != "baudbase" || info.Properties[0].DefaultInt != 115200 {
		t.Fatalf("device info %+v", info)
	}
	if regs := r.inst.Regions(); len(regs) != 1 || regs[0].Kind != abi.RegionPIO || regs[0].Size != 8 {
		t.Fatalf("regions %+v", regs)
	}
	r.setup8N1(fcrEnable | 0xc0)
	r.out(regMCR, mcrLoop|mcrOUT2|mcrDTR)
	r.out(regIER, ierRDI|ierTHRI)
	r.out(regSCR, 0x42)
	r.out(regRBR, 'q')
	if err := r.inst.Reset(); err != nil {
		t.Fatal(err)
	}
	r.expectIRQ(false, "after reset")
	r.expect(regIER, 0, "IER after reset")
	r.expect(regIIR, iirNone, "IIR after reset")
	r.expect(regLCR, 0, "LCR after reset")
	r.expect(regMCR, 0, "MCR after reset")
	r.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after reset")
	r.expect(regMSR, msrIdle, "MSR after reset")
	r.expect(regSCR, 0, "SCR after reset")

	// A zero baud base is refused at realize.
	rt := newRuntime(t)
	path, _ := builtPlugin()
	mod, err := rt.Load(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "bad", Host: &testHost{clock: plugin.NewVMClock(true)}})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if err := inst.Realize(plugin.PropertyValues{"baudbase": 0}); err == nil {
		t.Fatal("baudbase 0 accepted")
	}
}

// TestNoMMIOHandler: the SDK answers MMIO calls for a device without an
// MMIO handler with all ones.
func TestNoMMIOHandler(t *testing.T) {
	r := newRig(t, rigOptions{})
	for size, want := range map[int]uint64{1: 0xff, 2: 0xffff, 4: 0xffffffff, 8: ^uint64(0)} {
		if got := r.inst.MMIORead(0, 0, size); got != want {
			t.Errorf("MMIO read of %d bytes = %#x, want %#x", size, got, want)
		}
	}
	r.inst.MMIOWrite(0, 0, 1, 0)
	if n := strings.Count(r.log.String(), "no MMIO handler"); n != 1 {
		t.Errorf("logged the missing handler %d times, want once:\n%s", n, r.log.String())
	}
}

// fieldImage is the bytes of one field element's memory, by path.
type fieldImage map[string][]byte

// walkSection visits every field (struct members element by element) of a
// section that exists on the wire, with its absolute address.
func walkSection(inst *plugin.Instance, prefix string, s *abi.Section, base uint32, visit func(path string, addr, n uint32)) {
	for k := range s.Fields {
		f := &s.Fields[k]
		if !inst.FieldExists(f) {
			continue
		}
		path := prefix + "." + f.Name
		if f.Type != abi.FieldStruct {
			visit(path, base+f.Offset, f.Size*f.Count)
			continue
		}
		for e := uint32(0); e < f.Count; e++ {
			walkSection(inst, fmt.Sprintf("%s[%d]", path, e), f.Struct, base+f.Offset+e*f.Size, visit)
		}
	}
}

// save reads every registered field the way the migration code does:
// pre-save, the section's fields, then each needed subsection.
func save(t *testing.T, inst *plugin.Instance) (fieldImage, []string) {
	t.Helper()
	if err := inst.PreSave(); err != nil {
		t.Fatal(err)
	}
	img := fieldImage{}
	var subs []string
	read := func(path string, addr, n uint32) {
		b, err := inst.ReadMemory(addr, n)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		img[path] = b
	}
	for _, s := range inst.Sections() {
		walkSection(inst, s.Name, s, 0, read)
		for k := range s.Subsections {
			sub := &s.Subsections[k]
			if inst.SubsectionNeeded(sub.NeededID) {
				subs = append(subs, sub.Name)
				walkSection(inst, sub.Name, sub, 0, read)
			}
		}
	}
	return img, subs
}

// load writes an image into an instance's fields and runs post-load.
func load(t *testing.T, inst *plugin.Instance, img fieldImage, subs []string) {
	t.Helper()
	written := 0
	write := func(path string, addr, n uint32) {
		b, ok := img[path]
		if !ok {
			t.Fatalf("field %s missing from the image", path)
		}
		if uint32(len(b)) != n {
			t.Fatalf("field %s: %d bytes in the image, %d in the schema", path, len(b), n)
		}
		if err := inst.WriteMemory(addr, b); err != nil {
			t.Fatalf("write %s: %v", path, err)
		}
		written++
	}
	for _, s := range inst.Sections() {
		walkSection(inst, s.Name, s, 0, write)
		for k := range s.Subsections {
			sub := &s.Subsections[k]
			for _, name := range subs {
				if name == sub.Name {
					walkSection(inst, sub.Name, sub, 0, write)
				}
			}
		}
		if err := inst.PostLoad(s.VersionID); err != nil {
			t.Fatalf("post-load: %v", err)
		}
	}
	if written != len(img) {
		t.Fatalf("wrote %d fields of %d", written, len(img))
	}
}

// TestSaveLoad fills registers and both FIFOs, saves through the schema,
// loads into a fresh instance and compares state and behaviour.
func TestSaveLoad(t *testing.T) {
	rt := newRuntime(t)
	src := newRig(t, rigOptions{rt: rt})
	sections := src.inst.Sections()
	if len(sections) != 1 || sections[0].Name != "serial" || len(sections[0].Subsections) != 1 || sections[0].Subsections[0].Name != "serial/fifo" {
		t.Fatalf("sections: %+v", sections)
	}

	src.setup8N1(fcrEnable | 0xc0) // trigger 14: 5 bytes stay below it
	src.out(regLCR, lcrDLAB|0x1b)  // 8E1, divisor 0x0203
	src.out(regRBR, 0x03)
	src.out(regIER, 0x02)
	src.out(regLCR, 0x1b)
	src.out(regMCR, mcrDTR|mcrOUT2)
	src.out(regSCR, 0x5c)
	src.out(regIER, ierRDI|ierRLSI|ierMSI)
	src.con.feed("hello")
	src.eventually("5 bytes received", func() bool { return src.con.pending() == 0 })
	src.con.setCap(0) // output blocks: the bytes stay in the TX FIFO
	for _, c := range []byte("queued!") {
		src.out(regRBR, c)
	}

	img, subs := save(t, src.inst)
	if len(subs) != 1 || subs[0] != "serial/fifo" {
		t.Fatalf("subsections saved: %v", subs)
	}
	if c := img["serial/fifo.rx[0].count"]; len(c) != 1 || c[0] != 5 {
		t.Fatalf("rx count in the image: %v", c)
	}
	if c := img["serial/fifo.tx[0].count"]; len(c) != 1 || c[0] != 7 {
		t.Fatalf("tx count in the image: %v", c)
	}

	dst := newRig(t, rigOptions{rt: rt})
	dst.con.setCap(0)
	load(t, dst.inst, img, subs)
	again, _ := save(t, dst.inst)
	for path, b := range img {
		if !bytes.Equal(again[path], b) {
			t.Errorf("field %s: loaded %x, saved %x", path, again[path], b)
		}
	}

	// Every register reads the same on both (reads have side effects, so
	// the same sequence runs on both).
	for _, reg := range []uint32{regIER, regIIR, regLCR, regMCR, regLSR, regMSR, regSCR} {
		a, b := src.in(reg), dst.in(reg)
		if a != b {
			t.Errorf("register %d: source %#x, destination %#x", reg, a, b)
		}
	}
	for _, rr := range []*rig{src, dst} {
		rr.out(regLCR, lcrDLAB|0x1b)
	}
	if a, b := src.in(regRBR), dst.in(regRBR); a != 0x03 || b != 0x03 {
		t.Errorf("DLL: source %#x, destination %#x", a, b)
	}
	if a, b := src.in(regIER), dst.in(regIER); a != 0x02 || b != 0x02 {
		t.Errorf("DLM: source %#x, destination %#x", a, b)
	}
	for _, rr := range []*rig{src, dst} {
		rr.out(regLCR, 0x1b)
	}

	// The character timeout is re-armed after the load: the 5 bytes below
	// the trigger interrupt on the destination too.
	dst.eventually("timeout interrupt after load", dst.host.irq)
	dst.expect(regIIR, iirFIFOs|iirTimeout, "IIR on the destination")

	// The queued bytes come out in order on the destination.
	if got := dst.readAll(5); got != "hello" {
		t.Fatalf("destination received %q", got)
	}
	dst.con.setCap(-1)
	dst.eventually("queued output", func() bool { return dst.in(regLSR)&lsrTEMT != 0 })
	if got := dst.con.take(); got != "queued!" {
		t.Fatalf("destination sent %q", got)
	}
	// And the device goes on working.
	dst.out(regRBR, '.')
	dst.con.feed("more")
	dst.eventually("more input", func() bool { return dst.con.pending() == 0 })
	if got := dst.con.take(); got != "." {
		t.Fatalf("destination sent %q", got)
	}
	if got := dst.readAll(4); got != "more" {
		t.Fatalf("destination received %q", got)
	}
}

// TestLoadWithoutFIFOSubsection: a stream without serial/fifo (FIFOs off
// and empty at the source) empties the destination's FIFOs.
func TestLoadWithoutFIFOSubsection(t *testing.T) {
	rt := newRuntime(t)
	src := newRig(t, rigOptions{rt: rt})
	src.setup8N1(0)
	img, subs := save(t, src.inst)
	if len(subs) != 0 {
		t.Fatalf("subsections saved: %v", subs)
	}
	dst := newRig(t, rigOptions{rt: rt})
	dst.setup8N1(fcrEnable | 0xc0)
	dst.con.setCap(0)
	dst.out(regRBR, 'x')
	dst.out(regMCR, mcrLoop)
	dst.out(regRBR, 'y')
	dst.out(regMCR, 0)
	load(t, dst.inst, img, subs)
	dst.expect(regLSR, lsrTHRE|lsrTEMT, "LSR after loading empty FIFOs")
	dst.expect(regIIR, iirNone, "IIR after load")
}

// TestLoadRejectsCorruptFIFO: post-load refuses FIFO indices outside the
// ring (a corrupt or hostile stream).
func TestLoadRejectsCorruptFIFO(t *testing.T) {
	rt := newRuntime(t)
	src := newRig(t, rigOptions{rt: rt})
	src.setup8N1(fcrEnable)
	img, subs := save(t, src.inst)
	img["serial/fifo.rx[0].count"] = []byte{200}
	dst := newRig(t, rigOptions{rt: rt})
	for _, s := range dst.inst.Sections() {
		walkSection(dst.inst, s.Name, s, 0, func(path string, addr, n uint32) {
			_ = dst.inst.WriteMemory(addr, img[path])
		})
		walkSection(dst.inst, s.Subsections[0].Name, &s.Subsections[0], 0, func(path string, addr, n uint32) {
			_ = dst.inst.WriteMemory(addr, img[path])
		})
		if err := dst.inst.PostLoad(s.VersionID); err == nil || !strings.Contains(dst.log.String(), "rx head 0 count 200") {
			t.Fatalf("corrupt FIFO accepted: %v\n%s", err, dst.log.String())
		}
	}
	_ = subs
}

// TestRegisterPathsDoNotAllocate runs the register handlers natively (the
// SDK's host calls are stand-ins on this platform) and counts allocations:
// guest register accesses must not allocate.
func TestRegisterPathsDoNotAllocate(t *testing.T) {
	u := &uart{}
	u.Reset()
	u.write(regLCR, 0x03)
	u.write(regIIR, fcrEnable|0x40)
	u.write(regIER, ierRDI|ierTHRI|ierRLSI|ierMSI)
	u.write(regMCR, mcrLoop|mcrOUT2)
	allocs := testing.AllocsPerRun(1000, func() {
		for _, c := range []byte("abcd") {
			u.PIOWrite(0, regRBR, 1, uint32(c))
		}
		u.PIORead(0, regIIR, 1)
		u.PIORead(0, regLSR, 1)
		u.PIORead(0, regMSR, 1)
		for i := 0; i < 4; i++ {
			u.PIORead(0, regRBR, 1)
		}
		u.PIOWrite(0, regSCR, 1, 7)
		u.TimerFired(timerTimeout)
	})
	if allocs != 0 {
		t.Fatalf("register accesses allocate %v times per run", allocs)
	}
	if got := queues.RX.Count; got != 0 {
		t.Fatalf("loopback left %d bytes", got)
	}
}

// BenchmarkPIO measures register accesses through host/plugin: a
// scratch-register write and read, and a THR write that reaches the
// console backend.
func BenchmarkPIO(b *testing.B) {
	r := newRig(b, rigOptions{})
	r.setup8N1(fcrEnable)
	b.Run("scratch-write-read", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r.out(regSCR, uint8(i))
			if r.in(regSCR) != uint8(i) {
				b.Fatal("scratch mismatch")
			}
		}
	})
	b.Run("lsr-read", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r.in(regLSR)
		}
	})
	b.Run("thr-write-to-console", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r.out(regRBR, 'x')
			if i%4096 == 4095 {
				r.con.take()
			}
		}
	})
}

// FuzzRegisters drives the register logic natively with arbitrary access
// sequences (pairs of bytes: register and direction in the first, value
// in the second) and checks the invariants the rest of the device relies
// on after every access.
func FuzzRegisters(f *testing.F) {
	f.Add([]byte{0x83, 0x03, 0x82, 0x07, 0x84, 0x10, 0x80, 'a', 0x80, 'b', 0x00, 0, 0x05, 0})
	f.Add([]byte{0x82, 0x01, 0x84, 0x10, 0x80, 1, 0x80, 2, 0x80, 3, 0x82, 0x00, 0x02, 0, 0x00, 0})
	f.Add([]byte{0x81, 0x0f, 0x84, 0x1f, 0x06, 0, 0x84, 0x00, 0x06, 0, 0x02, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u := &uart{}
		u.Reset()
		for i := 0; i+1 < len(ops); i += 2 {
			reg, v := uint32(ops[i]&7), ops[i+1]
			if ops[i]&0x80 != 0 {
				u.write(reg, v)
			} else {
				u.read(reg)
			}
			if err := checkInvariants(); err != nil {
				t.Fatalf("after op %d (%#x %#x): %v", i/2, ops[i], v, err)
			}
		}
	})
}

func checkInvariants() error {
	for _, q := range []*fifo{&queues.RX, &queues.TX} {
		if q.Head >= fifoSize || q.Count > capacity() {
			return fmt.Errorf("fifo head %d count %d, capacity %d", q.Head, q.Count, capacity())
		}
	}
	if (st.LSR&lsrDR != 0) != (queues.RX.Count != 0) {
		return fmt.Errorf("LSR %#x with %d bytes received", st.LSR, queues.RX.Count)
	}
	// Without a console, output leaves (or loops back) at once.
	if queues.TX.Count != 0 || st.LSR&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		return fmt.Errorf("LSR %#x with %d bytes queued", st.LSR, queues.TX.Count)
	}
	if st.IER&^ierMask != 0 || st.MCR&^mcrMask != 0 {
		return fmt.Errorf("IER %#x MCR %#x beyond their bits", st.IER, st.MCR)
	}
	if id := iirID(); id&^0x0f != 0 || id&1 == 1 && id != iirNone {
		return fmt.Errorf("IIR id %#x", id)
	}
	return nil
}

// BenchmarkInstantiateRealize measures creating one UART: instantiate
// (with _initialize and dev_describe) and realize, from a loaded module.
func BenchmarkInstantiateRealize(b *testing.B) {
	path, err := builtPlugin()
	if err != nil {
		b.Skip(err)
	}
	rt := newRuntime(b)
	mod, err := rt.Load(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	host := &testHost{clock: plugin.NewVMClock(true), con: &console{outCap: -1}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst, err := mod.Instantiate(context.Background(), plugin.InstanceConfig{Name: "serial0", Host: host})
		if err != nil {
			b.Fatal(err)
		}
		if err := inst.Realize(); err != nil {
			b.Fatal(err)
		}
		inst.Close()
	}
}
