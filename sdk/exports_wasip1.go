//go:build wasip1

//lint:file-ignore U1000 these are exported to the host by go:wasmexport, which static analysis does not see as entry points

package sdk

// The plugin exports (abi.PluginExports). Each one hands over to the
// registry; abi_test.go checks these declarations against the ABI.

// markerExport is the ABI version marker, abi.MarkerName(abi.Major, abi.Minor).
//
//go:wasmexport wasmvmm_abi_1_0
func markerExport() {}

//go:wasmexport dev_describe
func devDescribe() int32 { return int32(plugin.describe()) }

//go:wasmexport dev_realize
func devRealize() int32 { return int32(plugin.realize()) }

//go:wasmexport dev_reset
func devReset() { plugin.reset() }

//go:wasmexport dev_mmio_read
func devMMIORead(region int32, offset int64, size int32) int64 {
	return int64(plugin.mmioRead(region, uint64(offset), size))
}

//go:wasmexport dev_mmio_write
func devMMIOWrite(region int32, offset int64, size int32, value int64) {
	plugin.mmioWrite(region, uint64(offset), size, uint64(value))
}

//go:wasmexport dev_pio_read
func devPIORead(region int32, offset int32, size int32) int32 {
	return int32(plugin.pioRead(region, uint32(offset), size))
}

//go:wasmexport dev_pio_write
func devPIOWrite(region int32, offset int32, size int32, value int32) {
	plugin.pioWrite(region, uint32(offset), size, uint32(value))
}

//go:wasmexport dev_pre_save
func devPreSave() int32 { return int32(plugin.preSave()) }

//go:wasmexport dev_post_load
func devPostLoad(version int32) int32 { return int32(plugin.postLoad(version)) }

//go:wasmexport dev_subsection_needed
func devSubsectionNeeded(id int32) int32 { return plugin.subsectionNeeded(id) }

//go:wasmexport dev_timer
func devTimer(id int32) { plugin.timer(id) }

//go:wasmexport dev_backend_ready
func devBackendReady(backend int32, events int32) { plugin.backendReady(backend, events) }

//go:wasmexport dev_idle
func devIdle() { plugin.idle() }

//go:wasmexport dev_migration_event
func devMigrationEvent(event int32, mode int32) int32 {
	return int32(plugin.migrationEvent(event, mode))
}
