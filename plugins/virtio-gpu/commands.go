package main

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"wasmvmm/abi"
	"wasmvmm/sdk"
	"wasmvmm/sdk/virtio"
)

// Command and response types (enum virtio_gpu_ctrl_type).
const (
	cmdGetDisplayInfo        = 0x0100
	cmdResourceCreate2D      = 0x0101
	cmdResourceUnref         = 0x0102
	cmdSetScanout            = 0x0103
	cmdResourceFlush         = 0x0104
	cmdTransferToHost2D      = 0x0105
	cmdResourceAttachBacking = 0x0106
	cmdResourceDetachBacking = 0x0107
	cmdGetEDID               = 0x010a

	cmdCtxCreate         = 0x0200
	cmdCtxDestroy        = 0x0201
	cmdCtxAttachResource = 0x0202
	cmdCtxDetachResource = 0x0203
	cmdTransferToHost3D  = 0x0205
	cmdTransferFromHost  = 0x0206
	cmdSubmit3D          = 0x0207

	cmdUpdateCursor = 0x0300
	cmdMoveCursor   = 0x0301

	respOKNoData      = 0x1100
	respOKDisplayInfo = 0x1101
	respOKEDID        = 0x1104

	respErrUnspec            = 0x1200
	respErrOutOfMemory       = 0x1201
	respErrInvalidScanoutID  = 0x1202
	respErrInvalidResourceID = 0x1203
	respErrInvalidContextID  = 0x1204
	respErrInvalidParameter  = 0x1205
)

// flagFence is VIRTIO_GPU_FLAG_FENCE.
const flagFence = 1

// Formats (enum virtio_gpu_formats): the name lists the bytes of a pixel in
// memory order.
const (
	formatB8G8R8A8 = 1
	formatB8G8R8X8 = 2
	formatA8R8G8B8 = 3
	formatX8R8G8B8 = 4
	formatR8G8B8A8 = 67
	formatX8B8G8R8 = 68
	formatA8B8G8R8 = 121
	formatR8G8B8X8 = 134
)

// Sizes of the structures (virtio 1.2 §5.7.6).
const (
	hdrSize          = 24
	rectSize         = 16
	displayOneSize   = rectSize + 8
	displayInfoSize  = hdrSize + maxScanouts*displayOneSize
	edidRespSize     = hdrSize + 8 + 1024
	memEntrySize     = 16
	createSize       = hdrSize + 16
	unrefSize        = hdrSize + 8
	setScanoutSize   = hdrSize + rectSize + 8
	flushSize        = hdrSize + rectSize + 8
	transferSize     = hdrSize + rectSize + 16
	attachSize       = hdrSize + 8
	detachSize       = hdrSize + 8
	getEDIDSize      = hdrSize + 8
	updateCursorSize = hdrSize + 16 + 16
	cmdBufSize       = 64
	respBufSize      = edidRespSize
)

var le = binary.LittleEndian

// processControl runs available control commands to completion, in order,
// then interrupts the driver unless it suppressed that. One call moves at
// most notifyBudget pixel bytes; the rest continues from continueTimer, so a
// driver that keeps the queue full cannot hold a call past the host's
// deadline.
func (d *device) processControl(q *virtio.Queue) {
	d.moved = 0
	for n := 0; n < 4*ctrlQueueSize; n++ {
		if d.moved >= notifyBudget {
			if err := continueTimer.Arm(sdk.Now()); err != nil {
				d.t.Logf(abi.LogError, "timer", "cannot arm the continuation timer: %v", err)
			}
			break
		}
		c, err := q.Pop()
		if err != nil || c == nil {
			break
		}
		if err := q.Push(c.Head, d.command(c)); err != nil {
			break
		}
	}
	q.Signal()
}

