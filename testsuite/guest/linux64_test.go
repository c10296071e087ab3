package guest

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/host/kvm"
)

// A minimal loader and exit loop, written here to exercise the guest's
// 64-bit Linux boot protocol entry on the real /dev/kvm before wasmvmm's own
// machine code boots it: ELF loaded at its physical addresses, a zero page
// with E820 table and command line, an identity map of the low 4 GiB, flat
// __BOOT_CS/__BOOT_DS segments, RSI = zero page. Serial output (port 0x3f8)
// is collected; every other port reads as 0xff and swallows writes.

const (
	lxGDT       = 0x1000
	lxBootParam = 0x7000
	lxPML4      = 0x9000 // PML4, PDPT, then 4 PDs
	lxCmdline   = 0x20000
	lxMemSize   = 64 << 20
	lxBootCS    = 0x10
	lxBootDS    = 0x18
)

// lxEvent is one thing the guest did that the test may care about.
type lxEvent struct {
	line     string // a complete serial line (without '\n')
	ioPort   uint16 // a write to a port other than the UART
	ioSize   uint8
	ioValue  uint32
	shutdown bool // triple fault
	halted   bool // HLT (no in-kernel irqchip: it reaches us)
	kicked   bool // the test's own Kick
}

type lxGuest struct {
	mem        []byte
	vcpu       *kvm.VCPU
	out        []string
	allowPanic bool // GUEST PANIC lines go to the handler instead of failing
}

func loadLinux64(t *testing.T, elfPath, cmdline string) *lxGuest {
	t.Helper()
	_, err := os.Stat("/dev/kvm")
	requireTool(t, "/dev/kvm", err)
	sys, err := kvm.Open("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	mem, err := unix.Mmap(-1, 0, lxMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := vm.SetUserMemoryRegion(0, 0, mem, 0); err != nil {
		t.Fatal(err)
	}

	f, err := elf.Open(elfPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Paddr+p.Memsz > lxMemSize {
			t.Fatalf("segment at %#x does not fit", p.Paddr)
		}
		if _, err := p.ReadAt(mem[p.Paddr:p.Paddr+p.Filesz], 0); err != nil {
			t.Fatal(err)
		}
		// mmap'd memory is zero: p_memsz - p_filesz is already zero-filled.
	}

	le := binary.LittleEndian
	bp := mem[lxBootParam : lxBootParam+4096]
	e820 := [][3]uint64{{0, 0x9fc00, 1}, {0x9fc00, 0x400, 2}, {0x100000, lxMemSize - 0x100000, 1}}
	for i, e := range e820 {
		off := 0x2d0 + 20*i
		le.PutUint64(bp[off:], e[0])
		le.PutUint64(bp[off+8:], e[1])
		le.PutUint32(bp[off+16:], uint32(e[2]))
	}
	bp[0x1e8] = byte(len(e820))
	le.PutUint32(bp[0x228:], lxCmdline)
	copy(mem[lxCmdline:], cmdline+"\x00")

	// Identity map of [0, 4 GiB) with 2 MiB pages, supervisor only (the
	// guest must switch to its own tables before ring 3 needs them).
	le.PutUint64(mem[lxPML4:], (lxPML4+0x1000)|3)
	for g := uint64(0); g < 4; g++ {
		pd := uint64(lxPML4 + 0x2000 + 0x1000*g)
		le.PutUint64(mem[lxPML4+0x1000+8*g:], pd|3)
		for i := uint64(0); i < 512; i++ {
			le.PutUint64(mem[pd+8*i:], (g<<30|i<<21)|0x83)
		}
	}
	le.PutUint64(mem[lxGDT+lxBootCS:], 0x00af9b000000ffff)
	le.PutUint64(mem[lxGDT+lxBootDS:], 0x00cf93000000ffff)

	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vcpu.Close() })
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := vcpu.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	s, err := vcpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	code := kvm.Segment{Selector: lxBootCS, Limit: 0xffffffff, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := kvm.Segment{Selector: lxBootDS, Limit: 0xffffffff, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvm.Segment{Limit: 0x67, Type: 0xb, Present: 1}
	s.LDT = kvm.Segment{Limit: 0xffff, Type: 0x2, Present: 1}
	s.GDT = kvm.DTable{Base: lxGDT, Limit: 0x1f}
	s.IDT = kvm.DTable{}
	s.CR0 = 0x80050033 // PG | AM | WP | NE | ET | MP | PE
	s.CR3 = lxPML4
	s.CR4 = 0x20   // PAE
	s.EFER = 0x500 // LMA | LME
	if err := vcpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := vcpu.SetRegs(kvm.Regs{RIP: f.Entry, RSI: lxBootParam, RFLAGS: 0x2}); err != nil {
		t.Fatal(err)
	}
	return &lxGuest{mem: mem, vcpu: vcpu}
}

// run runs the vCPU on a locked thread, calling handle (on that thread, so
// the guest is stopped meanwhile) for every event until it returns true.
// It fails the test on an internal error or when timeout passes.
func (g *lxGuest) run(t *testing.T, timeout time.Duration, handle func(lxEvent) bool) {
	t.Helper()
	var timedOut atomic.Bool
	timer := time.AfterFunc(timeout, func() { timedOut.Store(true); g.vcpu.Kick() })
	defer timer.Stop()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		errc <- g.loop(&timedOut, handle)
	}()
	if err := <-errc; err != nil {
		t.Fatalf("%v; serial output:\n%s", err, strings.Join(g.out, "\n"))
	}
}

