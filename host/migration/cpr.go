package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"time"

	"wasmvmm/abi"
	"wasmvmm/host/cpr"
	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// cpr-transfer, the source side. See docs/cpr-transfer.md for the whole
// protocol and why its order differs from QEMU's.
//
//  1. Checks before anything moves: mode, one main socket channel, one cpr
//     unix channel, capabilities that combine, blockers (RAM not backed by
//     a memfd registers one for this mode).
//  2. The cpr channel: connect, send the CPR state (every RAM memfd and
//     every descriptor a plugin preserved), shut down writing, wait for the
//     destination to hang up. The guest runs all along.
//  3. The main channel: connect, pre-flight (the destination compares the
//     machine description and every schema with its own and says yes, or
//     why not). The guest still runs; the destination has its VM, RAM and
//     devices built.
//  4. The pause: stop the vCPUs, hold device events, send vCPU and device
//     state (no RAM: it is the same memory), wait for the verdict.
//  5. Success: postmigrate; the source closes its copies of the handed-over
//     descriptors (the disk's lock stays with the open file description the
//     destination holds). Failure at any point: the guest goes on here with
//     its RAM, descriptors and disks untouched.

// DescriptorName is the CPR-state name of a descriptor a plugin preserved:
// device id, backend name and the plugin's own name, "/"-separated; the id
// is the plugin's. RAM blocks go under their block name with id 0.
func DescriptorName(device, backend, name string) string {
	return "dev/" + device + "/" + backend + "/" + name
}

// addRAMBlockers registers a cpr-transfer blocker for every RAM block that
// is not backed by a memfd: its memory cannot be shared with a successor.
func (g *Migrator) addRAMBlockers() {
	m := g.cfg.Machine
	if m == nil || m.Memory() == nil {
		return
	}
	for _, b := range m.Memory().Blocks() {
		if b.FD < 0 {
			g.AddBlocker(fmt.Sprintf("RAM block %s (%d MiB) is anonymous memory, not a memfd: cpr-transfer shares RAM with the new process (start with --share-memory or share_memory = true)",
				b.Name, b.Size()>>20), ModeCPRTransfer)
		}
	}
}

// cprChannels checks the channels of a cpr-transfer migration.
func cprChannels(chs []Channel) (main, cprCh Channel, err error) {
	var nMain, nCPR int
	for _, c := range chs {
		switch c.Type {
		case "main":
			main = c
			nMain++
		case "cpr":
			cprCh = c
			nCPR++
		default:
			return main, cprCh, fmt.Errorf("unknown channel type %q", c.Type)
		}
	}
	switch {
	case nMain != 1:
		return main, cprCh, fmt.Errorf("cpr-transfer needs exactly one main channel (got %d)", nMain)
	case nCPR == 0:
		return main, cprCh, errors.New("cpr-transfer needs a cpr channel: migrate with channels [{\"channel-type\": \"main\", ...}, {\"channel-type\": \"cpr\", ...}]")
	case nCPR > 1:
		return main, cprCh, fmt.Errorf("cpr-transfer takes one cpr channel (got %d)", nCPR)
	case cprCh.Transport != "unix":
		return main, cprCh, fmt.Errorf("the cpr channel %s must be a unix socket: descriptors travel by SCM_RIGHTS", cprCh)
	case !socketChannel(main):
		return main, cprCh, fmt.Errorf("the main channel %s of a cpr-transfer must be a socket", main)
	}
	return main, cprCh, nil
}

// startCPR begins a cpr-transfer in the background. Everything that can be
// refused without the destination is refused here, before the guest stops.
func (g *Migrator) startCPR(chs []Channel) error {
	main, cprCh, err := cprChannels(chs)
	if err != nil {
		return err
	}
	caps := g.capabilities()
	if caps.Multifd {
		return errors.New("capability multifd cannot be used with mode cpr-transfer: RAM is not sent")
	}
	if !caps.Preflight {
		return errors.New("cpr-transfer needs capability x-preflight: the source keeps the guest until the destination's verdict")
	}
	if g.cfg.Machine.Memory() == nil {
		return errors.New("cpr-transfer: the machine has no RAM")
	}
	ctx, err := g.begin(ModeCPRTransfer)
	if err != nil {
		return err
	}
	go g.runCPR(ctx, main, cprCh)
	return nil
}

