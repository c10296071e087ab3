// Package netnstest gives tests a network namespace of their own, so that
// tap interfaces, addresses and routes they create never touch the host's
// network. A namespace is created with the ip tool (iproute2) and deleted
// when the test ends, whatever happens.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a network namespace made for one test.
type NS struct {
	Name string
	ip   string
}

var seq atomic.Int32 // distinguishes namespaces of one test process

// New creates a namespace named wasmvmm-test-<pid> (with a suffix for the
// second and later ones of a process) and deletes it at the end of the
// test. Without root, the ip tool or /dev/net/tun the test is skipped, or
// fails under CI=true.
func New(t testing.TB) *NS {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		missing("network namespaces and tap interfaces need root")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		missing("the ip tool (iproute2) is not installed: %v", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing("no /dev/net/tun: %v", err)
	}
	name := fmt.Sprintf("wasmvmm-test-%d", os.Getpid())
	if n := seq.Add(1); n > 1 {
		name = fmt.Sprintf("%s-%d", name, n)
	}
	ns := &NS{Name: name, ip: ip}
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return ns
}

// IP runs "ip -n NAME args..." and returns its output.
func (ns *NS) IP(args ...string) (string, error) {
	out, err := exec.Command(ns.ip, append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Do runs f on an OS thread that entered the namespace. The thread is
// discarded afterwards, so no other goroutine ever runs in the namespace.
// Descriptors f opens (a tap created there) stay usable from any thread.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		nsFD, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns.Name, err)
			return
		}
		defer unix.Close(nsFD)
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
