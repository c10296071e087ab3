package acpi

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// requireIASL returns the path of iasl (Debian package acpica-tools). Under
// CI=true a missing iasl fails the test; elsewhere the test is skipped.
func requireIASL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("iasl")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and iasl is missing (install acpica-tools): %v", err)
	}
	t.Skipf("skipping: iasl not found (apt-get install acpica-tools): %v", err)
	return ""
}

// runIASL runs iasl with args in dir and fails the test on a non-zero exit
// or on any error, warning or bad-checksum report in its output.
func runIASL(t *testing.T, iasl, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(iasl, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("iasl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	checkNoComplaints(t, "iasl "+strings.Join(args, " "), string(out))
	return string(out)
}

// complaint matches what iasl prints about a broken table.
var complaint = regexp.MustCompile(`(?i)\b(error|warning|incorrect|invalid|unknown|terminates|mismatch)\b|[1-9][0-9]* Errors|[1-9][0-9]* Warnings`)

func checkNoComplaints(t *testing.T, what, text string) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "0 Errors, 0 Warnings") {
			continue
		}
		if complaint.MatchString(line) {
			t.Errorf("%s reports: %s", what, strings.TrimSpace(line))
		}
	}
}

// dslFields returns the "Name : Value" pairs of a disassembled data table
// in order.
func dslFields(dsl string) [][2]string {
	re := regexp.MustCompile(`(?m)^(?:\[[^\]]*\])?\s+([A-Za-z0-9/() .-]+?)\s+:\s+(.*?)\s*$`)
	var out [][2]string
	for _, m := range re.FindAllStringSubmatch(dsl, -1) {
		out = append(out, [2]string{m[1], m[2]})
	}
	return out
}

// field returns the first value of the named field, or "".
func field(fields [][2]string, name string) string {
	for _, f := range fields {
		if f[0] == name {
			return f[1]
		}
	}
	return ""
}

