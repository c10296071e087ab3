package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/host/guestmem"
	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/migration"
)

// parseIncomingChannel reads one --incoming value: a URI (file:, unix:,
// tcp:, fd:, or "cpr,unix:PATH") or QEMU's JSON channel form,
// {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix",
// "path": "..."}}.
func parseIncomingChannel(v string) (migration.Channel, error) {
	if strings.HasPrefix(strings.TrimSpace(v), "{") {
		return migration.ParseChannelJSON([]byte(v))
	}
	return migration.ParseURI(v)
}

// receiveCPR reads the cpr channel, when there is one, before the machine
// is built: it returns the guest RAM built over the source's memfds and
// makes the loader's backends adopt the source's descriptors. Without a
// cpr channel it returns nil (the machine allocates its RAM).
func (s *incomingSpec) receiveCPR(ctx context.Context, vm *config.VM, loader *machine.PluginLoader, c *console, log hclog.Logger) (*guestmem.Memory, error) {
	if s.cpr == nil {
		return nil, nil
	}
	log.Info("cpr-transfer: waiting for the source's cpr state", "channel", s.cpr.String())
	in, err := migration.ReceiveCPR(ctx, *s.cpr, log.Named("cpr"))
	if err != nil {
		return nil, fmt.Errorf("incoming cpr channel: %w", err)
	}
	mem, err := in.Memory(vm)
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("incoming cpr channel: %w", err)
	}
	// The new process can hand the guest on again.
	vm.Machine.ShareMemory = true
	loader.Backends = in.Opener(loader.Backends, c.opts)
	s.cprIn = in
	log.Info("cpr-transfer: state received", "entries", len(in.Entries()), "ram_mib", mem.Size()>>20)
	return mem, nil
}

// startCPR listens on the main channel of a cpr-transfer (which hangs up
// the cpr channel) and loads the source's state in the background.
func (s *incomingSpec) startCPR(ctx context.Context, g *migration.Migrator, main migration.Channel, log hclog.Logger) error {
	res, err := g.ListenIncomingCPR(ctx, main, s.cprIn)
	if err != nil {
		return err
	}
	go func() {
		if err := <-res; err != nil {
			log.Error("incoming cpr-transfer failed", "error", err)
			if !s.deferred {
				s.failed <- err
			}
		} else {
			log.Info("incoming cpr-transfer completed")
		}
	}()
	return nil
}
