// Package vnet is the virtio-net device (virtio 1.2 §5.1) that the
// virtio-net plugin releases build: release 1 (plugins/virtio-net) and
// release 2 (plugins/virtio-net/v2), which adds device statistics (frames and
// bytes sent and received, frames dropped) migrated in the subsection
// "virtio-net/stats", sent only when a counter is non-zero. A v1 destination
// does not know that subsection, so a v2 device that counted anything cannot
// migrate back to v1 (QEMU's rule for optional state: a subsection the
// destination does not know fails the load); a v1 stream loads into v2 with
// the counters at zero. Both releases count; only release 2 migrates the
// counters.
//
// The device is the wasmvmm plugin for a virtio network device
// (virtio 1.2 §5.1) on the modern virtio-mmio transport (sdk/virtio): one
// MMIO region of virtio.RegionSize (0x200) bytes, one level-triggered
// interrupt line (line 0), a receive queue (0) and a transmit queue (1) of
// 256 entries each, no control queue (VIRTIO_NET_F_CTRL_VQ is not offered:
// no promiscuous/MAC filter commands, no multiqueue), and a net backend
// named "net".
//
// Features: VIRTIO_NET_F_MAC, MTU, STATUS (the link is always up),
// MRG_RXBUF (property mrg_rxbuf), and the offloads CSUM, GUEST_CSUM,
// HOST_TSO4/6, GUEST_TSO4/6, HOST_USO, GUEST_USO4/6, each behind its
// property; a property that is off, or whose prerequisite CSUM or
// GUEST_CSUM is off, takes the feature out of the offer (machine types turn
// the USO features off for older versions this way). Offloads are offered
// only when the backend carries the 12-byte virtio_net_hdr with every frame,
// which the device learns from its property vnet_hdr (the plugin ABI has no
// call to ask the backend): set it with a tap opened "tap:IFNAME,vnet_hdr",
// or on both ends of a unix link. Without it the device strips the header
// on transmit and writes a zero one on receive. VIRTIO_F_VERSION_1,
// INDIRECT_DESC and EVENT_IDX come from the transport.
//
// Frames never pass through the plugin: transmit gathers a chain's guest
// buffers into the backend (backend_send_sg, skipping the header unless the
// backend takes it); receive scatters a frame from the backend into one
// receive chain, or with mergeable buffers into as many as it needs
// (backend_recv_sg), and the plugin writes only the header (num_buffers).
//
// Calls: one transmit notification sends every available chain, in
// batches that cost one backend_send_sg per frame plus a few ring accesses
// per batch (available index and entries, the descriptor table, the used
// entries and index, each in one call). One readiness call receives every
// waiting frame the buffers take; per frame it costs a Pop (three ring
// reads), backend_recv_sg, a header write and a Push (two stores). With
// mergeable buffers the device holds chains for the largest frame the
// driver accepts (MTU plus Ethernet header, or 64 KiB with guest
// segmentation offloads) before it reads a frame, since a frame's length is
// known only once it was read. When the receive queue has no buffers the
// device stops watching the backend and resumes at the driver's next
// receive notification (or when the driver sets DRIVER_OK).
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (see
// host/pluginbuild).
package vnet

import (
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

// Device id, queues and limits.
const (
	deviceID  = 1
	rxQ       = 0
	txQ       = 1
	queueSize = 256
	// hdrLen is struct virtio_net_hdr with VIRTIO_F_VERSION_1: flags,
	// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
	hdrLen = 12
	// ethOverhead is an Ethernet header with one VLAN tag.
	ethOverhead = 14 + 4
	// maxGSOFrame is the largest frame with segmentation offload: a 64 KiB
	// IP packet behind an Ethernet header with a VLAN tag.
	maxGSOFrame = 65535 + ethOverhead
	// configSize covers struct virtio_net_config up to mtu.
	configSize = 12
)

// Feature bits (§5.1.3).
const (
	fCsum      = 0
	fGuestCsum = 1
	fMTU       = 3
	fMAC       = 5
	fGuestTSO4 = 7
	fGuestTSO6 = 8
	fGuestECN  = 9
	fGuestUFO  = 10
	fHostTSO4  = 11
	fHostTSO6  = 12
	fMrgRxbuf  = 15
	fStatus    = 16
	fGuestUSO4 = 54
	fGuestUSO6 = 55
	fHostUSO   = 56
)

// Config space offsets (struct virtio_net_config) and status bits.
const (
	cfgMAC       = 0
	cfgStatus    = 6
	cfgMaxPairs  = 8
	cfgMTU       = 10
	statusLinkUp = 1
)

// netState is the migrated state: section "virtio-net", version 1.
//
// Compatibility rules for later versions of this plugin: the transport and
// queue states are nested structs, which carry no version on the wire, so
// they never change shape silently. A v2 adds device state either as a new
// top-level field tagged `since=2` (section Version(2), MinimumVersion(1):
// a v1 stream still loads, the field keeps its reset value), as a field
// gated on a property (`if=prop`) that machine types pin off for older
// versions, or as a subsection ("virtio-net/<name>") sent only when its
// needed function says so. Nothing here is conditional yet.
type netState struct {
	Transport virtio.TransportState `vmstate:"transport"`
	Queues    [2]virtio.QueueState  `vmstate:"queues"`
	// MAC is the address the guest sees; a loaded one wins over the
	// destination's property, as the guest already uses it.
	MAC [6]byte `vmstate:"mac"`
	// LinkStatus is the config space status field (VIRTIO_NET_S_LINK_UP).
	LinkStatus uint16 `vmstate:"status"`
	// MTU is the config space mtu field.
	MTU uint16 `vmstate:"mtu"`
	// HostFeatures is every feature bit the device offered (transport bits
	// included), for diagnosis of a stream; the transport checks that the
	// destination offers what was negotiated.
	HostFeatures uint64 `vmstate:"host_features"`
}

// netStats is the v2 subsection "virtio-net/stats".
type netStats struct {
	TxFrames  uint64 `vmstate:"tx_frames"`
	TxBytes   uint64 `vmstate:"tx_bytes"`
	TxDropped uint64 `vmstate:"tx_dropped"`
	RxFrames  uint64 `vmstate:"rx_frames"`
	RxBytes   uint64 `vmstate:"rx_bytes"`
	RxDropped uint64 `vmstate:"rx_dropped"`
}

// any reports whether a counter is non-zero: the subsection is needed.
func (s *netStats) any() bool { return *s != netStats{} }

var (
	st    netState
	stats netStats

	macProp   = sdk.String("mac", "52:54:00:12:34:56", "MAC address (unicast, xx:xx:xx:xx:xx:xx)")
	mtuProp   = sdk.U16("mtu", 1500, "MTU offered with VIRTIO_NET_F_MTU (68..65535)")
	mrgRxbuf  = sdk.Bool("mrg_rxbuf", true, "offer VIRTIO_NET_F_MRG_RXBUF (mergeable receive buffers)")
	vnetHdr   = sdk.Bool("vnet_hdr", false, "the net backend carries a 12-byte virtio_net_hdr with every frame (tap:IFNAME,vnet_hdr); required for the offload features")
	csum      = sdk.Bool("csum", true, "offer VIRTIO_NET_F_CSUM (needs vnet_hdr)")
	guestCsum = sdk.Bool("guest_csum", true, "offer VIRTIO_NET_F_GUEST_CSUM (needs vnet_hdr)")
	hostTSO4  = sdk.Bool("host_tso4", true, "offer VIRTIO_NET_F_HOST_TSO4 (needs vnet_hdr and csum)")
	hostTSO6  = sdk.Bool("host_tso6", true, "offer VIRTIO_NET_F_HOST_TSO6 (needs vnet_hdr and csum)")
	guestTSO4 = sdk.Bool("guest_tso4", true, "offer VIRTIO_NET_F_GUEST_TSO4 (needs vnet_hdr and guest_csum)")
	guestTSO6 = sdk.Bool("guest_tso6", true, "offer VIRTIO_NET_F_GUEST_TSO6 (needs vnet_hdr and guest_csum)")
	hostUSO   = sdk.Bool("host_uso", true, "offer VIRTIO_NET_F_HOST_USO (needs vnet_hdr and csum)")
	guestUSO4 = sdk.Bool("guest_uso4", true, "offer VIRTIO_NET_F_GUEST_USO4 (needs vnet_hdr and guest_csum)")
	guestUSO6 = sdk.Bool("guest_uso6", true, "offer VIRTIO_NET_F_GUEST_USO6 (needs vnet_hdr and guest_csum)")
)

// device holds what is not migrated: the backend, the transport, the
// receive pool and scratch buffers, all set up again by realize.
type device struct {
	t        *virtio.Transport
	be       *sdk.Backend
	vnet     bool
	config   [configSize]byte
	watching abi.BackendEvent
	// rxStalled: the receive queue ran out of buffers (or the driver is not
	// running); the device does not watch the backend for input until the
	// next receive notification.
	rxStalled bool
	// txBlocked: the backend refused a frame for now; the chain was given
	// back to the ring and the device waits for the backend to be writable.
	txBlocked bool
	rx        rxPool
	txr       txRing
	hdr       [hdrLen]byte
	sg        []sdk.SGEntry
}

// netHandler is the device as the transport's virtio.Handler (its Reset
// is the device part of a reset; the device's own Reset is the system
// reset, which goes through the transport).
type netHandler struct{ d *device }

// Release says which plugin release a binary is.
type Release struct {
	Version string // semver reported to the host
	Stats   bool   // migrate the statistics subsection (release 2)
}

// Releases of the plugin.
var (
	Release1 = Release{Version: "1.0.0"}
	Release2 = Release{Version: "2.0.0", Stats: true}
)

// Register registers the device for a release; the plugin's main package
// calls it from init.
func Register(rel Release) {
	opts := []sdk.Option{sdk.Version(1), sdk.MinimumVersion(1), sdk.InstanceAny}
	if rel.Stats {
		opts = append(opts, sdk.Subsection("virtio-net/stats", &stats, stats.any))
	}
	_ = sdk.VMState("virtio-net", &st, opts...)
	d := &device{sg: make([]sdk.SGEntry, 0, 4)}
	d.rx.init()
	d.txr.init()
	sdk.Register("virtio-net", rel.Version, d)
}

// Realize adds the register window, opens the "net" backend and sets up
// the transport.
func (d *device) Realize(r *sdk.Realizer) error {
	mac, err := parseMAC(macProp.Get())
	if err != nil {
		return tinyfmt.Errorf("property mac: %w", err)
	}
	if mtuProp.Get() < 68 {
		return tinyfmt.Errorf("property mtu is %d; the smallest IPv4 MTU is 68", mtuProp.Get())
	}
	if _, err := r.AddMMIO(virtio.RegionSize); err != nil {
		return err
	}
	be, err := sdk.OpenBackend(abi.BackendNet, "net")
	if err != nil {
		return tinyfmt.Errorf("virtio-net needs a net backend named \"net\": %w", err)
	}
	d.be, d.vnet = be, vnetHdr.Get()
	if err := be.PreserveFD("net", 0); err != nil && !errors.Is(err, abi.ErrUnsupported) {
		return err
	}
	d.t, err = virtio.NewTransport(virtio.Config{
		Name: "virtio-net", DeviceID: deviceID, Features: offeredFeatures(d.vnet), ConfigSize: configSize,
		QueueSizes: []uint16{queueSize, queueSize},
	}, &st.Transport, st.Queues[:], netHandler{d})
	if err != nil {
		return err
	}
	st.MAC, st.LinkStatus, st.MTU = mac, statusLinkUp, mtuProp.Get()
	st.HostFeatures = d.t.OfferedFeatures()
	d.fillConfig()
	d.rxStalled = true
	return nil
}

// offeredFeatures returns the device feature bits the properties allow.
func offeredFeatures(vnet bool) uint64 {
	f := virtio.Feature(fMAC) | virtio.Feature(fMTU) | virtio.Feature(fStatus)
	on := func(p *sdk.BoolProp, bit uint) {
		if p.Get() {
			f |= virtio.Feature(bit)
		}
	}
	on(mrgRxbuf, fMrgRxbuf)
	if !vnet {
		return f // offloads need the header to reach the backend
	}
	if csum.Get() {
		f |= virtio.Feature(fCsum)
		on(hostTSO4, fHostTSO4)
		on(hostTSO6, fHostTSO6)
		on(hostUSO, fHostUSO)
	}
	if guestCsum.Get() {
		f |= virtio.Feature(fGuestCsum)
		on(guestTSO4, fGuestTSO4)
		on(guestTSO6, fGuestTSO6)
		on(guestUSO4, fGuestUSO4)
		on(guestUSO6, fGuestUSO6)
	}
	return f
}

// parseMAC parses a unicast MAC address written as six hex pairs
// separated by colons.
func parseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	if len(s) != 17 {
		return mac, tinyfmt.Errorf("%q is not a MAC address (xx:xx:xx:xx:xx:xx)", s)
	}
	hex := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	for i := range mac {
		hi, ok1 := hex(s[3*i])
		lo, ok2 := hex(s[3*i+1])
		if !ok1 || !ok2 || (i < 5 && s[3*i+2] != ':') {
			return mac, tinyfmt.Errorf("%q is not a MAC address (xx:xx:xx:xx:xx:xx)", s)
		}
		mac[i] = hi<<4 | lo
	}
	if mac[0]&1 != 0 {
		return mac, tinyfmt.Errorf("%s is a multicast address", s)
	}
	return mac, nil
}

func (d *device) fillConfig() {
	c := d.config[:]
	copy(c[cfgMAC:], st.MAC[:])
	c[cfgStatus], c[cfgStatus+1] = byte(st.LinkStatus), byte(st.LinkStatus>>8)
	c[cfgMaxPairs], c[cfgMaxPairs+1] = 1, 0
	c[cfgMTU], c[cfgMTU+1] = byte(st.MTU), byte(st.MTU>>8)
}

// Reset is a system reset: the transport and the device return to their
// power-on state, the counters to zero.
func (d *device) Reset() {
	stats = netStats{}
	d.t.Reset()
}

// MMIORead forwards to the transport.
func (d *device) MMIORead(_ sdk.Region, offset uint64, size int) uint64 {
	return d.t.MMIORead(offset, size)
}

// MMIOWrite forwards to the transport. When the driver sets DRIVER_OK the
// device starts receiving: buffers it added before then came with
// notifications the transport ignored.
func (d *device) MMIOWrite(_ sdk.Region, offset uint64, size int, value uint64) {
	live := d.t.Live()
	d.t.MMIOWrite(offset, size, value)
	if offset == virtio.RegStatus && !live && d.t.Live() {
		d.rxStalled = false
		d.receive()
	}
}

// ReadConfig implements virtio.Handler.
func (h netHandler) ReadConfig(offset uint32, p []byte) { copy(p, h.d.config[offset:]) }

// errReadOnlyConfig answers config writes: with VIRTIO_F_VERSION_1 every
// field of the network device's config space is read-only.
var errReadOnlyConfig = errors.New("virtio-net config space is read-only")

// WriteConfig implements virtio.Handler.
func (h netHandler) WriteConfig(uint32, []byte) error { return errReadOnlyConfig }

// QueueNotify implements virtio.Handler: a transmit notification sends
// every available frame; a receive notification means new buffers.
func (h netHandler) QueueNotify(q *virtio.Queue) {
	d := h.d
	switch q.Index() {
	case txQ:
		d.transmit()
	case rxQ:
		if d.rxStalled {
			d.rxStalled = false
			d.receive()
		}
	}
}

// Reset implements virtio.Handler: the driver reset the device (or the
// system did). Buffers held for receiving belong to the old rings.
func (h netHandler) Reset() {
	d := h.d
	d.rx.clear()
	d.rxStalled, d.txBlocked = true, false
	d.updateWatch()
}

// BackendReady handles input (or a hang-up) and room for output.
func (d *device) BackendReady(_ *sdk.Backend, ev abi.BackendEvent) {
	if ev&abi.EventWritable != 0 && d.txBlocked {
		d.txBlocked = false
		d.updateWatch()
		d.transmit()
	}
	if ev&(abi.EventReadable|abi.EventHangup) != 0 && !d.rxStalled {
		d.receive()
	}
}

// updateWatch asks the host for the events the device waits for now.
func (d *device) updateWatch() {
	var want abi.BackendEvent
	if !d.rxStalled && d.t.Live() {
		want |= abi.EventReadable
	}
	if d.txBlocked && d.t.Live() {
		want |= abi.EventWritable
	}
	if want == d.watching || d.be == nil {
		return
	}
	if err := d.be.Watch(want); err != nil {
		d.t.Logf(abi.LogError, "watch", "watching the net backend for events %d: %v", want, err)
		return
	}
	d.watching = want
}

// PreSave gives the receive buffers the device holds back to the ring
// (they were taken but never used), so the state names no buffer in
// flight. A transmit chain the backend refused was given back already.
func (d *device) PreSave() error {
	d.rx.giveBack()
	return nil
}

// PostLoad checks the loaded state and resumes the queues: receiving,
// and transmitting whatever the source left in the ring once the backend
// is writable.
func (d *device) PostLoad(uint32) error {
	if err := d.t.PostLoad(); err != nil {
		return err
	}
	if st.MTU < 68 {
		return tinyfmt.Errorf("virtio-net: loaded mtu %d is below 68", st.MTU)
	}
	st.HostFeatures = d.t.OfferedFeatures()
	d.fillConfig()
	d.rx.clear()
	d.rxStalled = !d.t.Live()
	d.txBlocked = d.t.Live()
	d.watching = -1 // unknown: always re-ask
	d.updateWatch()
	return nil
}