// cprSource is one outgoing cpr-transfer.
type cprSource struct {
	g    *Migrator
	m    *machine.Machine
	ctx  context.Context
	conn net.Conn
	// kept are the disks whose descriptor travels (their lock with it);
	// gaveUp the ones inactivated for a normal hand-over.
	kept, gaveUp []ownedDisk
	stopAt       time.Time
	streamBytes  int64
}

func (g *Migrator) runCPR(ctx context.Context, main, cprCh Channel) {
	p := &cprSource{g: g, m: g.cfg.Machine, ctx: ctx}
	stopped, prev, err := p.run(main, cprCh)
	if p.conn != nil {
		p.conn.Close()
	}
	mode := ModeCPRTransfer
	if err == nil {
		g.mu.Lock()
		g.downtime = time.Since(p.stopAt)
		g.ram = RAMInfo{Total: int64(p.m.Memory().Size())}
		g.handedOver = true
		g.mu.Unlock()
		if rerr := p.m.EnterRunState(machine.StatePostMigrate); rerr != nil {
			g.log.Warn("postmigrate", "error", rerr)
		}
		p.releaseDescriptors()
		g.finish(StatusCompleted)
		g.notify(abi.MigrationDone, mode)
		return
	}
	g.recoverSource(ctx, err, "cpr-transfer", mode, stopped, prev, p.gaveUp)
}

// entries lists what the CPR state carries: RAM memfds, then preserved
// device descriptors.
func (p *cprSource) entries() ([]cpr.Entry, error) {
	var out []cpr.Entry
	for _, b := range p.m.Memory().Blocks() {
		if b.FD < 0 {
			return nil, fmt.Errorf("RAM block %s is not a memfd", b.Name)
		}
		out = append(out, cpr.Entry{Name: b.Name, ID: 0, FD: b.FD})
	}
	if p.g.cfg.Preserved == nil {
		return out, nil
	}
	for _, pf := range p.g.cfg.Preserved.Preserved() {
		h, ok := pf.Backend.(interface{ FD() int })
		if !ok || h.FD() < 0 {
			return nil, fmt.Errorf("device %s backend %s: its descriptor is gone", pf.Device, pf.BackendName)
		}
		if strings.Contains(pf.Device, "/") || strings.Contains(pf.BackendName, "/") {
			return nil, fmt.Errorf("device %s backend %s: a \"/\" in the name cannot be carried", pf.Device, pf.BackendName)
		}
		out = append(out, cpr.Entry{Name: DescriptorName(pf.Device, pf.BackendName, pf.Name), ID: int32(pf.ID), FD: h.FD()})
	}
	return out, nil
}

// preservedDisk reports whether d's descriptor travels in the CPR state.
func (p *cprSource) preservedDisk(d ownedDisk) bool {
	if p.g.cfg.Preserved == nil {
		return false
	}
	for _, pf := range p.g.cfg.Preserved.Preserved() {
		if b, ok := pf.Backend.(ownedDisk); ok && b == d {
			return true
		}
	}
	return false
}

