package compat

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasmvmm/host/machine/config"
)

// TestShippedMachineTypesMatchThePlugins checks every shipped machine type
// against the real plugins' declarations, with every release.
func TestShippedMachineTypesMatchThePlugins(t *testing.T) {
	env := testEnv(t)
	cat := builtinCatalog(t)
	if n := len(cat.Names()); n < 5 {
		t.Fatalf("%d machine types shipped: %v", n, cat.Names())
	}
	for _, rel := range Releases() {
		if err := env.CheckCatalog(context.Background(), cat, rel); err != nil {
			t.Errorf("release %s: %v", rel.Name, err)
		}
	}
	// The x86 family chains oldest to newest with the same placements.
	var chain []string
	for name := "wasmvmm-virt-1.0"; name != ""; {
		mt, err := cat.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, name)
		first, _ := cat.Get("wasmvmm-virt-1.0")
		if len(mt.Devices) != len(first.Devices) {
			t.Fatalf("%s places %d devices, 1.0 %d", name, len(mt.Devices), len(first.Devices))
		}
		for i, d := range mt.Devices {
			f := first.Devices[i]
			if d.ID != f.ID || d.Plugin != f.Plugin || !equal(d.MMIO, f.MMIO) || !equal(d.PIO, f.PIO) || !equal(d.IRQ, f.IRQ) {
				t.Errorf("%s moves device %s: %+v, 1.0 has %+v", name, d.ID, d, f)
			}
		}
		name = mt.Next
	}
	if len(chain) < 3 {
		t.Fatalf("x86 chain %v: want at least three versions", chain)
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

const goodType = `name = "t-1.0"
family = "t"
version = "1.0"
%s

[[device]]
id = "serial0"
plugin = "serial-16550"
pio = [0x3f8]
irq = [4]
%s
`

func writeCatalog(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestBadMachineTypesAreRefused: unknown device types, unknown properties,
// wrong-typed values, compat entries naming what does not exist, a cycle
// in the version chain and an unknown machine type are refused with the
// file and entry named.
func TestBadMachineTypesAreRefused(t *testing.T) {
	env := testEnv(t)
	ctx := context.Background()
	r1 := Releases()[0]
	for _, c := range []struct {
		name, extraTop, extraDev string
		want                     []string
	}{
		{"unknown device", "", "\n[[device]]\nid = \"x0\"\nplugin = \"no-such-device\"\n", []string{"t-1.0.toml", `device "x0"`, "no-such-device"}},
		{"unknown property", "", "properties = { baud = 9600 }", []string{"t-1.0.toml", `device "serial0"`, `no property "baud"`}},
		{"wrong type", "", "properties = { baudbase = \"fast\" }", []string{"t-1.0.toml", "baudbase", "does not fit"}},
		{"compat for a missing property", "", "\n[[compat]]\ndevice = \"virtio-net\"\nproperty = \"host_ufo\"\nvalue = false\n", []string{"t-1.0.toml", `[[compat]] device "virtio-net"`, `no property "host_ufo"`}},
		{"compat for a missing device", "", "\n[[compat]]\ndevice = \"virtio-sound\"\nproperty = \"x\"\nvalue = false\n", []string{"t-1.0.toml", `[[compat]] device "virtio-sound"`, "unknown device"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := writeCatalog(t, map[string]string{"t-1.0.toml": sprintf(goodType, c.extraTop, c.extraDev)})
			cat, err := config.LoadCatalog(dir)
			if err != nil {
				t.Fatal(err)
			}
			err = env.CheckCatalog(ctx, cat, r1)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			mt, _ := cat.Get("t-1.0")
			if _, err := env.NewMachine(ctx, mt, MachineOptions{Set: r1, ScratchDir: t.TempDir()}); err == nil {
				t.Error("a machine of a bad machine type was built")
			}
		})
	}
	t.Run("cycle", func(t *testing.T) {
		dir := writeCatalog(t, map[string]string{
			"t-1.0.toml": sprintf(goodType, `next = "t-2.0"`, ""),
			"t-2.0.toml": strings.Replace(strings.Replace(sprintf(goodType, `next = "t-1.0"`, ""), "t-1.0\"\nfamily", "t-2.0\"\nfamily", 1), `version = "1.0"`, `version = "2.0"`, 1),
		})
		_, err := config.LoadCatalog(dir)
		if err == nil || !strings.Contains(err.Error(), "cycle") || !strings.Contains(err.Error(), ".toml") {
			t.Fatalf("cycle: %v", err)
		}
	})
	t.Run("unknown machine type", func(t *testing.T) {
		_, err := builtinCatalog(t).Get("pc-q35-9.9")
		if err == nil || !strings.Contains(err.Error(), `"pc-q35-9.9"`) || !strings.Contains(err.Error(), "wasmvmm-virt-2.0") {
			t.Fatalf("unknown machine type: %v", err)
		}
	})
}

func sprintf(format string, a ...any) string {
	return fmt.Sprintf(format, a...)
}