func (g *lxGuest) loop(timedOut *atomic.Bool, handle func(lxEvent) bool) error {
	var line []byte
	dlab := false // LCR.DLAB: 0x3f8/0x3f9 are the divisor latch
	for {
		exit, err := g.vcpu.Run()
		if err != nil {
			return err
		}
		switch exit.Reason {
		case kvm.ExitIntr:
			if timedOut.Load() {
				return errors.New("timed out")
			}
			if exit.Kicked && handle(lxEvent{kicked: true}) {
				return nil
			}
		case kvm.ExitIO:
			io := exit.IO
			switch {
			case io.Direction == kvm.IOIn && io.Port == 0x3fd:
				io.Data[0] = 0x60 // LSR: THRE | TEMT
			case io.Direction == kvm.IOIn:
				for i := range io.Data {
					io.Data[i] = 0xff
				}
			case io.Port == 0x3fb:
				dlab = io.Data[0]&0x80 != 0
			case io.Port == 0x3f8 && !dlab:
				for _, b := range io.Data {
					if b != '\n' {
						line = append(line, b)
						continue
					}
					l := string(line)
					line = line[:0]
					g.out = append(g.out, l)
					if handle(lxEvent{line: l}) {
						return nil
					}
					if strings.Contains(l, "GUEST PANIC") && !g.allowPanic {
						return fmt.Errorf("guest panic: %s", l)
					}
				}
			case io.Port >= 0x3f8 && io.Port <= 0x3ff:
				// other UART registers: nothing to model
			default:
				var v uint32
				for i := len(io.Data) - 1; i >= 0; i-- {
					v = v<<8 | uint32(io.Data[i])
				}
				if handle(lxEvent{ioPort: io.Port, ioSize: io.Size, ioValue: v}) {
					return nil
				}
			}
		case kvm.ExitMMIO:
			if !exit.MMIO.IsWrite {
				for i := range exit.MMIO.Data {
					exit.MMIO.Data[i] = 0xff
				}
			}
		case kvm.ExitHLT:
			if handle(lxEvent{halted: true}) {
				return nil
			}
			return errors.New("guest halted")
		case kvm.ExitShutdown:
			if handle(lxEvent{shutdown: true}) {
				return nil
			}
			return errors.New("guest triple-faulted")
		case kvm.ExitInternalError:
			return fmt.Errorf("KVM internal error: suberror %d data %#x", exit.Internal.Suberror, exit.Internal.Data)
		default:
			return fmt.Errorf("unexpected exit %v", exit.Reason)
		}
	}
}