// command runs one control command and writes its response; it returns the
// bytes written into the chain's writable buffers.
func (d *device) command(c *virtio.Chain) uint32 {
	n := min(c.ReadableLen, cmdBufSize)
	cmd := d.cmd[:n]
	clear(d.cmd[:])
	if n > 0 {
		sg, _ := virtio.SGRange(d.sg, c.Readable, 0, n, c.ReadableLen)
		if _, err := sdk.GuestReadSG(sg, cmd); err != nil {
			d.t.Logf(abi.LogWarn, "cmd", "command at head %d not readable: %v", c.Head, err)
			return d.respond(c, nil, respErrUnspec, hdrSize)
		}
	}
	if n < hdrSize {
		d.t.Logf(abi.LogWarn, "cmd", "command at head %d has %d bytes, less than a header", c.Head, c.ReadableLen)
		return d.respond(c, nil, respErrUnspec, hdrSize)
	}
	typ := le.Uint32(cmd)
	if size := commandSize(typ); size != 0 && c.ReadableLen < size {
		d.t.Logf(abi.LogWarn, "cmd", "command %#x at head %d has %d bytes, want %d", typ, c.Head, c.ReadableLen, size)
		return d.respond(c, cmd, respErrUnspec, hdrSize)
	}
	clear(d.resp[:])
	resp, size := d.execute(c, typ, cmd)
	return d.respond(c, cmd, resp, size)
}

// commandSize returns the size of a known command's structure, 0 for
// commands this device does not implement.
func commandSize(typ uint32) uint64 {
	switch typ {
	case cmdGetDisplayInfo:
		return hdrSize
	case cmdResourceCreate2D:
		return createSize
	case cmdResourceUnref:
		return unrefSize
	case cmdSetScanout:
		return setScanoutSize
	case cmdResourceFlush:
		return flushSize
	case cmdTransferToHost2D:
		return transferSize
	case cmdResourceAttachBacking:
		return attachSize
	case cmdResourceDetachBacking:
		return detachSize
	case cmdGetEDID:
		return getEDIDSize
	}
	return 0
}

// respond writes the response header (and the payload execute put in
// d.resp) into the chain's writable buffers. A fenced command's response
// carries its fence: commands complete in order, so the fence is signalled
// when its command is.
func (d *device) respond(c *virtio.Chain, cmd []byte, typ uint32, size int) uint32 {
	r := d.resp[:size]
	le.PutUint32(r[0:], typ)
	le.PutUint32(r[4:], 0)
	le.PutUint64(r[8:], 0)
	le.PutUint32(r[16:], 0)
	le.PutUint32(r[20:], 0)
	if len(cmd) >= hdrSize && le.Uint32(cmd[4:])&flagFence != 0 {
		le.PutUint32(r[4:], flagFence)
		le.PutUint64(r[8:], le.Uint64(cmd[8:]))
		le.PutUint32(r[16:], le.Uint32(cmd[16:]))
	}
	if c.WritableLen < uint64(size) {
		d.t.Logf(abi.LogWarn, "resp", "response of %d bytes to the command at head %d: only %d bytes writable", size, c.Head, c.WritableLen)
	}
	sg, _ := virtio.SGSlice(d.sg[:0], c.Writable, 0, uint64(size))
	if len(sg) == 0 {
		return 0
	}
	n, err := sdk.GuestWriteSG(sg, r)
	if err != nil {
		d.t.Logf(abi.LogWarn, "resp", "response to the command at head %d not writable: %v", c.Head, err)
		return 0
	}
	return uint32(n)
}

