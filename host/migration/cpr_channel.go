package migration

import (
	"encoding/json"
	"fmt"
)

// channelJSON is QEMU's MigrationChannel as -incoming takes it in JSON.
type channelJSON struct {
	ChannelType string `json:"channel-type"`
	Addr        struct {
		Transport string `json:"transport"`
		Type      string `json:"type"`
		Path      string `json:"path"`
		Host      string `json:"host"`
		Port      string `json:"port"`
		Str       string `json:"str"`
		Filename  string `json:"filename"`
		Offset    int64  `json:"offset"`
	} `json:"addr"`
}

// ParseChannelJSON parses QEMU's JSON channel form, e.g.
// {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/run/cpr.sock"}}.
func ParseChannelJSON(b []byte) (Channel, error) {
	var c channelJSON
	if err := json.Unmarshal(b, &c); err != nil {
		return Channel{}, fmt.Errorf("migration channel %s: %w", b, err)
	}
	ch := Channel{Type: c.ChannelType}
	if ch.Type != "main" && ch.Type != "cpr" {
		return ch, fmt.Errorf("migration channel: channel-type %q (want main or cpr)", c.ChannelType)
	}
	a := c.Addr
	switch a.Transport {
	case "socket":
		switch a.Type {
		case "unix":
			ch.Transport, ch.Path = "unix", a.Path
		case "inet":
			ch.Transport, ch.Host, ch.Port = "tcp", a.Host, a.Port
		case "fd":
			ch.Transport, ch.FD = "fd", a.Str
		default:
			return ch, fmt.Errorf("migration channel: socket type %q (want unix, inet or fd)", a.Type)
		}
	case "file":
		ch.Transport, ch.Path, ch.Offset = "file", a.Filename, a.Offset
	default:
		return ch, fmt.Errorf("migration channel: transport %q (want socket or file)", a.Transport)
	}
	if (ch.Transport == "unix" || ch.Transport == "file") && ch.Path == "" {
		return ch, fmt.Errorf("migration channel: no path")
	}
	return ch, nil
}
