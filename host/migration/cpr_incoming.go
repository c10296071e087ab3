package migration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"wasmvmm/abi"
	"wasmvmm/host/blockdev"
	"wasmvmm/host/cpr"
	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/netdev"
	"wasmvmm/host/plugin"
	"wasmvmm/host/vmstate"
)

// cpr-transfer, the destination side: the CPR state is read before the
// machine exists (ReceiveCPR), RAM is built over the source's memfds
// (Memory), devices open their backends over the source's descriptors
// (Opener); then ListenIncomingCPR listens on the main channel, hangs up
// the cpr channel (the source's signal to go on) and loads the vCPU and
// device state when it comes.

// CPRIncoming is what a destination received on the cpr channel.
type CPRIncoming struct {
	state *cpr.State
	log   hclog.Logger

	mu      sync.Mutex
	conn    *net.UnixConn  // open until the main channel listens
	adopted []string       // descriptors handed to devices, for the log
	links   []*netdev.Unix // unix net links started once the guest is here
}

// ReceiveCPR listens on the cpr channel ch (a unix socket), accepts the
// source and reads its CPR state. It blocks until the source connects or
// ctx ends.
func ReceiveCPR(ctx context.Context, ch Channel, log hclog.Logger) (*CPRIncoming, error) {
	if ch.Type != "cpr" {
		return nil, fmt.Errorf("%s is not a cpr channel", ch)
	}
	if ch.Transport != "unix" {
		return nil, fmt.Errorf("the cpr channel %s must be a unix socket", ch)
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	ln, err := cpr.Listen(ch.Path)
	if err != nil {
		return nil, err
	}
	st, conn, err := ln.Receive(ctx)
	if err != nil {
		return nil, err
	}
	in := &CPRIncoming{state: st, conn: conn, log: log}
	for _, e := range st.Entries() {
		log.Debug("cpr state", "name", e.Name, "id", e.ID)
	}
	return in, nil
}

// Entries lists the received entries.
func (in *CPRIncoming) Entries() []cpr.Entry { return in.state.Entries() }

// Memory builds vm's RAM over the source's memfds.
func (in *CPRIncoming) Memory(vm *config.VM) (*guestmem.Memory, error) {
	return machine.AdoptRAM(vm, func(name string) (int, bool) { return in.state.Take(name, 0) })
}

// take hands over the descriptor a plugin preserved for (device, backend),
// whatever name and id it chose.
func (in *CPRIncoming) take(device, backend string) (cpr.Entry, bool) {
	prefix := DescriptorName(device, backend, "")
	for _, e := range in.state.Untaken() {
		if strings.HasPrefix(e.Name, prefix) {
			if fd, ok := in.state.Take(e.Name, e.ID); ok {
				e.FD = fd
				return e, true
			}
		}
	}
	return cpr.Entry{}, false
}

// Opener wraps next: a backend whose descriptor the source preserved is
// adopted (a disk image inactive until the switchover, its lock travelling
// with the descriptor; a tap as the same open file); others open as next
// does.
func (in *CPRIncoming) Opener(next machine.BackendOpener, opt machine.BackendOptions) machine.BackendOpener {
	return func(device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
		e, ok := in.take(device, name)
		if !ok {
			return in.openNew(next, device, name, spec, kind)
		}
		b, err := adoptBackend(e.FD, device, name, spec, kind, opt)
		if err != nil {
			unix.Close(e.FD)
			return nil, fmt.Errorf("cpr-transfer: adopt %s/%d: %w", e.Name, e.ID, err)
		}
		in.mu.Lock()
		in.adopted = append(in.adopted, e.Name)
		in.mu.Unlock()
		in.log.Debug("adopted a descriptor", "device", device, "backend", name, "entry", e.Name)
		return b, nil
	}
}

// openNew opens a backend the source did not pass. A unix net link has no
// lasting descriptor to pass, so the new process opens its own, started
// only once the guest is here (startLinks): a failed transfer leaves the
// source's link alone. Then a unix-listen end takes the socket path over
// (the source's connected peer redials it once the source closes its end)
// and a unix-connect end connects (the peer's listener takes the new
// connection in place of the source's).
func (in *CPRIncoming) openNew(next machine.BackendOpener, device, name, spec string, kind abi.BackendKind) (plugin.Backend, error) {
	end, path, _ := strings.Cut(spec, ":")
	if kind != abi.BackendNet || (end != "unix-listen" && end != "unix-connect") {
		return next(device, name, spec, kind)
	}
	u, err := netdev.UnixLater(path, end == "unix-listen")
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	in.links = append(in.links, u)
	in.mu.Unlock()
	return u, nil
}

// startLinks starts the unix net links once the guest's state is loaded
// here: a listening end takes its path over from the source, a connecting
// end connects (the peer's listener takes it in place of the source's).
func (in *CPRIncoming) startLinks() {
	in.mu.Lock()
	links := in.links
	in.links = nil
	in.mu.Unlock()
	for _, u := range links {
		if err := u.Start(); err != nil {
			in.log.Error("cpr-transfer: a unix net link of the new process cannot start; its device has no peer", "path", u.Path(), "error", err)
		}
	}
}

// adoptBackend wraps a received descriptor as the backend spec describes.
func adoptBackend(fd int, device, name, spec string, kind abi.BackendKind, opt machine.BackendOptions) (plugin.Backend, error) {
	switch kind {
	case abi.BackendBlock:
		path := strings.TrimPrefix(spec, "file:")
		ro := false
		if p, ok := strings.CutSuffix(path, ",readonly"); ok {
			path, ro = p, true
		}
		var got, want unix.Stat_t
		if err := unix.Fstat(fd, &got); err != nil {
			return nil, err
		}
		if err := unix.Stat(path, &want); err != nil {
			return nil, fmt.Errorf("disk %s: %w", path, err)
		}
		if got.Dev != want.Dev || got.Ino != want.Ino {
			return nil, fmt.Errorf("the source's disk for %s.%s is not %s", device, name, path)
		}
		// Inactive: this process may not write before the switchover; the
		// lock is held by the open file description all along.
		return blockdev.Adopt(fd, path, false, blockdev.Options{ReadOnly: ro, Owner: fmt.Sprintf("%s device %s", opt.Owner, device)})
	case abi.BackendNet:
		kindName, arg, _ := strings.Cut(spec, ":")
		if kindName != "tap" {
			return nil, fmt.Errorf("net backend %q cannot be adopted (only tap)", spec)
		}
		ifname, opts, _ := strings.Cut(arg, ",")
		vnet := false
		for _, o := range strings.Split(opts, ",") {
			if o == "vnet_hdr" || o == "vnet_hdr=on" {
				vnet = true
			}
		}
		return netdev.AdoptTap(fd, ifname, vnet)
	}
	return nil, fmt.Errorf("backends of kind %d cannot be adopted", kind)
}

// Hangup closes the cpr channel: the source goes on to the main channel.
// Descriptors nobody adopted are closed (and logged).
func (in *CPRIncoming) Hangup() {
	in.mu.Lock()
	c := in.conn
	in.conn = nil
	in.mu.Unlock()
	if c == nil {
		return
	}
	for _, e := range in.state.Untaken() {
		in.log.Warn("cpr-transfer: no device took a preserved descriptor", "name", e.Name, "id", e.ID)
	}
	in.state.Close()
	c.Close()
}

// Close hangs up and closes everything not handed over.
func (in *CPRIncoming) Close() { in.Hangup() }

// ListenIncomingCPR listens on the main channel ch, then hangs up the cpr
// channel, and loads the vCPU and device state of the first connection in
// the background. The machine must be in inmigrate, built over in's RAM
// and descriptors.
func (g *Migrator) ListenIncomingCPR(ctx context.Context, ch Channel, in *CPRIncoming) (<-chan error, error) {
	ln, err := g.listenIncoming(ch, "incoming cpr-transfer")
	if err != nil {
		return nil, err
	}
	// The devices exist but must not act before their state arrives: the
	// machine holds them while it is in inmigrate (StartIncoming).
	g.mu.Lock()
	g.started, g.finished, g.errDesc = time.Now(), time.Time{}, ""
	g.ram = RAMInfo{}
	g.params.Mode = ModeCPRTransfer
	g.mu.Unlock()
	g.setStatus(StatusSetup)
	if err := g.warmUpLoad(); err != nil {
		ln.close()
		return nil, fmt.Errorf("incoming cpr-transfer: %w", err)
	}
	in.Hangup()
	out := make(chan error, 1)
	go func() {
		err := g.acceptAndLoad(ctx, ln, false, g.loadCPR)
		if err != nil {
			g.fail(fmt.Errorf("incoming cpr-transfer on %s: %w", ch, err))
			g.finishDone()
		} else {
			in.startLinks()
			g.finish(StatusCompleted)
		}
		out <- err
	}()
	return out, nil
}

// loadCPR answers the pre-flight and loads vCPU and device state; RAM is
// already the guest's.
func (g *Migrator) loadCPR(conn net.Conn) error {
	m := g.cfg.Machine
	host, reg, err := machineRegistry(m)
	if err != nil {
		return err
	}
	var r io.Reader = deadlineReader{conn: conn, timeout: max(g.ioTimeout(), 30*time.Second)}
	// The completion is encoded ahead: it is sent inside the pause.
	var okMsg bytes.Buffer
	if err := writeMsg(&okMsg, verdictMagic, verdict{OK: true}); err != nil {
		return err
	}
	reply := func(err error) error {
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		var werr error
		if err == nil {
			_, werr = conn.Write(okMsg.Bytes())
		} else {
			werr = writeMsg(conn, verdictMagic, verdict{Error: err.Error()})
		}
		if werr != nil && err == nil {
			return fmt.Errorf("tell the source: %w", werr)
		}
		return err
	}
	magic := make([]byte, len(preambleMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return fmt.Errorf("read the pre-flight description: %w", err)
	}
	if string(magic) != preambleMagic {
		return fmt.Errorf("the source sent %q, not a pre-flight description (cpr-transfer needs x-preflight)", magic)
	}
	var src machineDesc
	if err := readMsgBody(r, &src); err != nil {
		return fmt.Errorf("pre-flight description: %w", err)
	}
	here := describeMachine(g.cfg.MachineType, m.Memory().Blocks(), reg)
	if err := checkCompatible(src, here); err != nil {
		return reply(fmt.Errorf("incompatible source: %w", err))
	}
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := writeMsg(conn, verdictMagic, verdict{OK: true}); err != nil {
		return fmt.Errorf("pre-flight answer: %w", err)
	}
	// The source stops its guest now; from here every millisecond counts.
	// The pre-flight wait has no deadline: the source may wait in
	// pre-switchover.
	conn.SetReadDeadline(time.Time{})
	r = deadlineReader{conn: conn, timeout: 0}
	first := &firstByteReader{r: r}
	res, err := vmstate.Load(first, vmstate.LoadOptions{Machine: g.cfg.MachineType, Blocks: nil, Registry: reg, AllowMissingVMDesc: true})
	if err != nil {
		return reply(err)
	}
	var tm phaseTimer
	tm.start()
	loadTime := tm.t0.Sub(first.at)
	st, err := host.state()
	if err != nil {
		return reply(err)
	}
	if err := m.RestoreCPUState(st); err != nil {
		return reply(err)
	}
	tm.mark("cpu")
	if err := activateDisks(disks(m)); err != nil {
		return reply(err)
	}
	tm.mark("disks")
	g.mu.Lock()
	g.ram = RAMInfo{Total: int64(m.Memory().Size())}
	g.mu.Unlock()
	if err := reply(nil); err != nil {
		return err
	}
	tm.mark("reply")
	err = g.enterLoadedState(st.RunState) // releases the devices if the guest runs
	tm.mark("resume")
	g.log.Info("incoming cpr-transfer switchover", "stream_bytes", res.Bytes, "load", loadTime, "phases", tm.String())
	return err
}

// firstByteReader records when the first byte arrived.
type firstByteReader struct {
	r  io.Reader
	at time.Time
}

func (f *firstByteReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.at.IsZero() {
		f.at = time.Now()
	}
	return n, err
}

// warmUpLoad runs the state load once on the machine's own fresh state
// (saved and loaded back unchanged), before the source stops its guest:
// the first load in a process costs several times a later one (for the
// test machine's devices 0.7 ms against 0.2 ms), and the real one is
// inside the pause. The devices are fresh and their events held, so the
// round trip changes nothing. The vCPU state is written back the same way
// (machine.WarmUpRestore).
func (g *Migrator) warmUpLoad() error {
	m := g.cfg.Machine
	if err := m.WarmUpRestore(); err != nil {
		return err
	}
	_, reg, err := machineRegistry(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w, err := vmstate.NewWriter(&buf, g.cfg.MachineType)
	if err != nil {
		return err
	}
	w.SuppressVMDesc = true
	if err := w.Complete(reg); err != nil {
		return fmt.Errorf("warm-up save: %w", err)
	}
	if _, err := vmstate.Load(struct{ io.Reader }{bytes.NewReader(buf.Bytes())}, vmstate.LoadOptions{
		Machine: g.cfg.MachineType, Registry: reg, AllowMissingVMDesc: true}); err != nil {
		return fmt.Errorf("warm-up load: %w", err)
	}
	if buf.Len() >= 1<<20 {
		// The warm-up's buffers are garbage once this returns; the
		// collection hands their (resident) pages to the real load.
		defer runtime.GC()
	}
	return nil
}