// execute runs a command whose fixed part is in cmd and returns the
// response type and size; payloads go to d.resp after the header.
func (d *device) execute(c *virtio.Chain, typ uint32, cmd []byte) (uint32, int) {
	switch typ {
	case cmdGetDisplayInfo:
		return d.getDisplayInfo()
	case cmdGetEDID:
		return d.getEDID(cmd)
	case cmdResourceCreate2D:
		return d.create2D(cmd), hdrSize
	case cmdResourceUnref:
		return d.unref(cmd), hdrSize
	case cmdSetScanout:
		return d.setScanout(cmd), hdrSize
	case cmdResourceFlush:
		return d.flush(cmd), hdrSize
	case cmdTransferToHost2D:
		return d.transfer(cmd), hdrSize
	case cmdResourceAttachBacking:
		return d.attachBacking(c, cmd), hdrSize
	case cmdResourceDetachBacking:
		return d.detachBacking(cmd), hdrSize
	case cmdCtxDestroy, cmdCtxAttachResource, cmdCtxDetachResource, cmdTransferToHost3D, cmdTransferFromHost, cmdSubmit3D:
		// 3D is not offered (no VIRTIO_GPU_F_VIRGL): no context exists.
		d.t.Logf(abi.LogDebug, "3d", "3D command %#x without 3D support", typ)
		return respErrInvalidContextID, hdrSize
	}
	d.t.Logf(abi.LogDebug, "unsupported", "command %#x unsupported", typ)
	return respErrUnspec, hdrSize
}

func (d *device) getDisplayInfo() (uint32, int) {
	for i := uint32(0); i < d.outputs; i++ {
		p := d.resp[hdrSize+i*displayOneSize:]
		le.PutUint32(p[0:], 0)
		le.PutUint32(p[4:], 0)
		le.PutUint32(p[8:], xres.Get())
		le.PutUint32(p[12:], yres.Get())
		le.PutUint32(p[16:], 1) // enabled
		le.PutUint32(p[20:], 0) // flags
	}
	return respOKDisplayInfo, displayInfoSize
}

func (d *device) getEDID(cmd []byte) (uint32, int) {
	if id := le.Uint32(cmd[24:]); id >= d.outputs {
		d.t.Logf(abi.LogWarn, "edid", "GET_EDID for scanout %d; the device has %d", id, d.outputs)
		return respErrInvalidParameter, hdrSize
	}
	le.PutUint32(d.resp[hdrSize:], edidSize)
	copy(d.resp[hdrSize+8:], d.edid[:])
	return respOKEDID, edidRespSize
}

func (d *device) create2D(cmd []byte) uint32 {
	id, format, w, h := le.Uint32(cmd[24:]), le.Uint32(cmd[28:]), le.Uint32(cmd[32:]), le.Uint32(cmd[36:])
	if id == 0 || findResource(id) != nil {
		d.t.Logf(abi.LogWarn, "create", "RESOURCE_CREATE_2D: resource id %d is zero or taken", id)
		return respErrInvalidResourceID
	}
	if !validFormat(format) || w == 0 || h == 0 {
		d.t.Logf(abi.LogWarn, "create", "RESOURCE_CREATE_2D %d: format %d, %dx%d not supported", id, format, w, h)
		return respErrInvalidParameter
	}
	size := uint64(w) * uint64(h) * bytesPerPixel
	if w > maxDimension || h > maxDimension || size > arenaBytes {
		d.t.Logf(abi.LogWarn, "create", "RESOURCE_CREATE_2D %d: %dx%d exceeds the %d-byte pixel memory", id, w, h, arenaBytes)
		return respErrOutOfMemory
	}
	slot := freeSlot()
	if slot == nil {
		d.t.Logf(abi.LogWarn, "create", "RESOURCE_CREATE_2D %d: all %d resources in use", id, maxResources)
		return respErrOutOfMemory
	}
	off, ok := d.allocPixels(uint32(size))
	if !ok {
		d.t.Logf(abi.LogWarn, "create", "RESOURCE_CREATE_2D %d: %d bytes of pixel memory not free", id, size)
		return respErrOutOfMemory
	}
	clear(d.pixels[off : off+uint32(size)])
	*slot = resource{ID: id, Format: format, Width: w, Height: h, Pixels: off}
	return respOKNoData
}

func (d *device) unref(cmd []byte) uint32 {
	r := findResource(le.Uint32(cmd[24:]))
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "RESOURCE_UNREF of unknown resource %d", le.Uint32(cmd[24:]))
		return respErrInvalidResourceID
	}
	d.destroy(r)
	return respOKNoData
}

