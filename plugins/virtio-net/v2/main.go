// Command virtio-net (plugin virtio-net@v2) is release 2 of the wasmvmm
// virtio-net plugin: release 1 plus device statistics migrated in the
// subsection "virtio-net/stats" (see internal/vnet). Release 1 stays
// buildable beside it so that source and destination can run either.
package main

import "wasmvmm/plugins/virtio-net/internal/vnet"

func init() { vnet.Register(vnet.Release2) }

func main() {}
