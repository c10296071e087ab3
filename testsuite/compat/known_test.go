package compattest

import (
	"wasmvmm/host/compat"
	"wasmvmm/host/machine/config"
)

// expectedBreak is the known break (host/compat.KnownBreaks) a load from
// release from into release to runs into on a machine with devs, or "".
func expectedBreak(devs []config.MachineDevice, from, to compat.PluginSet) string {
	for _, k := range compat.KnownBreaks() {
		for _, d := range devs {
			if config.PluginType(d.Plugin) == k.DeviceType && from.Resolve(d.Plugin) == k.From && to.Resolve(d.Plugin) == k.To {
				return k.Reason
			}
		}
	}
	return ""
}
