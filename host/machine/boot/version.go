package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

const offKernelVersion = 0x20e

// KernelVersion returns the version string a bzImage carries (the string
// kernel_version points to, e.g. "6.1.0-18-cloud-amd64 (debian-kernel@...)
// #1 SMP ..."). It returns "" when the header has no version pointer.
func KernelVersion(kernel io.ReaderAt) (string, error) {
	h, err := ParseSetupHeader(kernel)
	if err != nil {
		return "", err
	}
	ptr := binary.LittleEndian.Uint16(h.Raw[offKernelVersion-hdrStart:])
	if ptr == 0 {
		return "", nil
	}
	buf := make([]byte, 256)
	off := uint64(ptr) + 0x200
	n, err := kernel.ReadAt(buf, int64(off))
	if n == 0 {
		if err == nil {
			err = errShortFile
		}
		return "", fmt.Errorf("bzImage: kernel version string at %#x: %w", off, err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf), nil
}
