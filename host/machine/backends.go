package machine

import (
	"fmt"
	"io"
	"strings"

	"wasmvmm/abi"
	"wasmvmm/host/backend"
	"wasmvmm/host/blockdev"
	"wasmvmm/host/netdev"
	"wasmvmm/host/plugin"
)

// BackendNone as a backend spec leaves the device out of the machine, as
// QEMU's -nodefaults does: machine types place devices whose backends the VM
// configuration must attach.
const BackendNone = "none"

// Absent reports whether a device spec is switched off by a "none" backend.
func (s DeviceSpec) Absent() bool {
	for _, v := range s.Backends {
		if v == BackendNone {
			return true
		}
	}
	return false
}

// BackendOptions are the host-wide choices for opening backends.
type BackendOptions struct {
	// Incoming opens block images inactive: an incoming VM owns no disk
	// until the migration's switchover activates them.
	Incoming bool
	// Owner names this VMM in image lock messages.
	Owner string
}

// OpenBackend opens the backend a spec names:
//
//	char:  null, file:PATH (output appended), unix:PATH (a listening socket)
//	block: file:PATH[,readonly] or a plain PATH (a raw image, locked while owned)
//	net:   tap:IFNAME, unix-listen:PATH, unix-connect:PATH, discard
//
// The CLI handles "stdio" itself (it owns the terminal).
func OpenBackend(device, name, spec string, kind abi.BackendKind, opt BackendOptions) (plugin.Backend, error) {
	label := device + "." + name
	switch kind {
	case abi.BackendChar:
		switch {
		case spec == "null":
			return backend.NewIO(label, nil, io.Discard), nil
		case strings.HasPrefix(spec, "file:"):
			return backend.NewFile(label, strings.TrimPrefix(spec, "file:"))
		case strings.HasPrefix(spec, "unix:"):
			return backend.NewSocket(label, strings.TrimPrefix(spec, "unix:"))
		}
		return nil, fmt.Errorf("device %s backend %q: unknown char backend %q (want null, stdio, file:PATH or unix:PATH)", device, name, spec)
	case abi.BackendBlock:
		path := strings.TrimPrefix(spec, "file:")
		ro := false
		if p, ok := strings.CutSuffix(path, ",readonly"); ok {
			path, ro = p, true
		}
		if path == "" {
			return nil, fmt.Errorf("device %s backend %q: empty image path", device, name)
		}
		img, err := blockdev.Open(path, blockdev.Options{ReadOnly: ro, Inactive: opt.Incoming, Owner: fmt.Sprintf("%s device %s", opt.Owner, device)})
		if err != nil {
			return nil, fmt.Errorf("device %s backend %q: %w", device, name, err)
		}
		return img, nil
	case abi.BackendNet:
		nb, err := netdev.Open(spec)
		if err != nil {
			return nil, fmt.Errorf("device %s backend %q: %w", device, name, err)
		}
		return nb, nil
	}
	return nil, fmt.Errorf("device %s backend %q = %q: backends of kind %d are not configurable yet", device, name, spec, kind)
}