// stepPattern checks the dirtier's invariant on the first byte of every page
// in [start, end): a (possibly empty) prefix holds v+1, the rest v.
func stepPattern(mem []byte, start, end uint64) (v byte, prefix int, err error) {
	first, last := mem[start], mem[end-4096]
	if first != last && first != last+1 {
		return 0, 0, fmt.Errorf("first page %d, last page %d", first, last)
	}
	i := 0
	for p := start; p < end; p += 4096 {
		b := mem[p]
		if first != last && b == first && p == start+uint64(i)*4096 {
			i++
			continue
		}
		if b != last {
			return 0, 0, fmt.Errorf("page %#x holds %d; pattern %d x %d then %d", p, b, i, first, last)
		}
	}
	return last, i, nil
}

func TestLinux64EntryUnderKVM(t *testing.T) {
	path := buildGuest(t)
	markerRe := regexp.MustCompile(`^DIRTY pass=(\d+)$`)

	t.Run("dirtier", func(t *testing.T) {
		const start, end = 16 << 20, 20 << 20
		cmdline := "workload=dirtier dirty_start=16M dirty_end=0x1400000"
		g := loadLinux64(t, path, cmdline)
		var lines []string
		pass := 0
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			if ev.line == "" {
				return false
			}
			lines = append(lines, ev.line)
			m := markerRe.FindStringSubmatch(ev.line)
			if m == nil {
				return false
			}
			pass++
			if m[1] != fmt.Sprint(pass) {
				t.Fatalf("marker %q, want pass=%d", ev.line, pass)
			}
			// The vCPU is stopped inside the marker write: every page
			// holds exactly the pass number.
			v, prefix, err := stepPattern(g.mem, start, end)
			if err != nil || v != byte(pass) || prefix != 0 {
				t.Fatalf("after pass %d: value %d prefix %d err %v", pass, v, prefix, err)
			}
			return pass == 3
		})
		if lines[0] != "WASMVMM-GUEST BOOT" || lines[1] != "WASMVMM-GUEST READY cmdline="+cmdline {
			t.Errorf("first lines %q", lines[:2])
		}
		t.Logf("%s\n%s", lines[2], lines[3])
		if !strings.HasPrefix(lines[2], "GUEST INFO entry=linux64 ") {
			t.Errorf("info line %q, want entry=linux64", lines[2])
		}
		want := "DIRTIER start=0x1000000 end=0x1400000 pages=1024"
		if !strings.Contains(strings.Join(lines, "\n"), want) {
			t.Errorf("no %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	})

	t.Run("mid-pass-samples", func(t *testing.T) {
		// No markers (they would dominate the time): stop the guest at
		// arbitrary moments, which then fall inside passes; the pages must
		// always form the step pattern.
		const start, end = 16 << 20, 48 << 20
		g := loadLinux64(t, path, "dirty_end=48M marker_every=1000000000")
		g.run(t, 30*time.Second, func(ev lxEvent) bool { return strings.HasPrefix(ev.line, "DIRTIER ") })
		inside := 0
		for i := 0; i < 10; i++ {
			time.AfterFunc(time.Millisecond, func() { g.vcpu.Kick() })
			g.run(t, 30*time.Second, func(ev lxEvent) bool {
				if !ev.kicked {
					return false
				}
				v, prefix, err := stepPattern(g.mem, start, end)
				if err != nil {
					t.Fatalf("sample %d: %v", i, err)
				}
				t.Logf("sample %d: %d pages hold %d, the rest %d", i, prefix, v+1, v)
				if prefix > 0 {
					inside++
				}
				return true
			})
		}
		if inside == 0 {
			t.Error("no sample fell inside a pass")
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		g := loadLinux64(t, path, "workload=shutdown")
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			if ev.ioPort == 0 {
				return false
			}
			if ev.ioPort != 0x604 || ev.ioSize != 2 || ev.ioValue != 0x2000 {
				t.Fatalf("port write %#x size %d value %#x, want 0x604 size 2 value 0x2000", ev.ioPort, ev.ioSize, ev.ioValue)
			}
			return true
		})
		if g.out[len(g.out)-1] != "GUEST SHUTDOWN" {
			t.Errorf("last line %q, want GUEST SHUTDOWN", g.out[len(g.out)-1])
		}
	})

	t.Run("suspend", func(t *testing.T) {
		// After pass 1: GUEST SUSPEND, the S3 write with every page == 1,
		// then the dirtier goes on once the write returns.
		const start, end = 16 << 20, 20 << 20
		g := loadLinux64(t, path, "workload=suspend dirty_end=20M")
		suspended := false
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			if ev.ioPort != 0 {
				if ev.ioPort != 0x604 || ev.ioSize != 2 || ev.ioValue != 0x2400 {
					t.Fatalf("port write %#x size %d value %#x, want 0x604 size 2 value 0x2400", ev.ioPort, ev.ioSize, ev.ioValue)
				}
				if v, prefix, err := stepPattern(g.mem, start, end); err != nil || v != 1 || prefix != 0 {
					t.Fatalf("at the S3 write: value %d prefix %d err %v, want all pages == 1", v, prefix, err)
				}
				suspended = true
			}
			return ev.line == "DIRTY pass=2"
		})
		want := []string{"DIRTY pass=1", "GUEST SUSPEND", "GUEST RESUMED", "DIRTY pass=2"}
		if !suspended || strings.Join(g.out[len(g.out)-4:], "|") != strings.Join(want, "|") {
			t.Errorf("suspended=%v, output:\n%s", suspended, strings.Join(g.out, "\n"))
		}
	})

	t.Run("bad-cmdline", func(t *testing.T) {
		g := loadLinux64(t, path, "marker_every=0")
		g.allowPanic = true
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			return ev.line == "GUEST PANIC bad command line: marker_every must be > 0: marker_every=0"
		})
	})

	t.Run("crash", func(t *testing.T) {
		g := loadLinux64(t, path, "workload=crash")
		g.run(t, 30*time.Second, func(ev lxEvent) bool { return ev.shutdown })
		if g.out[len(g.out)-1] != "GUEST CRASH" {
			t.Errorf("last line %q, want GUEST CRASH", g.out[len(g.out)-1])
		}
	})

	t.Run("pio-bench", func(t *testing.T) {
		const n = 2000
		g := loadLinux64(t, path, fmt.Sprintf("workload=pio-bench pio_port=0x510 pio_count=%d", n))
		outs := 0
		done := regexp.MustCompile(`^PIO-BENCH done n=(\d+) tsc=(\d+)$`)
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			if ev.ioPort == 0x510 {
				outs++
			}
			return done.MatchString(ev.line)
		})
		if outs != n {
			t.Errorf("saw %d writes to port 0x510, want %d", outs, n)
		}
	})

	t.Run("fault", func(t *testing.T) {
		// A ring-3 page fault reaches the kernel's IDT and is reported.
		g := loadLinux64(t, path, "workload=fault")
		g.allowPanic = true
		re := regexp.MustCompile(`^GUEST PANIC exception vector=14 \(#PF\) error=0x4 rip=0x[0-9a-f]+ cr2=0x8000000000 cs=0x23 `)
		seen := false
		g.run(t, 30*time.Second, func(ev lxEvent) bool {
			seen = seen || re.MatchString(ev.line)
			return strings.HasPrefix(ev.line, "GUEST PANIC regs ") // the report's last line
		})
		if !seen {
			t.Fatalf("no %q in:\n%s", re, strings.Join(g.out, "\n"))
		}
		g.run(t, 30*time.Second, func(ev lxEvent) bool { return ev.halted })
	})

	t.Run("pio-console", func(t *testing.T) {
		// Every UART access of ring 3 goes through the #GP handler.
		cmdline := "workload=idle guest_console=pio"
		g := loadLinux64(t, path, cmdline)
		g.run(t, 30*time.Second, func(ev lxEvent) bool { return ev.halted })
		if len(g.out) < 3 || g.out[1] != "WASMVMM-GUEST READY cmdline="+cmdline ||
			!strings.HasSuffix(g.out[2], " console=pio") || g.out[len(g.out)-1] != "GUEST IDLE" {
			t.Errorf("output:\n%s", strings.Join(g.out, "\n"))
		}
	})

	t.Run("idle", func(t *testing.T) {
		g := loadLinux64(t, path, "workload=idle")
		g.run(t, 30*time.Second, func(ev lxEvent) bool { return ev.halted })
		if g.out[len(g.out)-1] != "GUEST IDLE" {
			t.Errorf("last line %q, want GUEST IDLE", g.out[len(g.out)-1])
		}
	})
}
