//go:build !wasip1

package main

import "wasmvmm/plugins/virtio-net/internal/vnet"

// The device's constants under the names the tests use.
const (
	cfgMAC        = vnet.CfgMAC
	cfgMTU        = vnet.CfgMTU
	cfgStatus     = vnet.CfgStatus
	deviceID      = vnet.DeviceID
	fCsum         = vnet.FCsum
	fGuestCsum    = vnet.FGuestCsum
	fGuestTSO4    = vnet.FGuestTSO4
	fGuestTSO6    = vnet.FGuestTSO6
	fGuestUSO4    = vnet.FGuestUSO4
	fGuestUSO6    = vnet.FGuestUSO6
	fHostTSO4     = vnet.FHostTSO4
	fHostTSO6     = vnet.FHostTSO6
	fHostUSO      = vnet.FHostUSO
	fMAC          = vnet.FMAC
	fMTU          = vnet.FMTU
	fMrgRxbuf     = vnet.FMrgRxbuf
	fStatus       = vnet.FStatus
	gsoUDPL4      = vnet.GsoUDPL4
	hdrFNeedsCsum = vnet.HdrFNeedsCsum
	hdrLen        = vnet.HdrLen
	queueSize     = vnet.QueueSize
	rxQ           = vnet.RxQ
	statusLinkUp  = vnet.StatusLinkUp
	txQ           = vnet.TxQ
)
