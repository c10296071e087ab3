// Command virtio-gpu is the wasmvmm plugin for a 2D virtio GPU (virtio 1.2
// §5.7, device id 16) on the modern virtio-mmio transport (sdk/virtio): one
// MMIO region of virtio.RegionSize (0x200) bytes, one level-triggered
// interrupt line, a control queue of 256 entries and a cursor queue of 16.
//
// Commands: GET_DISPLAY_INFO, GET_EDID (VIRTIO_GPU_F_EDID), RESOURCE_CREATE_2D
// (the eight 32-bit formats), RESOURCE_UNREF, SET_SCANOUT, RESOURCE_FLUSH,
// TRANSFER_TO_HOST_2D, RESOURCE_ATTACH_BACKING, RESOURCE_DETACH_BACKING on the
// control queue; UPDATE_CURSOR and MOVE_CURSOR on the cursor queue. Every
// command completes inside the queue notification that submitted it, in
// order, so a fenced command's fence is signalled by its own response.
//
// Resource pixels live in this plugin's linear memory, in a fixed pixel arena
// of arenaBytes (32 MiB): TRANSFER_TO_HOST_2D copies from the guest backing
// into it, as QEMU copies into its host-side pixman image. The arena migrates
// in 1 MiB subsections, each sent only when a live resource uses it; the
// resources' backing page lists migrate in subsections of 1024 entries. The
// host renders a scanout without any export: it finds the scanout, the
// resource table and the arena through this device's registered vmstate
// schema (package host/display).
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (see
// host/pluginbuild).
package main

import (
	"encoding/binary"
	"errors"

	"wasmvmm/abi"
	"wasmvmm/internal/tinyfmt"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

func main() {}

// Device id and feature bits (§5.7.3).
const (
	deviceID = 16
	fEDID    = 1
)

// Queues.
const (
	ctrlQueue       = 0
	cursorQueue     = 1
	ctrlQueueSize   = 256
	cursorQueueSize = 16
)

// Limits of this device.
const (
	// maxScanouts is VIRTIO_GPU_MAX_SCANOUTS: the scanout table always has
	// this many entries; max_outputs of them are usable.
	maxScanouts = 16
	// maxResources bounds the resource table.
	maxResources = 256
	// chunkBytes is the size of one pixel-arena subsection.
	chunkBytes = 1 << 20
	// arenaChunks * chunkBytes is the pixel memory of all resources.
	arenaChunks = 32
	arenaBytes  = arenaChunks * chunkBytes
	// maxBackingEntries bounds the backing entries of all resources
	// together (QEMU bounds one resource's list at 16384 entries).
	maxBackingEntries = 16384
	// backingChunkEntries is the size of one backing-list subsection.
	backingChunkEntries = 1024
	backingChunks       = maxBackingEntries / backingChunkEntries
	// maxDimension bounds a resource's width and height.
	maxDimension = 16384
	// minScanoutSize is the smallest scanout rectangle (as QEMU).
	minScanoutSize = 16
	// bytesPerPixel: every supported format has 32 bits per pixel.
	bytesPerPixel = 4
	// notifyBudget bounds the pixel bytes one call into the plugin moves;
	// the rest of the queue is served from continueTimer.
	notifyBudget = 256 << 20
	// configSize is struct virtio_gpu_config.
	configSize = 16
)

// continueTimer resumes control-queue processing that stopped at
// notifyBudget.
const continueTimer sdk.Timer = 0

// scanout is the migrated state of one scanout, in QEMU's
// "virtio-gpu-one-scanout" order. The fb.* members were added to QEMU's
// nested struct in 9.0; a nested struct carries no version on the wire, so
// they exist only when scanout_vmstate_version >= 2 (machine types that
// predate them pin the property to 1). In memory they are always kept up to
// date: the host's display code reads them.
type scanout struct {
	ResourceID       uint32 `vmstate:"resource_id"`
	Width            uint32 `vmstate:"width"`
	Height           uint32 `vmstate:"height"`
	X                int32  `vmstate:"x"`
	Y                int32  `vmstate:"y"`
	CursorResourceID uint32 `vmstate:"cursor.resource_id"`
	CursorHotX       uint32 `vmstate:"cursor.hot_x"`
	CursorHotY       uint32 `vmstate:"cursor.hot_y"`
	CursorX          uint32 `vmstate:"cursor.pos.x"`
	CursorY          uint32 `vmstate:"cursor.pos.y"`
	// FBFormat is the virtio format of the scanned-out resource (QEMU
	// stores a pixman format code here); 0 while the scanout is disabled.
	FBFormat  uint32 `vmstate:"fb.format,if=scanout_vmstate_version>=2"`
	FBBytesPP uint32 `vmstate:"fb.bytes_pp,if=scanout_vmstate_version>=2"`
	FBWidth   uint32 `vmstate:"fb.width,if=scanout_vmstate_version>=2"`
	FBHeight  uint32 `vmstate:"fb.height,if=scanout_vmstate_version>=2"`
	FBStride  uint32 `vmstate:"fb.stride,if=scanout_vmstate_version>=2"`
	// FBOffset is the byte offset of the scanout's top-left pixel in the
	// resource image.
	FBOffset uint32 `vmstate:"fb.offset,if=scanout_vmstate_version>=2"`
}

// resource is one entry of the resource table; ID 0 marks a free entry.
type resource struct {
	ID     uint32 `vmstate:"resource_id"`
	Format uint32 `vmstate:"format"`
	Width  uint32 `vmstate:"width"`
	Height uint32 `vmstate:"height"`
	// Pixels is the offset of the image (Width*4 bytes per row, Height
	// rows) in the pixel arena.
	Pixels uint32 `vmstate:"pixels"`
	// BackingStart and BackingCount place the resource's guest page list in
	// the backing pool; BackingCount 0 means no backing is attached.
	BackingStart uint32 `vmstate:"backing_start"`
	BackingCount uint32 `vmstate:"backing_count"`
	// BackingBytes is the sum of the entries' lengths.
	BackingBytes uint64 `vmstate:"backing_bytes"`
}

func (r *resource) stride() uint32     { return r.Width * bytesPerPixel }
func (r *resource) imageBytes() uint32 { return r.Width * r.Height * bytesPerPixel }

// gpuState is the migrated state: section "virtio-gpu".
type gpuState struct {
	Transport virtio.TransportState `vmstate:"transport"`
	Queues    [2]virtio.QueueState  `vmstate:"queues"`
	// EventsRead is virtio_gpu_config.events_read.
	EventsRead uint32 `vmstate:"events_read"`
	// Enable is set by the first SET_SCANOUT (QEMU's parent_obj.enable).
	Enable int32 `vmstate:"enable"`
	// MaxOutputs must match on the destination (QEMU's UINT32_EQUAL).
	MaxOutputs uint32                 `vmstate:"max_outputs"`
	Scanouts   [maxScanouts]scanout   `vmstate:"scanouts"`
	Resources  [maxResources]resource `vmstate:"resources"`
	// BackingUsed is the number of live entries of the backing pool, which
	// is kept compact: entries [0, BackingUsed) belong to resources.
	BackingUsed uint32 `vmstate:"backing_used"`
}

// memEntry is struct virtio_gpu_mem_entry, laid out like sdk.SGEntry (the
// padding is kept zero, as the host's scatter-gather calls require).
type memEntry struct {
	Addr    uint64 `vmstate:"addr"`
	Length  uint32 `vmstate:"length"`
	Padding uint32 `vmstate:"-"`
}

// backingChunk is one subsection of the backing pool.
type backingChunk struct {
	Entries [backingChunkEntries]memEntry `vmstate:"entries"`
}

// pixelChunk is one subsection of the pixel arena.
type pixelChunk struct {
	Data [chunkBytes]byte `vmstate:"data"`
}

var (
	st      gpuState
	backing [backingChunks]backingChunk
	arena   [arenaChunks]pixelChunk

	maxOutputs     = sdk.U32("max_outputs", 1, "number of scanouts (displays), 1 to 16")
	xres           = sdk.U32("xres", 1024, "preferred horizontal resolution reported to the guest")
	yres           = sdk.U32("yres", 768, "preferred vertical resolution reported to the guest")
	scanoutVersion = sdk.U32("scanout_vmstate_version", 2,
		"layout of the migrated scanouts: 1 = without the fb.* fields (QEMU before 9.0), 2 = with them")

	_ = sdk.VMState("virtio-gpu", &st, append([]sdk.Option{sdk.Version(1), sdk.InstanceAny}, chunkSubsections()...)...)
)

// chunkSubsections declares the backing-pool and pixel-arena subsections.
func chunkSubsections() []sdk.Option {
	var opts []sdk.Option
	for i := range backing {
		opts = append(opts, sdk.Subsection(tinyfmt.Sprintf("virtio-gpu/backing/%d", i), &backing[i],
			func() bool { return uint32(i)*backingChunkEntries < st.BackingUsed }))
	}
	for i := range arena {
		opts = append(opts, sdk.Subsection(tinyfmt.Sprintf("virtio-gpu/pixels/%d", i), &arena[i],
			func() bool { return chunkInUse(uint32(i)) }))
	}
	return opts
}

// device holds what is not migrated: the transport, views of the pools,
// derived state and scratch buffers, all set up again by realize and
// rebuilt by post-load.
type device struct {
	t       *virtio.Transport
	outputs uint32
	pixels  []byte        // the arena as one slice
	pool    []sdk.SGEntry // the backing pool as scatter-gather entries
	sg      []sdk.SGEntry // scratch for transfers
	cmd     [cmdBufSize]byte
	resp    [respBufSize]byte
	edid    [edidSize]byte
	config  [configSize]byte
	moved   uint64 // pixel bytes moved in the current call
}

var gpu = &device{sg: make([]sdk.SGEntry, 0, abi.MaxSGEntries)}

func init() {
	sdk.Register("virtio-gpu", "1.0.0", gpu)
}

// Realize checks the properties, adds the register window and sets up the
// transport.
func (d *device) Realize(r *sdk.Realizer) error {
	n := maxOutputs.Get()
	if n < 1 || n > maxScanouts {
		return tinyfmt.Errorf("property max_outputs is %d; it must be 1 to %d", n, maxScanouts)
	}
	for _, p := range []*sdk.IntProp[uint32]{xres, yres} {
		if v := p.Get(); v < minScanoutSize || v > maxEDIDDimension {
			return tinyfmt.Errorf("property %s is %d; it must be %d to %d", p.Name(), v, minScanoutSize, maxEDIDDimension)
		}
	}
	if v := scanoutVersion.Get(); v != 1 && v != 2 {
		return tinyfmt.Errorf("property scanout_vmstate_version is %d; it must be 1 or 2", v)
	}
	d.outputs = n
	d.pixels = arenaSlice()
	d.pool = poolSlice()
	d.edid = buildEDID(xres.Get(), yres.Get())
	if _, err := r.AddMMIO(virtio.RegionSize); err != nil {
		return err
	}
	t, err := virtio.NewTransport(virtio.Config{
		Name: "virtio-gpu", DeviceID: deviceID, Features: virtio.Feature(fEDID), ConfigSize: configSize,
		QueueSizes: []uint16{ctrlQueueSize, cursorQueueSize},
		// An attach-backing command carries up to maxBackingEntries
		// entries of 16 bytes after its header.
		Limits: virtio.Limits{MaxBytes: 1 << 20},
	}, &st.Transport, st.Queues[:], virtioHandler{d})
	if err != nil {
		return err
	}
	d.t = t
	st.MaxOutputs = n
	return nil
}

// Reset is a system reset: the transport resets and calls the handler's
// Reset.
func (d *device) Reset() {
	_ = continueTimer.Cancel()
	d.t.Reset()
}

// MMIORead forwards to the transport.
func (d *device) MMIORead(_ sdk.Region, offset uint64, size int) uint64 {
	return d.t.MMIORead(offset, size)
}

// MMIOWrite forwards to the transport.
func (d *device) MMIOWrite(_ sdk.Region, offset uint64, size int, value uint64) {
	d.t.MMIOWrite(offset, size, value)
}

// ReadConfig implements virtio.Handler: struct virtio_gpu_config.
func (d *device) ReadConfig(offset uint32, p []byte) {
	binary.LittleEndian.PutUint32(d.config[0:], st.EventsRead)
	binary.LittleEndian.PutUint32(d.config[4:], 0) // events_clear reads 0
	binary.LittleEndian.PutUint32(d.config[8:], d.outputs)
	binary.LittleEndian.PutUint32(d.config[12:], 0) // num_capsets
	copy(p, d.config[offset:])
}

var errReadOnlyConfig = errors.New("virtio-gpu config: only events_clear is writable")

// WriteConfig implements virtio.Handler: a write to events_clear clears
// those bits of events_read; every other field is read-only.
func (d *device) WriteConfig(offset uint32, p []byte) error {
	if offset != 4 || len(p) != 4 {
		return errReadOnlyConfig
	}
	st.EventsRead &^= binary.LittleEndian.Uint32(p)
	return nil
}

// virtioHandler is the device as the transport's virtio.Handler; its Reset
// is the device part of a transport reset, while device.Reset is the system
// reset.
type virtioHandler struct{ *device }

// Reset implements virtio.Handler.
func (h virtioHandler) Reset() { h.resetDevice() }

// resetDevice destroys every resource and disables every scanout (the
// transport has reset itself).
func (d *device) resetDevice() {
	st.EventsRead = 0
	st.Enable = 0
	for i := range st.Scanouts {
		st.Scanouts[i] = scanout{}
	}
	for i := range st.Resources {
		st.Resources[i] = resource{}
	}
	st.BackingUsed = 0
}

// PreSave has nothing to drain: commands complete inside the call that
// took them, so nothing is in flight. Chains a budget-limited call left in
// the available ring migrate there (PostLoad resumes them).
func (d *device) PreSave() error { return nil }

// PostLoad checks the loaded state, rebuilds what is derived from it and
// brings the transport's interrupt line to its level.
func (d *device) PostLoad(uint32) error {
	if err := d.checkLoaded(); err != nil {
		return tinyfmt.Errorf("virtio-gpu: loaded state: %w", err)
	}
	if err := d.t.PostLoad(); err != nil {
		return err
	}
	// The source may have left commands in the control queue for its
	// continuation timer, which does not migrate: resume them here.
	if d.t.Live() {
		if err := continueTimer.Arm(sdk.Now()); err != nil {
			return tinyfmt.Errorf("virtio-gpu: arming the continuation timer: %w", err)
		}
	}
	return nil
}

// QueueNotify implements virtio.Handler.
func (d *device) QueueNotify(q *virtio.Queue) {
	switch q.Index() {
	case ctrlQueue:
		d.processControl(q)
	case cursorQueue:
		d.processCursor(q)
	}
}

// TimerFired continues control-queue processing after QueueNotify used its
// budget.
func (d *device) TimerFired(sdk.Timer) {
	if q := d.t.Queue(ctrlQueue); q.Ready() && d.t.Live() {
		d.processControl(q)
	}
}
