package virtio

// TransportState is the migrated state of a virtio-mmio transport. A device
// makes it a field of its package-level vmstate struct (the SDK's reflection
// builder turns it into a nested struct) and passes its address to
// NewTransport:
//
//	var st struct {
//		Transport virtio.TransportState  `vmstate:"transport"`
//		Queues    [1]virtio.QueueState   `vmstate:"queues"`
//		...device fields...
//	}
//
// A nested struct carries no version on the wire: members added later must
// be gated on a property (if=), never on a version.
type TransportState struct {
	// DeviceFeatures is what the device offered when the driver negotiated;
	// post-load checks that the destination offers at least the
	// negotiated features.
	DeviceFeatures    uint64 `vmstate:"device_features"`
	DriverFeatures    uint64 `vmstate:"driver_features"`
	DeviceFeaturesSel uint32 `vmstate:"device_features_sel"`
	DriverFeaturesSel uint32 `vmstate:"driver_features_sel"`
	QueueSel          uint32 `vmstate:"queue_sel"`
	ConfigGeneration  uint32 `vmstate:"config_generation"`
	Status            uint8  `vmstate:"status"`
	ISR               uint8  `vmstate:"isr"`
}

// QueueState is the migrated state of one split virtqueue: its size and
// ring addresses as the driver set them, whether it is enabled, and the
// device's positions in the rings.
type QueueState struct {
	DescAddr   uint64 `vmstate:"desc"`
	DriverAddr uint64 `vmstate:"driver"`
	DeviceAddr uint64 `vmstate:"device"`
	Num        uint16 `vmstate:"num"`
	// LastAvailIdx is the next available-ring position the device reads.
	LastAvailIdx uint16 `vmstate:"last_avail_idx"`
	// UsedIdx is the used ring's idx as the device last wrote it.
	UsedIdx uint16 `vmstate:"used_idx"`
	// SignalledUsed is UsedIdx at the last interrupt decision (EVENT_IDX).
	SignalledUsed      uint16 `vmstate:"signalled_used"`
	SignalledUsedValid bool   `vmstate:"signalled_used_valid"`
	Ready              bool   `vmstate:"ready"`
}
