package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"wasmvmm/testsuite/harness"
	"wasmvmm/testsuite/linux"
)

// hardwareVirtualization reports whether this host's KVM runs on VT-x or
// AMD-V, and why not otherwise.
func hardwareVirtualization() (bool, string) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, "cannot read /proc/cpuinfo: " + err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "flags") {
			for _, f := range strings.Fields(line) {
				if f == "vmx" || f == "svm" {
					return true, ""
				}
			}
			break
		}
	}
	why := "this host has no VT-x/AMD-V (no vmx or svm flag in /proc/cpuinfo)"
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		why += "; its /dev/kvm is kvm_pvm, which emulates guest ring 0 one instruction at a time and cannot run CMPXCHG16B, XRSTOR or INT3 there, so a stock Linux kernel stops early (KVM-HOSTS.md)"
	}
	return false, why + ". The Linux boot path is checked statically instead (host/machine/boot: Debian's bzImage and vmlinux loaded, boot_params built; host/machine/acpi: tables checked with iasl)"
}

// TestBootDebianKernel boots Debian's cloud kernel to its first messages and
// on to the point where it looks for a root file system.
func TestBootDebianKernel(t *testing.T) {
	if ok, why := hardwareVirtualization(); !ok {
		t.Skip("Linux cannot boot here: " + why)
	}
	harness.RequireKVM(t)
	kernel, pkg := linux.Kernel(t)
	ip := harness.NewMachine(t, harness.MachineOptions{Kernel: kernel, Memory: 512 << 20,
		Cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 reboot=t"})
	if err := ip.M.Start(false); err != nil {
		t.Fatal(err)
	}
	ip.WaitConsole(t, "Linux version", 60*time.Second)
	// Without an initrd or disk the kernel ends in the root-fs panic: that
	// means it ran through ACPI, the UART and the device probes.
	ip.WaitConsole(t, "VFS: Unable to mount root fs", 120*time.Second)
	t.Logf("booted %s", pkg)
}