func (p *cprSource) run(main, cprCh Channel) (stopped bool, prev machine.RunState, err error) {
	g, m := p.g, p.m
	setupStart := time.Now()
	entries, err := p.entries()
	if err != nil {
		return false, "", err
	}
	// The cpr channel: the destination reads the state, builds its VM over
	// our RAM and its devices over our descriptors, listens on the main
	// channel and hangs up.
	cc, err := cpr.Send(p.ctx, cprCh.Path, entries)
	if err != nil {
		return false, "", p.cancelled(err)
	}
	if err := cpr.WaitHangup(p.ctx, cc); err != nil {
		return false, "", p.cancelled(err)
	}
	conn, err := dial(p.ctx, main)
	if err != nil {
		return false, "", p.cancelled(fmt.Errorf("the destination read the cpr state but does not listen on the main channel: %w", err))
	}
	p.conn = conn
	stop := context.AfterFunc(p.ctx, func() { conn.Close() })
	defer stop()
	host, reg, err := machineRegistry(m)
	if err != nil {
		return false, "", err
	}
	if err := p.preflight(reg); err != nil {
		return false, "", p.cancelled(err)
	}
	g.mu.Lock()
	g.setupTime = time.Since(setupStart)
	g.ram.Total = int64(m.Memory().Size())
	g.mu.Unlock()
	g.setStatus(StatusActive)
	if p.ctx.Err() != nil {
		return false, "", errCancelled
	}

	// Everything that can be prepared is, before the pause: the stream
	// encoder warmed up on scratch vCPU sections (no device hook runs:
	// the guest is live), the writer (its buffer) and its header.
	if err := warmUpSave(len(m.VCPUs()), g.cfg.MachineType); err != nil {
		return false, "", err
	}
	warmUpHeap(stateSize(reg))
	cw := &countingWriter{w: conn}
	w, err := vmstate.NewWriter(cw, g.cfg.MachineType)
	if err != nil {
		return false, "", err
	}
	w.SuppressVMDesc = true // the pre-flight compared the schemas
	saveAhead(g, reg)

	// The pause.
	p.stopAt = time.Now()
	prev, err = m.StopFor(machine.StateFinishMigrate)
	if err != nil {
		return false, "", fmt.Errorf("stop the guest: %w", err)
	}
	// StopFor also held the devices: from here the source's devices do not
	// write the shared RAM.
	stoppedAt := time.Now()
	if g.capabilities().PauseBeforeSwitchover {
		g.setStatus(StatusPreSwitchover)
		if err := g.waitContinue(p.ctx); err != nil {
			return true, prev, err
		}
	}
	if p.ctx.Err() != nil {
		return true, prev, errCancelled
	}
	g.setStatus(StatusDevice)
	var tm phaseTimer
	tm.start()
	for _, d := range disks(m) {
		if p.preservedDisk(d) {
			p.kept = append(p.kept, d)
			continue
		}
		if !d.Active() {
			continue
		}
		if err := d.Inactivate(); err != nil {
			return true, prev, fmt.Errorf("inactivate disk %s: %w", d.Path(), err)
		}
		p.gaveUp = append(p.gaveUp, d)
	}
	tm.mark("disks")
	st, err := m.SaveCPUState()
	if err != nil {
		return true, prev, err
	}
	st.RunState = prev
	if err := host.fill(st); err != nil {
		return true, prev, err
	}
	tm.mark("cpu")
	conn.SetWriteDeadline(time.Now().Add(max(g.ioTimeout(), 30*time.Second)))
	if err := w.Complete(reg); err != nil { // no RAM section: RAM stays in place
		return true, prev, fmt.Errorf("send device state: %w", err)
	}
	// Without a vmdesc the stream ends at EOF: say so by shutting down
	// writing, so the destination does not wait for more.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return true, prev, fmt.Errorf("send device state: %w", err)
		}
	}
	p.streamBytes = cw.n
	tm.mark("devices")
	conn.SetReadDeadline(time.Now().Add(max(g.ioTimeout(), 30*time.Second)))
	v, err := readVerdict(conn)
	if err != nil {
		return true, prev, fmt.Errorf("no completion from the destination: %w", err)
	}
	if !v.OK {
		return true, prev, fmt.Errorf("the destination failed to load: %s", v.Error)
	}
	tm.mark("destination")
	g.log.Info("cpr-transfer switchover", "stream_bytes", p.streamBytes, "stop", stoppedAt.Sub(p.stopAt), "phases", tm.String())
	return true, prev, nil
}

// preflight sends the machine description and waits for the destination's
// yes; a refusal names every difference. The guest still runs.
func (p *cprSource) preflight(reg *vmstate.Registry) error {
	desc := describeMachine(p.g.cfg.MachineType, p.m.Memory().Blocks(), reg)
	d := max(p.g.ioTimeout(), 30*time.Second)
	p.conn.SetWriteDeadline(time.Now().Add(d))
	p.conn.SetReadDeadline(time.Now().Add(d))
	if err := writeMsg(p.conn, preambleMagic, desc); err != nil {
		return fmt.Errorf("pre-flight: send the description: %w", err)
	}
	v, err := readVerdict(p.conn)
	p.conn.SetReadDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("pre-flight: no answer from the destination: %w", err)
	}
	if !v.OK {
		return fmt.Errorf("the destination refused the migration: %s", v.Error)
	}
	return nil
}

// cancelled turns an error caused by migrate_cancel into errCancelled.
func (p *cprSource) cancelled(err error) error {
	if p.ctx.Err() != nil {
		return errCancelled
	}
	return err
}