func (d *device) setScanout(cmd []byte) uint32 {
	x, y, w, h := le.Uint32(cmd[24:]), le.Uint32(cmd[28:]), le.Uint32(cmd[32:]), le.Uint32(cmd[36:])
	id, resID := le.Uint32(cmd[40:]), le.Uint32(cmd[44:])
	if id >= d.outputs {
		d.t.Logf(abi.LogWarn, "scanout", "SET_SCANOUT for scanout %d; the device has %d", id, d.outputs)
		return respErrInvalidScanoutID
	}
	s := &st.Scanouts[id]
	if resID == 0 {
		disableScanout(s)
		return respOKNoData
	}
	r := findResource(resID)
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "SET_SCANOUT of unknown resource %d", resID)
		return respErrInvalidResourceID
	}
	if r.BackingCount == 0 {
		d.t.Logf(abi.LogWarn, "scanout", "SET_SCANOUT of resource %d, which has no backing", resID)
		return respErrUnspec
	}
	if !scanoutRectOK(x, y, w, h, r) {
		d.t.Logf(abi.LogWarn, "scanout", "SET_SCANOUT %d: rectangle (%d,%d)+%dx%d does not fit resource %d (%dx%d) or is below %dx%d",
			id, x, y, w, h, resID, r.Width, r.Height, minScanoutSize, minScanoutSize)
		return respErrInvalidParameter
	}
	st.Enable = 1
	s.ResourceID, s.X, s.Y, s.Width, s.Height = resID, int32(x), int32(y), w, h
	setFramebuffer(s, r)
	return respOKNoData
}

// rectInside reports whether the rectangle lies inside a w x h resource.
func rectInside(x, y, rw, rh, w, h uint32) bool {
	return x <= w && y <= h && rw <= w-x && rh <= h-y
}

func (d *device) flush(cmd []byte) uint32 {
	x, y, w, h, resID := le.Uint32(cmd[24:]), le.Uint32(cmd[28:]), le.Uint32(cmd[32:]), le.Uint32(cmd[36:]), le.Uint32(cmd[40:])
	r := findResource(resID)
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "RESOURCE_FLUSH of unknown resource %d", resID)
		return respErrInvalidResourceID
	}
	if !rectInside(x, y, w, h, r.Width, r.Height) {
		d.t.Logf(abi.LogWarn, "flush", "RESOURCE_FLUSH %d: rectangle (%d,%d)+%dx%d outside %dx%d", resID, x, y, w, h, r.Width, r.Height)
		return respErrInvalidParameter
	}
	// The host renders scanouts on demand from the resource's pixels,
	// which TRANSFER_TO_HOST_2D already updated: nothing to push.
	return respOKNoData
}

