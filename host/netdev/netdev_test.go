package netdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wasmvmm/abi"
	"wasmvmm/host/netdev/netnstest"
	"wasmvmm/host/plugin"
)

// The backends satisfy the host's interfaces.
var (
	_ plugin.NetBackend = (*Tap)(nil)
	_ plugin.Watchable  = (*Tap)(nil)
	_ plugin.FDHolder   = (*Tap)(nil)
	_ Backend           = (*Unix)(nil)
	_ Backend           = (*Discard)(nil)
)

func wouldBlockErr(err error) bool {
	var wb interface{ WouldBlock() bool }
	return errors.As(err, &wb) && wb.WouldBlock()
}

// split cuts p into scattered slices of the given sizes (the rest last).
func split(p []byte, sizes ...int) [][]byte {
	var out [][]byte
	for _, n := range sizes {
		n = min(n, len(p))
		out = append(out, p[:n])
		p = p[n:]
	}
	return append(out, p)
}

func TestOpenSpecs(t *testing.T) {
	for _, bad := range []string{"", "tap:", "tap:x,frob", "unix-listen:", "unix-connect:", "discard:x", "socket:/x", "tap:" + strings.Repeat("a", 16)} {
		if b, err := Open(bad); err == nil {
			b.(Backend).Close()
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	b, err := Open("discard")
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != abi.BackendNet {
		t.Errorf("kind %v", b.Kind())
	}
}

func TestDiscard(t *testing.T) {
	d := NewDiscard()
	n, err := d.SendSG(split(make([]byte, 1000), 10, 500))
	if n != 1000 || err != nil {
		t.Fatalf("send: %d %v", n, err)
	}
	if _, err := d.RecvSG([][]byte{make([]byte, 100)}); !wouldBlockErr(err) {
		t.Fatalf("recv: %v", err)
	}
	if f, b := d.Stats(); f != 1 || b != 1000 {
		t.Errorf("stats %d %d", f, b)
	}
	if d.Ready() != abi.EventWritable || d.FD() != -1 {
		t.Error("readiness or fd")
	}
}

// notifier counts Watch notifications.
type notifier struct{ n atomic.Int32 }

func (c *notifier) fn() { c.n.Add(1) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func pair(t *testing.T) (*Unix, *Unix, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "net.sock")
	l, err := OpenBackend("unix-listen:" + path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := OpenBackend("unix-connect:" + path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for _, u := range []*Unix{l.(*Unix), c.(*Unix)} {
		if err := u.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return l.(*Unix), c.(*Unix), path
}

func TestUnixFrames(t *testing.T) {
	l, c, _ := pair(t)
	var nl notifier
	l.Watch(nl.fn)
	// Nothing waiting: would block, and the empty state is observed.
	if _, err := l.RecvSG([][]byte{make([]byte, 64)}); !wouldBlockErr(err) {
		t.Fatalf("recv on an empty socket: %v", err)
	}
	if l.Ready()&abi.EventReadable != 0 {
		t.Fatal("readable with nothing sent")
	}
	before := nl.n.Load()
	frame := make([]byte, 1514)
	for i := range frame {
		frame[i] = byte(i * 7)
	}
	if n, err := c.SendSG(split(frame, 14, 100, 1)); n != len(frame) || err != nil {
		t.Fatalf("send: %d %v", n, err)
	}
	waitFor(t, "a readiness notification", func() bool { return nl.n.Load() > before })
	if l.Ready()&abi.EventReadable == 0 {
		t.Fatal("not readable after a frame arrived")
	}
	got := make([]byte, 2048)
	n, err := l.RecvSG(split(got, 3, 1000))
	if n != len(frame) || err != nil || !bytes.Equal(got[:n], frame) {
		t.Fatalf("recv: %d %v, equal %v", n, err, bytes.Equal(got[:n], frame))
	}
	// A frame longer than the buffers: truncated, full length reported.
	c.SendSG([][]byte{frame})
	waitFor(t, "the second frame", func() bool { return l.Ready()&abi.EventReadable != 0 })
	small := make([]byte, 100)
	if n, err := l.RecvSG([][]byte{small}); n != len(frame) || err != nil || !bytes.Equal(small, frame[:100]) {
		t.Fatalf("truncated recv: %d %v", n, err)
	}
	// And the other way.
	l.SendSG([][]byte{frame[:60]})
	waitFor(t, "the reverse frame", func() bool { return c.Ready()&abi.EventReadable != 0 })
	if n, err := c.RecvSG([][]byte{got}); n != 60 || err != nil || !bytes.Equal(got[:60], frame[:60]) {
		t.Fatalf("reverse recv: %d %v", n, err)
	}
	if s, r, d := c.Stats(); s != 2 || r != 1 || d != 0 {
		t.Errorf("connector stats %d %d %d", s, r, d)
	}
}

func TestUnixBackpressure(t *testing.T) {
	l, c, _ := pair(t)
	var nc notifier
	c.Watch(nc.fn)
	frame := make([]byte, 60000)
	sent := 0
	for ; sent < 10000; sent++ {
		_, err := c.SendSG([][]byte{frame})
		if wouldBlockErr(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if sent == 10000 {
		t.Fatal("the socket never filled")
	}
	if c.Ready()&abi.EventWritable != 0 {
		t.Fatal("writable while full")
	}
	before := nc.n.Load()
	buf := make([]byte, 65536)
	for i := 0; i < sent; i++ {
		if n, err := l.RecvSG([][]byte{buf}); n != len(frame) || err != nil {
			t.Fatalf("frame %d: %d %v", i, n, err)
		}
	}
	waitFor(t, "a writable notification", func() bool { return nc.n.Load() > before })
	if c.Ready()&abi.EventWritable == 0 {
		t.Fatal("not writable after draining")
	}
}

func TestUnixReconnect(t *testing.T) {
	l, c, path := pair(t)
	// The connecting side goes away; a new one connects and replaces it.
	c.Close()
	c2, err := ConnectUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := c2.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	frame := []byte("0123456789abcdef-reconnected")
	waitFor(t, "the new peer's frame", func() bool {
		c2.SendSG([][]byte{frame})
		buf := make([]byte, 100)
		n, err := l.RecvSG([][]byte{buf})
		return err == nil && bytes.Equal(buf[:n], frame)
	})
	// The listener goes away and comes back: the connector redials.
	l.Close()
	waitFor(t, "the connector to notice", func() bool {
		c2.SendSG([][]byte{frame}) // EPIPE/ECONNRESET drop the connection
		_, err := c2.RecvSG([][]byte{make([]byte, 100)})
		return wouldBlockErr(err) && !c2.Connected()
	})
	if n, err := c2.SendSG([][]byte{frame}); n != len(frame) || err != nil {
		t.Fatalf("send without a peer: %d %v (want the frame dropped)", n, err)
	}
	l2, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := c2.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l2.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.SendSG([][]byte{frame}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a frame after reconnecting", func() bool {
		buf := make([]byte, 100)
		n, err := l2.RecvSG([][]byte{buf})
		return err == nil && bytes.Equal(buf[:n], frame)
	})
	if _, _, d := c2.Stats(); d == 0 {
		t.Error("no frame counted as dropped while disconnected")
	}
}

func TestUnixStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stale.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(path); err == nil {
		t.Fatal("second listener on a live socket")
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("Close left the socket file: %v", err)
	}
	// Leave a socket file nobody listens on, as a killed process does.
	stale, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	l2, err := ListenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
}

// TestUnixTakeOver: a second process's listening end, started later, takes
// the path over while the first still listens (cpr-transfer); a new peer
// reaches the second,
// the first keeps its connected peer until it closes, and its Close leaves
// the second's socket file alone.
func TestUnixTakeOver(t *testing.T) {
	old, peer, path := pair(t)
	takeOver := func(path string) (*Unix, error) {
		u, err := UnixLater(path, true)
		if err != nil {
			return nil, err
		}
		if err := u.Start(); err != nil {
			u.Close()
			return nil, err
		}
		return u, nil
	}
	if _, err := takeOver(filepath.Join(t.TempDir(), "missing", "x.sock")); err == nil {
		t.Fatal("a take-over in a missing directory succeeded")
	}
	later, err := UnixLater(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	if _, err := os.Stat(path); err != nil || later.Connected() {
		t.Fatal("a listening end bound before Start")
	}
	if err := later.Start(); err != nil {
		t.Fatal(err)
	}
	taken := later
	if !old.Connected() {
		t.Fatal("the old listener lost its peer when the path was taken over")
	}
	old.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the old listener's Close removed the new socket file: %v", err)
	}
	// The peer sees the hang-up when it next reads (as a device does on
	// readiness) and redials: it reaches the new listener.
	waitFor(t, "the peer on the new listener", func() bool {
		peer.RecvSG([][]byte{make([]byte, 100)})
		return taken.Connected()
	})
	frame := bytes.Repeat([]byte{0x5a}, 60)
	waitFor(t, "a frame through the new listener", func() bool {
		if _, err := peer.SendSG([][]byte{frame}); err != nil {
			return false
		}
		buf := make([]byte, 100)
		n, err := taken.RecvSG([][]byte{buf})
		return err == nil && bytes.Equal(buf[:n], frame)
	})
	taken.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the new listener's Close left its socket file: %v", err)
	}
	// Something other than a socket is never taken over.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := takeOver(file); err == nil {
		t.Fatal("a take-over replaced a regular file")
	}
}

// TestUnixConnectLater: a connecting end made with UnixLater does not
// connect (and drops frames) until Start.
func TestUnixConnectLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "net.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := UnixLater(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	frame := bytes.Repeat([]byte{0x33}, 60)
	if n, err := c.SendSG([][]byte{frame}); err != nil || n != len(frame) {
		t.Fatalf("send before Start: %d %v (want the frame dropped)", n, err)
	}
	time.Sleep(50 * time.Millisecond)
	if l.Connected() {
		t.Fatal("connected before Start")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection after Start", l.Connected)
	waitFor(t, "a frame after Start", func() bool {
		c.SendSG([][]byte{frame})
		buf := make([]byte, 100)
		n, err := l.RecvSG([][]byte{buf})
		return err == nil && bytes.Equal(buf[:n], frame)
	})
	if _, _, d := c.Stats(); d == 0 {
		t.Error("the frame sent before Start was not counted as dropped")
	}
}

// TestTapInNamespace creates a tap interface in a namespace of its own,
// gives it an address and asks the kernel, with an ARP request sent into
// the tap, for that address's MAC; the kernel's reply comes back out of
// the tap. Both header modes.
func TestTapInNamespace(t *testing.T) {
	ns := netnstest.New(t)
	for _, vnet := range []bool{false, true} {
		name := "wvtap0"
		if vnet {
			name = "wvtap1"
		}
		var tap *Tap
		if err := ns.Do(func() error {
			var err error
			tap, err = OpenTap(TapConfig{Name: name, VnetHdr: vnet})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer tap.Close()
		if tap.Name() != name || tap.FD() < 0 || tap.VnetHdr() != vnet {
			t.Fatalf("tap %q fd %d vnet %v", tap.Name(), tap.FD(), tap.VnetHdr())
		}
		hostIP := net.IPv4(10, 77, 0, 1)
		if vnet {
			hostIP = net.IPv4(10, 78, 0, 1)
		}
		for _, args := range [][]string{
			{"addr", "add", hostIP.String() + "/24", "dev", name},
			{"link", "set", name, "up"},
		} {
			if _, err := ns.IP(args...); err != nil {
				t.Fatal(err)
			}
		}
		out, _ := ns.IP("link", "show", name)
		kernelMAC := ""
		if i := strings.Index(out, "link/ether "); i >= 0 {
			kernelMAC = strings.Fields(out[i+len("link/ether "):])[0]
		}
		var nt notifier
		tap.Watch(nt.fn)
		tap.Ready()
		for {
			if _, err := tap.RecvSG([][]byte{make([]byte, 2048)}); err != nil {
				break // drain anything the kernel sent at link up
			}
		}
		guestIP := net.IPv4(10, 77, 0, 2)
		if vnet {
			guestIP = net.IPv4(10, 78, 0, 2)
		}
		req := netnstest.ARPRequest(net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, guestIP, hostIP)
		bufs := split(req, 14, 8)
		hdr := make([]byte, VnetHdrLen)
		if vnet {
			bufs = append([][]byte{hdr}, bufs...)
		}
		want := len(req)
		if vnet {
			want += VnetHdrLen
		}
		before := nt.n.Load()
		if n, err := tap.SendSG(bufs); n != want || err != nil {
			t.Fatalf("send: %d %v", n, err)
		}
		waitFor(t, "a readiness notification for the reply", func() bool { return nt.n.Load() > before })
		deadline := time.Now().Add(patience)
		var got net.HardwareAddr
		for got == nil {
			if time.Now().After(deadline) {
				t.Fatalf("vnet_hdr=%v: no ARP reply from the kernel (%d notifications)", vnet, nt.n.Load())
			}
			buf := make([]byte, 2048)
			rx := [][]byte{buf}
			if vnet {
				rx = [][]byte{hdr, buf}
			}
			n, err := tap.RecvSG(rx)
			if wouldBlockErr(err) {
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if vnet {
				n -= VnetHdrLen
			}
			got, _ = netnstest.ARPReply(buf[:n], net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, guestIP, hostIP)
		}
		if got.String() != kernelMAC {
			t.Errorf("ARP reply says %s, the tap's MAC is %q", got, kernelMAC)
		}
		if s, r := tap.Stats(); s != 1 || r == 0 {
			t.Errorf("stats %d %d", s, r)
		}
		if !vnet {
			adoptAndAsk(t, tap, req, guestIP, hostIP)
		}
	}
}

// adoptAndAsk hands the tap's descriptor over as cpr-transfer does (a
// duplicate, the original closed) and asks the kernel again through it.
func adoptAndAsk(t *testing.T, tap *Tap, req []byte, guestIP, hostIP net.IP) {
	t.Helper()
	fd, err := unix.Dup(tap.FD())
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()
	adopted, err := AdoptTap(fd, tap.Name(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Close()
	if _, err := adopted.SendSG([][]byte{req}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(patience)
	buf := make([]byte, 2048)
	for {
		n, err := adopted.RecvSG([][]byte{buf})
		if err == nil {
			if _, ok := netnstest.ARPReply(buf[:n], net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, guestIP, hostIP); ok {
				return
			}
			continue
		}
		if !wouldBlockErr(err) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no ARP reply through the adopted descriptor")
		}
		time.Sleep(time.Millisecond)
	}
}

// patience bounds every wait for the peer or the kernel; the machine is
// shared, so it is generous (waits end as soon as the condition holds).
const patience = 30 * time.Second

// TestUnixNoLostWakeup sends single frames, one at a time, to a listening
// end whose reader works as the host's delivery does (on notify: while
// Ready reports readable, receive until the socket is empty). Every frame
// must be delivered without a later one to push it: a frame arriving while
// Ready re-armed readiness once waited for the next frame.
func TestUnixNoLostWakeup(t *testing.T) {
	l, c, _ := pair(t)
	got := make(chan struct{}, 1)
	var busy sync.Mutex
	deliver := func() {
		busy.Lock() // one delivery at a time, as the host's instance lock
		defer busy.Unlock()
		buf := make([]byte, 100)
		for l.Ready()&abi.EventReadable != 0 {
			for {
				if _, err := l.RecvSG([][]byte{buf}); err != nil {
					break
				}
				select {
				case got <- struct{}{}:
				default:
				}
			}
		}
	}
	l.Watch(func() { go deliver() })
	l.Ready() // arm
	frame := bytes.Repeat([]byte{0x42}, 60)
	const frames = 20000
	for i := 0; i < frames; i++ {
		if _, err := c.SendSG([][]byte{frame}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(2 * time.Second):
			t.Fatalf("frame %d of %d was not delivered: a lost wakeup", i, frames)
		}
	}
}

// TestUnixFrameDuringArmingIsDelivered forces the lost-wakeup window: a
// frame arrives after Ready's first look found nothing and before it armed
// readiness again, while the waiter, still disarmed, sees the frame's edge
// and goes back to sleep. Ready must report the frame.
func TestUnixFrameDuringArmingIsDelivered(t *testing.T) {
	l, c, _ := pair(t)
	notified := make(chan struct{}, 16)
	l.Watch(func() { notified <- struct{}{} })
	frame := bytes.Repeat([]byte{0x24}, 60)
	buf := make([]byte, 100)
	// A first frame: the waiter fires and disarms.
	l.Ready()
	if _, err := c.SendSG([][]byte{frame}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for the first frame")
	}
	if _, err := l.RecvSG([][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	// The second frame lands in the window.
	l.ready.afterFirstLook = func() {
		l.ready.afterFirstLook = nil
		if _, err := c.SendSG([][]byte{frame}); err != nil {
			t.Error(err)
		}
		time.Sleep(20 * time.Millisecond) // the disarmed waiter sees the edge
	}
	if ev := l.Ready(); ev&abi.EventReadable == 0 {
		t.Fatalf("Ready = %v with a frame waiting: its wakeup would be lost", ev)
	}
	if _, err := l.RecvSG([][]byte{buf}); err != nil {
		t.Fatalf("the second frame: %v", err)
	}
}

// TestUnixTakeOverWhileTheOldEndCloses forces the window of a cpr-transfer
// hand-over on a listening link: the new process's bind finds the path in
// use, and before it looks at the file there the old process closes its
// end and removes its socket file. The take-over must bind anyway (a
// failed one leaves the new process's device without a peer for good)
// and the peer must reach it.
func TestUnixTakeOverWhileTheOldEndCloses(t *testing.T) {
	old, peer, path := pair(t)
	later, err := UnixLater(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	later.afterAddrInUse = func() {
		later.afterAddrInUse = nil
		old.Close() // its own socket file still: removed
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("the old end's Close left its socket file: %v", err)
		}
	}
	if err := later.Start(); err != nil {
		t.Fatalf("take-over while the old end closes: %v", err)
	}
	waitFor(t, "the peer on the new listener", func() bool {
		peer.RecvSG([][]byte{make([]byte, 100)})
		return later.Connected()
	})
}

// TestUnixHandOverLeavesThePath: an end that hands its path over closes
// its listener and connection but never removes the socket file, whether
// the new process bound its own there already (which Close's check-then-
// remove could race with) or binds later (the file is then stale and
// replaced); the peer redials and reaches the new process either way.
func TestUnixHandOverLeavesThePath(t *testing.T) {
	for _, newFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("new-first=%v", newFirst), func(t *testing.T) {
			old, peer, path := pair(t)
			later, err := UnixLater(path, true)
			if err != nil {
				t.Fatal(err)
			}
			defer later.Close()
			start := func() {
				if err := later.Start(); err != nil {
					t.Fatal(err)
				}
			}
			if newFirst {
				start()
			}
			var before unix.Stat_t
			if err := unix.Stat(path, &before); err != nil {
				t.Fatal(err)
			}
			if err := old.HandOver(); err != nil {
				t.Fatal(err)
			}
			var after unix.Stat_t
			if err := unix.Stat(path, &after); err != nil || after.Ino != before.Ino {
				t.Fatalf("HandOver touched the socket file (inode %d before, %d after): %v", before.Ino, after.Ino, err)
			}
			if old.Connected() {
				t.Fatal("HandOver kept the connection")
			}
			if !newFirst {
				start()
			}
			waitFor(t, "the peer on the new listener", func() bool {
				peer.RecvSG([][]byte{make([]byte, 100)})
				return later.Connected()
			})
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("Close after HandOver removed the new socket file: %v", err)
			}
		})
	}
}
