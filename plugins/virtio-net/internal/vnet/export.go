package vnet

// Exported for the plugin releases' host-side tests.
const (
	CfgMAC        = cfgMAC
	CfgMTU        = cfgMTU
	CfgStatus     = cfgStatus
	DeviceID      = deviceID
	FCsum         = fCsum
	FGuestCsum    = fGuestCsum
	FGuestTSO4    = fGuestTSO4
	FGuestTSO6    = fGuestTSO6
	FGuestUSO4    = fGuestUSO4
	FGuestUSO6    = fGuestUSO6
	FHostTSO4     = fHostTSO4
	FHostTSO6     = fHostTSO6
	FHostUSO      = fHostUSO
	FMAC          = fMAC
	FMTU          = fMTU
	FMrgRxbuf     = fMrgRxbuf
	FStatus       = fStatus
	GsoUDPL4      = gsoUDPL4
	HdrFNeedsCsum = hdrFNeedsCsum
	HdrLen        = hdrLen
	QueueSize     = queueSize
	RxQ           = rxQ
	StatusLinkUp  = statusLinkUp
	TxQ           = txQ
)
