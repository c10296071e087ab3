package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wasmvmm/abi"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadVM(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "vm.toml", `
[machine]
type = "wasmvmm-virt-1.0"
memory = "512M"
cpus = 2
share_memory = true

[boot]
kernel = "guest.elf"
cmdline = "workload=dirtier"

[[device]]
id = "serial0"
backends = { console = "stdio" }
properties = { baudbase = 115200 }
`)
	vm, err := LoadVM(p)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Machine.Memory != 512<<20 || vm.Machine.CPUs != 2 || !vm.Machine.ShareMemory {
		t.Fatalf("machine section: %+v", vm.Machine)
	}
	if vm.Boot.Kernel != filepath.Join(dir, "guest.elf") {
		t.Fatalf("kernel path not resolved against the config's directory: %q", vm.Boot.Kernel)
	}
	if vm.Devices[0].Backends["console"] != "stdio" || vm.Devices[0].Properties["baudbase"] != int64(115200) {
		t.Fatalf("device: %+v", vm.Devices[0])
	}
}

func TestBadVMFiles(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"syntax", "[machine]\ntype = \"x\"\nmemory = \n", "bad.toml:3"},
		{"unknown key", "[machine]\ntype = \"x\"\n\n[boot]\nkernal = \"k\"\n", `bad.toml:5: unknown key "boot.kernal"`},
		{"unknown table", "[machine]\ncpus = 1\n[frobnicate]\nx = 1\n", `unknown key "frobnicate`},
		{"bad size", "[machine]\nmemory = \"12Q\"\n", `bad.toml:2`},
		{"wrong type", "[machine]\ncpus = \"two\"\n", `bad.toml:2`},
		{"duplicate device", "[[device]]\nid = \"a\"\n[[device]]\nid = \"a\"\n", `bad.toml:4: device.id: device id "a" appears twice`},
		{"negative cpus", "[machine]\ncpus = -1\n", `bad.toml:2: machine.cpus`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := write(t, t.TempDir(), "bad.toml", c.body)
			_, err := LoadVM(p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"4096": 4096, "512K": 512 << 10, "256M": 256 << 20, "4G": 4 << 30, "0x1000": 4096, "1T": 1 << 40} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "M", "-1", "1X", "99999999999999999999G", "16777216T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func describeTest(plugin string) (*abi.DeviceInfo, error) {
	switch PluginType(plugin) {
	case "virtio-net":
		return &abi.DeviceInfo{Name: "virtio-net", Properties: []abi.Property{
			{Name: "host_uso", Type: abi.PropBool, DefaultInt: 1}, {Name: "mtu", Type: abi.PropU16, DefaultInt: 1500}}}, nil
	case "serial-16550":
		return &abi.DeviceInfo{Name: "serial-16550"}, nil
	}
	return nil, os.ErrNotExist
}

func TestCatalogChainsAndChecks(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "v2.toml", `name = "virt-2.0"
version = "2.0"
[[device]]
id = "net0"
plugin = "virtio-net@v2"
mmio = [0xd0000000]
irq = [5]
`)
	write(t, dir, "v1.toml", `name = "virt-1.1"
version = "1.1"
next = "virt-2.0"
[[device]]
id = "net0"
plugin = "virtio-net@v1"
[[compat]]
device = "virtio-net"
property = "host_uso"
value = false
`)
	write(t, dir, "v0.toml", `name = "virt-1.0"
next = "virt-1.1"
[[device]]
id = "net0"
plugin = "virtio-net@v1"
[[compat]]
device = "virtio-net"
property = "mtu"
value = 1400
[[compat]]
device = "virtio-net"
property = "host_uso"
value = true
`)
	c, err := LoadCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := c.Get("virt-1.0")
	// 1.1's entries apply to 1.0 too, and 1.0's own come last (override).
	if len(old.Effective) != 3 || old.Effective[0].Property != "host_uso" || old.Effective[0].Value != false || old.Effective[2].Value != true {
		t.Fatalf("effective compat of 1.0: %+v", old.Effective)
	}
	if mid, _ := c.Get("virt-1.1"); len(mid.Effective) != 1 {
		t.Fatalf("effective compat of 1.1: %+v", mid.Effective)
	}
	if err := c.Check(describeTest); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("virt-9"); err == nil || !strings.Contains(err.Error(), "virt-1.0, virt-1.1, virt-2.0") {
		t.Fatalf("unknown machine type: %v", err)
	}

	write(t, dir, "v0.toml", `name = "virt-1.0"
next = "virt-1.1"
[[compat]]
device = "virtio-net"
property = "host_usoo"
value = true
`)
	c, err = LoadCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check(describeTest); err == nil || !strings.Contains(err.Error(), `no property "host_usoo" (it has: host_uso, mtu)`) {
		t.Fatalf("unknown compat property: %v", err)
	}
	write(t, dir, "v0.toml", "name = \"virt-1.0\"\nnext = \"virt-1.1\"\n[[compat]]\ndevice = \"virtio-nett\"\nproperty = \"x\"\nvalue = 1\n")
	c, _ = LoadCatalog(dir)
	if err := c.Check(describeTest); err == nil || !strings.Contains(err.Error(), `device "virtio-nett"`) {
		t.Fatalf("unknown compat device: %v", err)
	}
	write(t, dir, "v0.toml", "name = \"virt-1.0\"\nnext = \"virt-1.1\"\n[[compat]]\ndevice = \"virtio-net\"\nproperty = \"mtu\"\nvalue = 70000\n")
	c, _ = LoadCatalog(dir)
	if err := c.Check(describeTest); err == nil || !strings.Contains(err.Error(), "is u16") {
		t.Fatalf("out of range compat value: %v", err)
	}
	// A cycle in the chain.
	write(t, dir, "v2.toml", "name = \"virt-2.0\"\nnext = \"virt-1.0\"\n")
	if _, err := LoadCatalog(dir); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle: %v", err)
	}
	write(t, dir, "v2.toml", "name = \"virt-2.0\"\nnext = \"virt-3.0\"\n")
	if _, err := LoadCatalog(dir); err == nil || !strings.Contains(err.Error(), `next = "virt-3.0": no such machine type`) {
		t.Fatalf("dangling next: %v", err)
	}
}