func (d *device) transfer(cmd []byte) uint32 {
	x, y, w, h := le.Uint32(cmd[24:]), le.Uint32(cmd[28:]), le.Uint32(cmd[32:]), le.Uint32(cmd[36:])
	offset, resID := le.Uint64(cmd[40:]), le.Uint32(cmd[48:])
	r := findResource(resID)
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "TRANSFER_TO_HOST_2D to unknown resource %d", resID)
		return respErrInvalidResourceID
	}
	if r.BackingCount == 0 {
		d.t.Logf(abi.LogWarn, "transfer", "TRANSFER_TO_HOST_2D to resource %d, which has no backing", resID)
		return respErrUnspec
	}
	if !rectInside(x, y, w, h, r.Width, r.Height) {
		d.t.Logf(abi.LogWarn, "transfer", "TRANSFER_TO_HOST_2D %d: rectangle (%d,%d)+%dx%d outside %dx%d", resID, x, y, w, h, r.Width, r.Height)
		return respErrInvalidParameter
	}
	if w == 0 || h == 0 {
		return respOKNoData
	}
	stride := uint64(r.stride())
	row := uint64(w) * bytesPerPixel
	// The source rows are stride apart from offset in the backing.
	end := offset + stride*uint64(h-1) + row
	if offset > r.BackingBytes || end > r.BackingBytes || end < offset {
		d.t.Logf(abi.LogWarn, "transfer", "TRANSFER_TO_HOST_2D %d: backing bytes [%d, %d) past its %d bytes", resID, offset, end, r.BackingBytes)
		return respErrInvalidParameter
	}
	img := d.pixels[r.Pixels : r.Pixels+r.imageBytes()]
	br := backingReader{entries: d.backingOf(r)}
	if x == 0 && w == r.Width {
		// Whole rows: one contiguous range.
		dst := img[uint64(y)*stride : uint64(y)*stride+stride*uint64(h)]
		if err := br.read(d, offset, dst); err != nil {
			d.t.Logf(abi.LogWarn, "transfer", "TRANSFER_TO_HOST_2D %d: %v", resID, err)
			return respErrUnspec
		}
	} else {
		for i := uint64(0); i < uint64(h); i++ {
			at := (uint64(y)+i)*stride + uint64(x)*bytesPerPixel
			if err := br.read(d, offset+stride*i, img[at:at+row]); err != nil {
				d.t.Logf(abi.LogWarn, "transfer", "TRANSFER_TO_HOST_2D %d: %v", resID, err)
				return respErrUnspec
			}
		}
	}
	d.moved += row * uint64(h)
	return respOKNoData
}

// backingReader copies ranges of a resource's backing into plugin memory.
// Successive reads at increasing offsets continue from where the last one
// started, so a transfer of many rows walks the page list once.
type backingReader struct {
	entries []sdk.SGEntry
	idx     int    // entry holding the last read's start
	base    uint64 // backing offset of entries[idx]
}

// errShortBacking is a range past the end of a resource's backing.
var errShortBacking = errors.New("range past the end of the backing")

// read fills dst from the backing at off.
func (b *backingReader) read(d *device, off uint64, dst []byte) error {
	if off < b.base {
		b.idx, b.base = 0, 0
	}
	for b.idx < len(b.entries) && b.base+uint64(b.entries[b.idx].Len) <= off {
		b.base += uint64(b.entries[b.idx].Len)
		b.idx++
	}
	i, skip := b.idx, off-b.base
	for len(dst) > 0 {
		sg := d.sg[:0]
		var n uint64
		for i < len(b.entries) && len(sg) < abi.MaxSGEntries && n < uint64(len(dst)) {
			e := b.entries[i]
			i++
			e.GPA += skip
			e.Len -= uint32(skip)
			skip = 0
			if rest := uint64(len(dst)) - n; uint64(e.Len) > rest {
				e.Len = uint32(rest)
			}
			if e.Len == 0 {
				continue
			}
			sg = append(sg, e)
			n += uint64(e.Len)
		}
		if n == 0 {
			return errShortBacking
		}
		if _, err := sdk.GuestReadSG(sg, dst[:n]); err != nil {
			return err
		}
		dst = dst[n:]
	}
	return nil
}

