package guest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const loadAddr = 0x100000 // where the guest is linked (physical = virtual)

// requireTool fails the test under CI=true and skips it elsewhere when a
// prerequisite is missing.
func requireTool(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite %s missing (CI=true): %v", what, err)
	}
	t.Skipf("prerequisite %s missing: %v", what, err)
}

func buildGuest(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"make", "gcc", "ld"} {
		_, err := exec.LookPath(tool)
		requireTool(t, tool, err)
	}
	path, err := Build("../..")
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// pvhNote returns the address in the XEN_ELFNOTE_PHYS32_ENTRY note ("Xen",
// type 18) of a PT_NOTE segment, and the segment's alignment.
func pvhNote(f *elf.File) (addr uint64, align uint64, err error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return 0, 0, fmt.Errorf("read PT_NOTE: %w", err)
		}
		for len(data) >= 12 {
			le := binary.LittleEndian
			namesz, descsz, typ := le.Uint32(data), le.Uint32(data[4:]), le.Uint32(data[8:])
			nameEnd := 12 + (int(namesz)+3)&^3
			descEnd := nameEnd + (int(descsz)+3)&^3
			if descEnd > len(data) {
				return 0, 0, fmt.Errorf("truncated note")
			}
			name := string(bytes.TrimRight(data[12:12+namesz], "\x00"))
			if name == "Xen" && typ == 18 {
				desc := data[nameEnd : nameEnd+int(descsz)]
				switch descsz {
				case 4:
					return uint64(le.Uint32(desc)), p.Align, nil
				case 8:
					return le.Uint64(desc), p.Align, nil
				}
				return 0, 0, fmt.Errorf("PVH note descsz %d", descsz)
			}
			data = data[descEnd:]
		}
	}
	return 0, 0, errors.New("no PVH note (Xen, type 18)")
}

// codeByte returns the byte at guest-physical addr if it lies in the file
// part of an executable PT_LOAD.
func codeByte(f *elf.File, addr uint64) (byte, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= p.Paddr && addr < p.Paddr+p.Filesz {
			b := make([]byte, 1)
			if _, err := p.ReadAt(b, int64(addr-p.Paddr)); err != nil {
				return 0, err
			}
			return b[0], nil
		}
	}
	return 0, fmt.Errorf("%#x is not inside an executable loaded segment", addr)
}

func TestBuildProducesBootableELF(t *testing.T) {
	path := buildGuest(t)
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("got %v %v %v, want ELFCLASS64 EM_X86_64 ET_EXEC", f.Class, f.Machine, f.Type)
	}
	var first *elf.Prog
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if first == nil {
			first = p
		}
		if p.Vaddr != p.Paddr {
			t.Errorf("PT_LOAD vaddr %#x != paddr %#x: load addresses must be physical", p.Vaddr, p.Paddr)
		}
		if p.Flags&elf.PF_W != 0 && p.Flags&elf.PF_X != 0 {
			t.Errorf("PT_LOAD at %#x is writable and executable", p.Paddr)
		}
	}
	if first == nil || first.Paddr != loadAddr {
		t.Fatalf("first PT_LOAD = %+v, want one at %#x", first, loadAddr)
	}
	// Both entry points start with cli (0xfa): a cheap check that each
	// address is the code we meant, not just any byte of .text.
	if b, err := codeByte(f, f.Entry); err != nil || b != 0xfa {
		t.Errorf("64-bit entry %#x: byte %#x, %v; want cli (0xfa)", f.Entry, b, err)
	}
	pvh, align, err := pvhNote(f)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := codeByte(f, pvh); err != nil || b != 0xfa {
		t.Errorf("PVH entry %#x: byte %#x, %v; want cli (0xfa)", pvh, b, err)
	}
	if pvh == f.Entry {
		t.Errorf("PVH entry == ELF entry %#x: they are different modes", pvh)
	}
	// QEMU finds the note descriptor by aligning the name to p_align.
	if align != 4 {
		t.Errorf("PT_NOTE alignment %d, want 4", align)
	}
	for _, s := range f.Sections {
		if s.Name == ".note.gnu.build-id" || s.Name == ".comment" {
			t.Errorf("section %s present: the build must be reproducible", s.Name)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	path := buildGuest(t)
	src, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	other, err := buildInto(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds differ (%d and %d bytes)", len(a), len(b))
	}
}

// serialLines collects a guest's serial output line by line.
type serialLines struct {
	lines chan string
	all   []string
}

func newSerialLines(r io.Reader) *serialLines {
	s := &serialLines{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	return s
}

// waitFor reads lines until one matches re; it fails on GUEST PANIC, EOF
// or timeout.
func (s *serialLines) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("serial closed before %q; output:\n%s", re, strings.Join(s.all, "\n"))
			}
			s.all = append(s.all, l)
			if strings.Contains(l, "GUEST PANIC") {
				t.Fatalf("guest panicked; output:\n%s", strings.Join(s.all, "\n"))
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q within %v; output:\n%s", re, timeout, strings.Join(s.all, "\n"))
		}
	}
}

