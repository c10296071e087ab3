// Package e2e runs the wasmvmm binary end to end on the test guest under
// real KVM.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wasmvmm/testsuite/harness"
)

func writeConfig(t *testing.T, dir, kernel, cmdline string, extra string) string {
	t.Helper()
	p := filepath.Join(dir, "vm.toml")
	body := fmt.Sprintf("[machine]\nmemory = \"128M\"\ncpus = 1\n\n[boot]\nkernel = %q\ncmdline = %q\n%s", kernel, cmdline, extra)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunBootsGuestThroughUARTPlugin(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, b.Guest, "workload=dirtier dirty_end=24M", "")
	vm := harness.Start(t, b, dir, "run", cfg)
	vm.WaitSerial(t, "WASMVMM-GUEST READY cmdline=workload=dirtier dirty_end=24M", 10*time.Second)
	vm.WaitSerial(t, "DIRTY pass=3\n", 20*time.Second)
}

func TestGuestPowerOffExitsZero(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	vm := harness.Start(t, b, dir, "run", writeConfig(t, dir, b.Guest, "workload=shutdown", ""))
	if code := vm.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after a guest power-off", code)
	}
	if !strings.Contains(vm.SerialText(), "GUEST SHUTDOWN") {
		t.Fatal("guest did not reach its shutdown workload")
	}
}

func TestGuestCrashIsInternalErrorWithRegisters(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	vm := harness.Start(t, b, dir, "run", writeConfig(t, dir, b.Guest, "workload=crash", ""))
	code := vm.Wait(t, 20*time.Second)
	log := vm.Stderr.String()
	if code == 0 || !strings.Contains(log, "internal error") || !strings.Contains(log, "rip=") {
		t.Fatalf("exit code %d; stderr:\n%s", code, log)
	}
}

func TestCtrlAXQuits(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, b.Guest, "workload=idle", "")
	cmd := exec.Command(b.Binary, "run", cfg, "--serial", "stdio", "--plugins", b.PluginDir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &harness.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "WASMVMM-GUEST READY") {
		if time.Now().After(deadline) {
			t.Fatalf("no READY marker:\n%s", out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := stdin.Write([]byte{0x01, 'x'}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after C-a x: %v\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("C-a x did not quit")
	}
}

func TestBadInputIsRefusedBeforeStart(t *testing.T) {
	harness.RequireKVM(t)
	b := harness.Artifacts(t)
	dir := t.TempDir()
	bad := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeConfig(t, dir, b.Guest, "workload=idle", "")
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown key", []string{"run", bad("k.toml", "[machine]\nmemory = \"64M\"\nturbo = true\n")}, []string{"k.toml:3", `unknown key "machine.turbo"`}},
		{"syntax", []string{"run", bad("s.toml", "[boot\nkernel = 1\n")}, []string{"s.toml:", "to end table name"}},
		{"missing kernel", []string{"run", bad("m.toml", "[boot]\nkernel = \"/nonexistent/vmlinux\"\n")}, []string{"/nonexistent/vmlinux"}},
		{"unknown machine type", []string{"run", good, "--machine", "pc-i440fx-9.9"}, []string{`unknown machine type "pc-i440fx-9.9"`, "wasmvmm-virt-1.0"}},
		{"too much memory", []string{"run", good, "--memory", "64T"}, []string{"exceeds this host's"}},
		{"too many vcpus", []string{"run", good, "--cpus", "100000"}, []string{"vCPUs"}},
		{"missing plugin", []string{"run", good, "--plugins", filepath.Join(dir, "no-plugins")}, []string{"serial-16550", filepath.Join(dir, "no-plugins")}},
		{"bad size flag", []string{"run", good, "--memory", "lots"}, []string{"--memory", `"lots"`}},
		{"machine type with an unknown compat property", []string{"run", good, "--machines", badMachines(t, dir)}, []string{"wasmvmm-virt-2.0.toml", `no property "host_usoo"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if c.name != "missing plugin" {
				args = append(args, "--plugins", b.PluginDir)
			}
			code, out := harness.Run(t, b, append(args, "--serial", "null")...)
			if code == 0 {
				t.Fatalf("accepted; output:\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "panic") {
				t.Errorf("panicked:\n%s", out)
			}
		})
	}
}

// badMachines copies the built-in machine types into a directory and adds a
// compat entry for a property virtio-net does not have to the newest one.
func badMachines(t *testing.T, dir string) string {
	t.Helper()
	d := filepath.Join(dir, "machines")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(harness.RepoRoot(), "machines", "*.toml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "wasmvmm-virt-2.0.toml" {
			b = append(b, "\n[[compat]]\ndevice = \"virtio-net\"\nproperty = \"host_usoo\"\nvalue = false\n"...)
		}
		if err := os.WriteFile(filepath.Join(d, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}
