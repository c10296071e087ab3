package kvm

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultDevice is the usual path of the KVM device.
const DefaultDevice = "/dev/kvm"

// System is an open KVM device (/dev/kvm). It answers capability queries and
// creates VMs. A System is safe for concurrent use.
type System struct {
	fd       int
	mmapSize int
}

// Open opens the KVM device at path (DefaultDevice when path is empty) and
// checks that it speaks API version 12. It does not check capabilities: call
// CheckCapabilities for that.
func Open(path string) (*System, error) {
	if path == "" {
		path = DefaultDevice
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("%s: KVM_GET_API_VERSION: %w", path, err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("%s: KVM API version %d, want %d", path, v, APIVersion)
	}
	size, err := ioctl(fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("%s: KVM_GET_VCPU_MMAP_SIZE: %w", path, err)
	}
	if int(size) < int(unsafe.Sizeof(runHeader{})) {
		s.Close()
		return nil, fmt.Errorf("%s: vCPU mmap size %d is smaller than struct kvm_run", path, size)
	}
	s.mmapSize = int(size)
	return s, nil
}

// Close closes the device. VMs created from it stay valid.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close kvm device: %w", err)
	}
	return nil
}

// VCPUMmapSize returns the size of the per-vCPU shared area (struct kvm_run
// and the pages after it) as reported by KVM_GET_VCPU_MMAP_SIZE.
func (s *System) VCPUMmapSize() int { return s.mmapSize }

// CapabilityValue returns KVM_CHECK_EXTENSION's answer for c on the device:
// 0 when unsupported, otherwise 1 or a capability-specific number.
func (s *System) CapabilityValue(c Capability) (int, error) {
	r, err := ioctl(s.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%s): %w", c, err)
	}
	return int(r), nil
}

// HasCapability reports whether the device supports c. Use it for optional
// capabilities such as CapManualDirtyLogProtect2, CapXSAVE2 or CapSREGS2.
func (s *System) HasCapability(c Capability) bool {
	v, err := s.CapabilityValue(c)
	return err == nil && v > 0
}

// MissingCapabilitiesError is returned by CheckCapabilities; it names every
// required capability the host lacks.
type MissingCapabilitiesError struct {
	Missing []Capability
}

// Error lists the missing capabilities by their KVM_CAP_ names.
func (e *MissingCapabilitiesError) Error() string {
	names := make([]string, len(e.Missing))
	for i, c := range e.Missing {
		names[i] = "KVM_CAP_" + c.String()
	}
	return "kvm: missing required capabilities: " + strings.Join(names, ", ")
}

// checkCapabilities returns a *MissingCapabilitiesError naming every
// capability of required that has reports false, or nil.
func checkCapabilities(required []Capability, has func(Capability) bool) error {
	var missing []Capability
	for _, c := range required {
		if !has(c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return &MissingCapabilitiesError{Missing: missing}
	}
	return nil
}

// CheckCapabilities returns nil when the host supports every capability of
// RequiredCapabilities, or a *MissingCapabilitiesError naming each missing one.
func (s *System) CheckCapabilities() error {
	return checkCapabilities(RequiredCapabilities(), s.HasCapability)
}

// SupportedCPUID returns the CPUID leaves KVM can expose to a guest
// (KVM_GET_SUPPORTED_CPUID). The slice is the caller's to adjust before
// passing it to (*VCPU).SetCPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 1<<14; n *= 2 {
		entries, err := getCPUIDList(s.fd, ioctlGetSupportedCPUID, n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return entries, nil
	}
	return nil, errors.New("KVM_GET_SUPPORTED_CPUID: more than 16384 entries")
}

// getCPUIDList calls a struct kvm_cpuid2 ioctl with room for max entries.
func getCPUIDList(fd int, req uintptr, max int) ([]CPUIDEntry, error) {
	entrySize := int(unsafe.Sizeof(CPUIDEntry{}))
	buf := make([]uint64, (8+max*entrySize)/8)
	hdr := (*listHeader)(unsafe.Pointer(&buf[0]))
	hdr.N = uint32(max)
	if _, err := ioctlPtr(fd, req, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	n := int(hdr.N)
	if n > max {
		return nil, fmt.Errorf("kernel reported %d entries for a buffer of %d", n, max)
	}
	src := unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[1])), n)
	return append([]CPUIDEntry(nil), src...), nil
}

// MSRIndexList returns the MSRs KVM saves and restores for a guest
// (KVM_GET_MSR_INDEX_LIST): the list (*VCPU).SaveState reads.
func (s *System) MSRIndexList() ([]uint32, error) {
	var probe [2]uint32 // nmsrs = 0: the kernel answers E2BIG and the count
	_, err := ioctlPtr(s.fd, ioctlGetMSRIndexList, unsafe.Pointer(&probe[0]))
	if err != nil && !errors.Is(err, unix.E2BIG) {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	if err == nil {
		return nil, nil
	}
	n := int(probe[0])
	buf := make([]uint32, 1+n)
	buf[0] = uint32(n)
	if _, err := ioctlPtr(s.fd, ioctlGetMSRIndexList, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST (%d entries): %w", n, err)
	}
	if int(buf[0]) > n {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: kernel reported %d entries for %d", buf[0], n)
	}
	return append([]uint32(nil), buf[1:1+buf[0]]...), nil
}