// checkBootMarkers checks the lines every boot prints, in order.
func checkBootMarkers(t *testing.T, s *serialLines, cmdline, entry string) {
	t.Helper()
	s.waitFor(t, regexp.MustCompile(`^WASMVMM-GUEST BOOT$`), 10*time.Second)
	if s.all[0] != "WASMVMM-GUEST BOOT" {
		t.Errorf("first line %q, want the banner", s.all[0])
	}
	m := s.waitFor(t, regexp.MustCompile(`^WASMVMM-GUEST READY cmdline=(.*)$`), 10*time.Second)
	if !strings.HasPrefix(m[1], cmdline) {
		t.Errorf("READY cmdline=%q, want prefix %q", m[1], cmdline)
	}
	s.waitFor(t, regexp.MustCompile(`^GUEST INFO entry=`+entry+` `), 10*time.Second)
}

// checkDirtyPasses waits for DIRTIER and then n consecutive DIRTY markers.
func checkDirtyPasses(t *testing.T, s *serialLines, wantDirtier string, n int) {
	t.Helper()
	m := s.waitFor(t, regexp.MustCompile(`^DIRTIER (.*)$`), 20*time.Second)
	if m[1] != wantDirtier {
		t.Errorf("DIRTIER %s, want %s", m[1], wantDirtier)
	}
	for pass := 1; pass <= n; pass++ {
		m := s.waitFor(t, regexp.MustCompile(`^DIRTY pass=(\d+)$`), 20*time.Second)
		if m[1] != fmt.Sprint(pass) {
			t.Fatalf("marker pass=%s, want pass=%d", m[1], pass)
		}
	}
}

// TestQEMUMicrovmPVH boots the guest through its PVH entry under QEMU's
// microvm machine with KVM.
func TestQEMUMicrovmPVH(t *testing.T) {
	path := buildGuest(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	requireTool(t, "qemu-system-x86_64", err)
	_, err = os.Stat("/dev/kvm")
	requireTool(t, "/dev/kvm", err)

	start := func(t *testing.T, machine, cmdline string, extra ...string) (*serialLines, *exec.Cmd) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		args := append([]string{"-M", machine, "-accel", "kvm", "-cpu", "host,-arch-capabilities",
			"-m", "256M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
			"-no-reboot", "-kernel", path, "-append", cmdline}, extra...)
		cmd := exec.CommandContext(ctx, qemu, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cancel()
			cmd.Wait()
			if t.Failed() {
				t.Logf("qemu stderr: %s", stderr.Bytes())
			}
		})
		return newSerialLines(out), cmd
	}
	waitExit := func(t *testing.T, cmd *exec.Cmd) {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("qemu: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("qemu did not exit")
		}
	}

	t.Run("dirtier", func(t *testing.T) {
		cmdline := "workload=dirtier dirty_end=20M"
		s, _ := start(t, "microvm", cmdline)
		checkBootMarkers(t, s, cmdline, "pvh")
		checkDirtyPasses(t, s, "start=0x1000000 end=0x1400000 pages=1024", 3)
	})
	t.Run("virtio-mmio-cmdline", func(t *testing.T) {
		// With acpi=off microvm appends virtio_mmio.device=512@ADDR:IRQ.
		s, _ := start(t, "microvm,acpi=off", "workload=idle", "-device", "virtio-rng-device")
		m := s.waitFor(t, regexp.MustCompile(`^VIRTIO-MMIO dev=0 base=(0x[0-9a-f]+) size=0x200 irq=(\d+)$`), 10*time.Second)
		if !strings.Contains(strings.Join(s.all, "\n"), "virtio_mmio.device=512@"+m[1]+":"+m[2]) {
			t.Errorf("parsed device %s irq %s not on the command line:\n%s", m[1], m[2], strings.Join(s.all, "\n"))
		}
		s.waitFor(t, regexp.MustCompile(`^GUEST IDLE$`), 10*time.Second)
	})
	t.Run("shutdown", func(t *testing.T) {
		// Port 0x604 is not decoded by microvm; the guest falls back to the
		// FADT's sleep control register (the GED), and QEMU exits.
		s, cmd := start(t, "microvm", "workload=shutdown")
		s.waitFor(t, regexp.MustCompile(`^GUEST SHUTDOWN$`), 10*time.Second)
		waitExit(t, cmd)
	})
	t.Run("crash", func(t *testing.T) {
		// Triple fault: with -no-reboot QEMU exits instead of resetting.
		s, cmd := start(t, "microvm", "workload=crash")
		s.waitFor(t, regexp.MustCompile(`^GUEST CRASH$`), 10*time.Second)
		waitExit(t, cmd)
	})
}