func (d *device) attachBacking(c *virtio.Chain, cmd []byte) uint32 {
	resID, count := le.Uint32(cmd[24:]), le.Uint32(cmd[28:])
	r := findResource(resID)
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "RESOURCE_ATTACH_BACKING to unknown resource %d", resID)
		return respErrInvalidResourceID
	}
	if r.BackingCount != 0 {
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING to resource %d, which has backing", resID)
		return respErrUnspec
	}
	if count == 0 || count > maxBackingEntries {
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING %d with %d entries (1 to %d)", resID, count, maxBackingEntries)
		return respErrUnspec
	}
	if count > maxBackingEntries-st.BackingUsed {
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING %d: %d entries, %d free in the backing pool", resID, count, maxBackingEntries-st.BackingUsed)
		return respErrOutOfMemory
	}
	n := uint64(count) * memEntrySize
	if c.ReadableLen < attachSize+n {
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING %d: %d entries announced, %d bytes sent", resID, count, c.ReadableLen-attachSize)
		return respErrUnspec
	}
	entries := d.pool[st.BackingUsed : st.BackingUsed+count]
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&entries[0])), n)
	sg, _ := virtio.SGRange(d.sg, c.Readable, attachSize, n, c.ReadableLen)
	if got, err := sdk.GuestReadSG(sg, raw); err != nil || uint64(got) != n {
		clear(entries)
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING %d: entries not readable: %v", resID, err)
		return respErrUnspec
	}
	var total uint64
	for i := range entries {
		entries[i].Flags = 0
		total += uint64(entries[i].Len)
	}
	// Every entry must lie in guest RAM: the host checks a whole list
	// before copying anything, so an empty destination checks without
	// copying.
	for i := 0; i < len(entries); i += abi.MaxSGEntries {
		part := entries[i:min(i+abi.MaxSGEntries, len(entries))]
		if _, err := sdk.GuestReadSG(part, nil); err != nil {
			clear(entries)
			d.t.Logf(abi.LogWarn, "backing", "RESOURCE_ATTACH_BACKING %d: an entry lies outside guest RAM: %v", resID, err)
			return respErrUnspec
		}
	}
	if total > 1<<40 {
		clear(entries)
		return respErrUnspec
	}
	d.addBacking(r, entries)
	return respOKNoData
}

func (d *device) detachBacking(cmd []byte) uint32 {
	resID := le.Uint32(cmd[24:])
	r := findResource(resID)
	if r == nil {
		d.t.Logf(abi.LogWarn, "resid", "RESOURCE_DETACH_BACKING of unknown resource %d", resID)
		return respErrInvalidResourceID
	}
	if r.BackingCount == 0 {
		d.t.Logf(abi.LogWarn, "backing", "RESOURCE_DETACH_BACKING of resource %d, which has none", resID)
		return respErrUnspec
	}
	d.dropBacking(r)
	return respOKNoData
}

// processCursor runs cursor commands: they have no response (used length
// 0), and errors are only logged, as the cursor queue has no way to report
// them.
func (d *device) processCursor(q *virtio.Queue) {
	var buf [updateCursorSize]byte
	for n := 0; n < 4*cursorQueueSize; n++ {
		c, err := q.Pop()
		if err != nil || c == nil {
			break
		}
		if c.ReadableLen < updateCursorSize {
			d.t.Logf(abi.LogWarn, "cursor", "cursor command at head %d has %d bytes, want %d", c.Head, c.ReadableLen, updateCursorSize)
		} else {
			sg, _ := virtio.SGRange(d.sg, c.Readable, 0, updateCursorSize, c.ReadableLen)
			if _, err := sdk.GuestReadSG(sg, buf[:]); err != nil {
				d.t.Logf(abi.LogWarn, "cursor", "cursor command at head %d not readable: %v", c.Head, err)
			} else {
				d.cursor(buf[:])
			}
		}
		if err := q.Push(c.Head, 0); err != nil {
			break
		}
	}
	q.Signal()
}

// cursor applies UPDATE_CURSOR or MOVE_CURSOR (struct
// virtio_gpu_update_cursor).
func (d *device) cursor(b []byte) {
	typ, id := le.Uint32(b[0:]), le.Uint32(b[24:])
	x, y := le.Uint32(b[28:]), le.Uint32(b[32:])
	if id >= d.outputs {
		d.t.Logf(abi.LogWarn, "cursor", "cursor command for scanout %d; the device has %d", id, d.outputs)
		return
	}
	s := &st.Scanouts[id]
	switch typ {
	case cmdMoveCursor:
		s.CursorX, s.CursorY = x, y
	case cmdUpdateCursor:
		s.CursorResourceID = le.Uint32(b[40:])
		s.CursorHotX, s.CursorHotY = le.Uint32(b[44:]), le.Uint32(b[48:])
		s.CursorX, s.CursorY = x, y
	default:
		d.t.Logf(abi.LogWarn, "cursor", "command %#x on the cursor queue", typ)
	}
}