// TestIASLDisassembly writes each table to a file, disassembles it with
// iasl -d, checks that iasl finds nothing wrong and that the disassembly
// says what the configuration asked for, then recompiles the disassembly
// and compares the result with our bytes.
func TestIASLDisassembly(t *testing.T) {
	iasl := requireIASL(t)
	cfg := testConfig()
	tabs, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dsl := map[string]string{}
	for _, tab := range tabs.Tables {
		if tab.Signature == "RSDP" {
			continue // iasl -d does not decode a stand-alone RSDP; see TestIASLCompilesSameRSDP
		}
		name := tab.Signature + ".dat"
		if err := os.WriteFile(filepath.Join(dir, name), tab.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		runIASL(t, iasl, dir, "-d", name)
		b, err := os.ReadFile(filepath.Join(dir, tab.Signature+".dsl"))
		if err != nil {
			t.Fatalf("iasl -d %s wrote no .dsl: %v", name, err)
		}
		dsl[tab.Signature] = string(b)
		checkNoComplaints(t, tab.Signature+".dsl", string(b))
	}

	t.Run("DSDT", func(t *testing.T) { checkDSDT(t, cfg, dsl["DSDT"]) })
	t.Run("FADT", func(t *testing.T) {
		f := dslFields(dsl["FACP"])
		want := map[string]string{
			"Revision":                   "06",
			"SCI Interrupt":              "0009",
			"PM1A Event Block Address":   "00000600",
			"PM1A Control Block Address": "00000604",
			"PM Timer Block Address":     "00000608",
			"PM1 Event Block Length":     "04",
			"PM1 Control Block Length":   "02",
			"PM Timer Block Length":      "04",
			"Hardware Reduced (V5)":      "0",
			"DSDT Address":               fmt.Sprintf("%08X", tabs.Table("DSDT").Addr),
		}
		for k, v := range want {
			if got := field(f, k); got != v {
				t.Errorf("FADT %s = %q, want %q", k, got, v)
			}
		}
		// The X_ generic addresses repeat the blocks (in FADT order).
		var xaddrs []string
		for _, kv := range f {
			if kv[0] == "Address" {
				xaddrs = append(xaddrs, kv[1])
			}
		}
		if len(xaddrs) < 7 || xaddrs[1] != "0000000000000600" || xaddrs[3] != "0000000000000604" || xaddrs[6] != "0000000000000608" {
			t.Errorf("X_ block addresses %v", xaddrs)
		}
	})
	t.Run("MADT", func(t *testing.T) {
		m := dsl["APIC"]
		if n := strings.Count(m, "[Processor Local APIC]"); n != cfg.CPUs {
			t.Errorf("%d local APICs, want %d", n, cfg.CPUs)
		}
		if n := strings.Count(m, "[Interrupt Source Override]"); n != 2 {
			t.Errorf("%d interrupt source overrides, want 2", n)
		}
		f := dslFields(m)
		if field(f, "Local Apic Address") != "FEE00000" {
			t.Error("local APIC address not 0xfee00000")
		}
		// Pairs in order: IOAPIC address, GSI base, then each override.
		var addr, ints []string
		for _, kv := range f {
			switch kv[0] {
			case "Address":
				addr = append(addr, kv[1])
			case "Interrupt":
				ints = append(ints, kv[1])
			}
		}
		if len(addr) != 1 || addr[0] != "FEC00000" || strings.Join(ints, ",") != "00000000,00000002,00000009" {
			t.Errorf("IOAPIC address %v, interrupts %v", addr, ints)
		}
		if !regexp.MustCompile(`Interrupt : 00000009\s+\[[^\]]*\]\s+Flags \(decoded below\) : 000D`).MatchString(m) {
			t.Error("SCI override is not level-triggered, active high (flags 0x000d)")
		}
	})
	t.Run("XSDT", func(t *testing.T) {
		f := dslFields(dsl["XSDT"])
		if field(f, "ACPI Table Address   0") != fmt.Sprintf("%016X", tabs.Table("FACP").Addr) ||
			field(f, "ACPI Table Address   1") != fmt.Sprintf("%016X", tabs.Table("APIC").Addr) {
			t.Errorf("XSDT entries: %v", f)
		}
	})

	// Recompile every disassembly and compare with our bytes. Data tables
	// must match except for the checksum and the compiler id/revision,
	// which iasl replaces with its own; the DSDT's AML must match byte for
	// byte after the header.
	for sig, text := range dsl {
		t.Run("recompile "+sig, func(t *testing.T) {
			sub := t.TempDir()
			if err := os.WriteFile(filepath.Join(sub, sig+".dsl"), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			runIASL(t, iasl, sub, sig+".dsl")
			got, err := os.ReadFile(filepath.Join(sub, sig+".aml"))
			if err != nil {
				t.Fatal(err)
			}
			ours := tabs.Table(sig).Data
			if sig == "DSDT" {
				if !bytes.Equal(got[36:], ours[36:]) {
					t.Errorf("iasl's AML differs from ours:\n iasl % x\n ours % x", got[36:], ours[36:])
				}
				return
			}
			if len(got) != len(ours) {
				t.Fatalf("recompiled %s has %d bytes, ours %d", sig, len(got), len(ours))
			}
			for i := range ours {
				if sig != "FACS" && (i == 9 || i >= 28 && i < 36) {
					continue
				}
				if got[i] != ours[i] {
					t.Errorf("recompiled %s differs at byte %d: iasl %#x, ours %#x", sig, i, got[i], ours[i])
				}
			}
		})
	}
}

// checkDSDT finds the devices in the disassembled DSDT and compares them
// with the configuration.
func checkDSDT(t *testing.T, cfg Config, dsl string) {
	blocks := map[string]string{}
	parts := strings.Split(dsl, "Device (")
	for _, p := range parts[1:] {
		blocks[p[:4]] = p
	}
	hexNum := func(s string) uint64 {
		v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
		if err != nil {
			t.Fatalf("bad number %q", s)
		}
		return v
	}
	memRe := regexp.MustCompile(`Memory32Fixed \(ReadWrite,\s+0x([0-9A-F]+),\s+// Address Base\s+0x([0-9A-F]+),\s+// Address Length`)
	intRe := regexp.MustCompile(`Interrupt \(ResourceConsumer, (Level|Edge), ActiveHigh, Exclusive, ,, \)\s+\{\s+0x([0-9A-F]+),\s+\}`)
	for i, d := range cfg.VirtioMMIO {
		name := fmt.Sprintf("VR%02X", i)
		b, ok := blocks[name]
		if !ok {
			t.Errorf("no Device (%s) in the DSDT", name)
			continue
		}
		if !strings.Contains(b, `Name (_HID, "LNRO0005")`) {
			t.Errorf("%s: no _HID LNRO0005", name)
		}
		m := memRe.FindStringSubmatch(b)
		if m == nil || hexNum(m[1]) != d.Base || hexNum(m[2]) != d.Size {
			t.Errorf("%s: Memory32Fixed %v, want base %#x length %#x", name, m, d.Base, d.Size)
		}
		n := intRe.FindStringSubmatch(b)
		wantMode := "Level"
		if d.EdgeTriggered {
			wantMode = "Edge"
		}
		if n == nil || n[1] != wantMode || hexNum(n[2]) != uint64(d.IRQ) {
			t.Errorf("%s: Interrupt %v, want %s %d", name, n, wantMode, d.IRQ)
		}
	}
	ioRe := regexp.MustCompile(`IO \(Decode16,\s+0x([0-9A-F]+),\s+// Range Minimum\s+0x([0-9A-F]+),\s+// Range Maximum\s+0x00,\s+// Alignment\s+0x08,\s+// Length\s+\)\s+IRQNoFlags \(\)\s+\{(\d+)\}`)
	for i, s := range cfg.Serial {
		name := fmt.Sprintf("COM%d", i+1)
		b, ok := blocks[name]
		if !ok {
			t.Errorf("no Device (%s) in the DSDT", name)
			continue
		}
		if !strings.Contains(b, `EisaId ("PNP0501")`) {
			t.Errorf("%s: _HID is not EisaId(PNP0501)", name)
		}
		m := ioRe.FindStringSubmatch(b)
		if m == nil || hexNum(m[1]) != uint64(s.Port) || m[3] != strconv.Itoa(int(s.IRQ)) {
			t.Errorf("%s: resources %v, want port %#x IRQ %d", name, m, s.Port, s.IRQ)
		}
	}
	if len(blocks) != len(cfg.VirtioMMIO)+len(cfg.Serial) {
		t.Errorf("DSDT has devices %v", len(blocks))
	}
	sleepRe := regexp.MustCompile(`Name \(_S([35]), Package \(0x04\)[^{]*\{\s*(\w+),\s*(\w+),\s*Zero,\s*Zero\s*\}`)
	got := map[string]string{}
	for _, m := range sleepRe.FindAllStringSubmatch(dsl, -1) {
		got[m[1]] = m[2] + "," + m[3]
	}
	if got["3"] != "One,One" || got["5"] != "Zero,Zero" {
		t.Errorf("sleep states %v, want _S3 SLP_TYP 1 and _S5 SLP_TYP 0", got)
	}
}

// TestIASLCompilesSameRSDP has iasl's data-table compiler build an RSDP
// from our field values (it computes both checksums itself) and compares
// the result with ours byte for byte.
func TestIASLCompilesSameRSDP(t *testing.T) {
	iasl := requireIASL(t)
	tabs, err := Build(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	ours := tabs.Table("RSDP").Data
	src := fmt.Sprintf(`[0008]                          Signature : "RSD PTR "
[0001]                           Checksum : 00
[0006]                             Oem ID : "%s"
[0001]                           Revision : %02X
[0004]                       RSDT Address : %08X
[0004]                             Length : %08X
[0008]                       XSDT Address : %016X
[0001]                  Extended Checksum : 00
[0003]                           Reserved : 000000
`, ours[9:15], ours[15], le.Uint32(ours[16:]), le.Uint32(ours[20:]), le.Uint64(ours[24:]))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rsdp.asl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	runIASL(t, iasl, dir, "rsdp.asl")
	got, err := os.ReadFile(filepath.Join(dir, "rsdp.aml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ours) {
		t.Errorf("iasl's RSDP differs:\n iasl % x\n ours % x", got, ours)
	}
}