// releaseDescriptors closes the source's copies of the descriptors the
// destination now holds: preserved backends (tap, disk images). A disk's
// lock belongs to the open file description, which the destination holds,
// so it never has no owner. The devices stay held (the machine holds them
// while it is stopped): this source must not
// touch the guest again.
func (p *cprSource) releaseDescriptors() {
	closeIt := func(device, name string, b any) {
		// A unix net link hands its socket path over: the new process
		// binds there at about this time (startLinks), and a Close that
		// removes the path could remove the new process's socket.
		if h, ok := b.(interface{ HandOver() error }); ok {
			if err := h.HandOver(); err != nil {
				p.g.log.Warn("closing a handed-over backend", "device", device, "backend", name, "error", err)
			}
			return
		}
		if c, ok := b.(io.Closer); ok {
			if err := c.Close(); err != nil {
				p.g.log.Warn("closing a handed-over backend", "device", device, "backend", name, "error", err)
			}
		}
	}
	if p.g.cfg.Preserved != nil {
		for _, pf := range p.g.cfg.Preserved.Preserved() {
			closeIt(pf.Device, pf.BackendName, pf.Backend)
		}
	}
	// Consoles on unix sockets and unix net links: their peers see the
	// hang-up and reconnect to the socket the new process listens on (same
	// path); a peer listener takes the new process's connection.
	for _, d := range p.m.Devices() {
		pd, ok := d.(*machine.PluginDevice)
		if !ok || pd.Instance == nil {
			continue
		}
		for _, ref := range pd.Instance.Backends() {
			spec := pd.Spec().Backends[ref.Name]
			console := ref.Kind == abi.BackendChar && strings.HasPrefix(spec, "unix:")
			link := ref.Kind == abi.BackendNet && (strings.HasPrefix(spec, "unix-listen:") || strings.HasPrefix(spec, "unix-connect:"))
			if !console && !link {
				continue
			}
			if b, err := pd.Backend(ref.Kind, ref.Name); err == nil {
				closeIt(pd.ID(), ref.Name, b)
			}
		}
	}
}

// saveAhead encodes the devices' state while the guest still runs, so
// that the pause resends what did not change since instead of running
// every device's hooks (vmstate.Registry.SaveAhead). A failure only costs
// that head start: the save in the pause runs the hooks again and reports.
func saveAhead(g *Migrator, reg *vmstate.Registry) {
	if err := reg.SaveAhead(); err != nil {
		g.log.Debug("device state not saved ahead", "error", err)
	}
}

// warmUpSave encodes scratch host sections once: the first encode in a
// process costs several times a later one, and the real one is inside the
// pause.
func warmUpSave(vcpus int, machineType string) error {
	scratch, err := newHostState(vcpus)
	if err != nil {
		return err
	}
	reg := vmstate.NewRegistry()
	for _, d := range scratch.devices {
		if _, err := reg.Register(d); err != nil {
			return err
		}
	}
	w, err := vmstate.NewWriter(io.Discard, machineType)
	if err != nil {
		return err
	}
	w.SuppressVMDesc = true
	return w.Complete(reg)
}

// stateSize is the largest number of bytes the sections of reg can put on
// the wire (every field at its full size).
func stateSize(reg *vmstate.Registry) int {
	var sectionSize func(sec *abi.Section) int
	sectionSize = func(sec *abi.Section) int {
		n := 0
		for _, f := range sec.Fields {
			n += int(f.Size) * int(max(f.Count, 1))
		}
		for i := range sec.Subsections {
			n += sectionSize(&sec.Subsections[i])
		}
		return n
	}
	total := 0
	for _, d := range reg.Devices() {
		total += sectionSize(d.Schema)
	}
	return total
}

// warmUpHeap makes the memory the state's buffers will take resident
// before the pause: a fresh page costs a fault on first touch (several
// microseconds on a nested host), and a device with megabytes of state
// (a display's resources) takes a few buffers of its size. The buffer is
// touched and freed, and a collection returns its pages to the heap for
// the next allocations.
func warmUpHeap(stateBytes int) {
	if stateBytes < 1<<20 {
		return
	}
	b := make([]byte, 3*stateBytes)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	runtime.KeepAlive(b)
	b = nil
	runtime.GC()
}
