package migration

import (
	"fmt"

	"wasmvmm/host/machine"
	"wasmvmm/host/vmstate"
)

// Registry returns the vmstate registry a migration of m uses: the host
// sections (globalstate, one "cpu" per vCPU, kvm-vm, wasmvmm-machine) and
// every plugin device's sections, registered in the order a save and a load
// register them. The host sections hold no state until a save fills them;
// the registry is for schemas (dump-vmstate, compatibility checks).
func Registry(m *machine.Machine) (*vmstate.Registry, error) {
	host, err := newHostState(len(m.VCPUs()))
	if err != nil {
		return nil, fmt.Errorf("host sections: %w", err)
	}
	return buildRegistry(m, host)
}
