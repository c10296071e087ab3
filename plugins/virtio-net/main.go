// Command virtio-net is release 1 of the wasmvmm virtio-net plugin; the
// device is in internal/vnet, shared with release 2 (v2/).
package main

import "wasmvmm/plugins/virtio-net/internal/vnet"

func init() { vnet.Register(vnet.Release1) }

func main() {}
