package monitor

import (
	"context"
	"fmt"

	"wasmvmm/host/migration"
	"wasmvmm/host/qmp"
)

// ChannelAddr is QEMU's MigrationAddress: {"transport": "socket", "type":
// "unix", "path": ...}, {"transport": "socket", "type": "inet", "host": ...,
// "port": ...}, {"transport": "socket", "type": "fd", "str": ...},
// {"transport": "file", "filename": ..., "offset": N}.
type ChannelAddr struct {
	Transport string  `json:"transport"`
	Type      *string `json:"type,omitempty"`
	Path      *string `json:"path,omitempty"`
	Host      *string `json:"host,omitempty"`
	Port      *string `json:"port,omitempty"`
	Str       *string `json:"str,omitempty"`
	Filename  *string `json:"filename,omitempty"`
	Offset    *int64  `json:"offset,omitempty"`
}

// ChannelArg is one entry of migrate's "channels".
type ChannelArg struct {
	ChannelType string      `json:"channel-type"`
	Addr        ChannelAddr `json:"addr"`
}

// MigrateArgs are migrate's and migrate-incoming's arguments.
type MigrateArgs struct {
	URI      *string      `json:"uri,omitempty"`
	Channels []ChannelArg `json:"channels,omitempty"`
	Detach   *bool        `json:"detach,omitempty"`
	Resume   *bool        `json:"resume,omitempty"`
}

// Channels resolves the URI or the channel list.
func (a MigrateArgs) channels() ([]migration.Channel, error) {
	if a.URI != nil && len(a.Channels) > 0 {
		return nil, fmt.Errorf("need either 'uri' or 'channels' argument")
	}
	if a.URI != nil {
		ch, err := migration.ParseURI(*a.URI)
		if err != nil {
			return nil, err
		}
		return []migration.Channel{ch}, nil
	}
	if len(a.Channels) == 0 {
		return nil, fmt.Errorf("need either 'uri' or 'channels' argument")
	}
	var out []migration.Channel
	for _, c := range a.Channels {
		ch, err := channelFromArg(c)
		if err != nil {
			return nil, err
		}
		out = append(out, ch)
	}
	return out, nil
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func channelFromArg(c ChannelArg) (migration.Channel, error) {
	ch := migration.Channel{Type: c.ChannelType}
	if ch.Type != "main" && ch.Type != "cpr" {
		return ch, fmt.Errorf("Parameter 'channel-type' does not accept value '%s'", c.ChannelType)
	}
	a := c.Addr
	switch a.Transport {
	case "file":
		ch.Transport, ch.Path = "file", str(a.Filename)
		if a.Offset != nil {
			ch.Offset = *a.Offset
		}
		if ch.Path == "" {
			return ch, fmt.Errorf("Parameter 'filename' is missing")
		}
	case "socket":
		switch str(a.Type) {
		case "unix":
			ch.Transport, ch.Path = "unix", str(a.Path)
		case "inet":
			ch.Transport, ch.Host, ch.Port = "tcp", str(a.Host), str(a.Port)
		case "fd":
			ch.Transport, ch.FD = "fd", str(a.Str)
		default:
			return ch, fmt.Errorf("Parameter 'type' does not accept value '%s'", str(a.Type))
		}
	default:
		return ch, fmt.Errorf("Parameter 'transport' does not accept value '%s'", a.Transport)
	}
	return ch, nil
}

// Migration starts and controls migrations through a migrator; the CLI
// wires the incoming side (defer) with an Incoming function.
type Migration struct {
	G *migration.Migrator
	// Incoming runs migrate-incoming; nil refuses it (no --incoming defer).
	Incoming func(chs []migration.Channel) error
}

// RegisterMigration adds the migration commands.
func (mon *Monitor) RegisterMigration(mg *Migration) error {
	mon.mig = mg
	g := mg.G
	cmds := map[string]qmp.Handler{
		"migrate": qmp.Typed(func(ctx context.Context, a MigrateArgs) (any, error) {
			if a.Resume != nil && *a.Resume {
				return nil, fmt.Errorf("postcopy resume is not supported")
			}
			chs, err := a.channels()
			if err != nil {
				return nil, err
			}
			if err := g.StartChannels(chs); err != nil {
				return nil, err
			}
			return struct{}{}, nil
		}),
		"migrate-incoming": qmp.Typed(func(ctx context.Context, a MigrateArgs) (any, error) {
			if mg.Incoming == nil {
				return nil, fmt.Errorf("'-incoming' was not specified on the command line")
			}
			chs, err := a.channels()
			if err != nil {
				return nil, err
			}
			return struct{}{}, mg.Incoming(chs)
		}),
		"query-migrate": qmp.NoArgs(func(ctx context.Context) (any, error) { return g.Query(), nil }),
		"migrate-continue": qmp.Typed(func(ctx context.Context, a struct {
			State migration.Status `json:"state"`
		}) (any, error) {
			return struct{}{}, g.Continue(a.State)
		}),
		"migrate_cancel": qmp.NoArgs(func(ctx context.Context) (any, error) { g.Cancel(); return struct{}{}, nil }),
		"query-migrate-parameters": qmp.NoArgs(func(ctx context.Context) (any, error) {
			return g.Parameters(), nil
		}),
		"migrate-set-parameters": qmp.Typed(func(ctx context.Context, u migration.ParameterUpdate) (any, error) {
			return struct{}{}, g.SetParameters(u)
		}),
		"query-migrate-capabilities": qmp.NoArgs(func(ctx context.Context) (any, error) {
			return g.QueryCapabilities(), nil
		}),
		"migrate-set-capabilities": qmp.Typed(func(ctx context.Context, a struct {
			Capabilities []migration.CapabilityState `json:"capabilities"`
		}) (any, error) {
			return struct{}{}, g.SetCapabilities(a.Capabilities)
		}),
	}
	for name, h := range cmds {
		if err := mon.srv.Register(name, h); err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
	return nil
}
