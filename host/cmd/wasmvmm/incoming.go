package main

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/host/machine"
	"wasmvmm/host/migration"
)

// incomingSpec is what the --incoming flags asked for.
type incomingSpec struct {
	deferred bool
	channels []migration.Channel
	once     sync.Once
	// failed receives the error of a socket migration that failed to load;
	// the process then exits unless the migration was deferred (QEMU exits
	// too when -incoming URI fails; after migrate-incoming it stays).
	failed chan error
	// cpr is the cpr channel of a cpr-transfer; cprIn what it brought.
	cpr   *migration.Channel
	cprIn *migration.CPRIncoming
}

func (s *incomingSpec) active() bool { return s.deferred || len(s.channels) > 0 }

// parseIncoming reads the repeatable --incoming flags: "defer", or URIs
// (file:PATH, unix:PATH, tcp:HOST:PORT, fd:N, cpr,unix:PATH). A socket URI
// listens at once and loads the first connection.
func parseIncoming(flags []string) (*incomingSpec, error) {
	s := &incomingSpec{failed: make(chan error, 1)}
	for _, f := range flags {
		if f == "defer" {
			s.deferred = true
			continue
		}
		ch, err := parseIncomingChannel(f)
		if err != nil {
			return nil, fmt.Errorf("--incoming: %w", err)
		}
		if ch.Type == "cpr" {
			if s.cpr != nil {
				return nil, errors.New("--incoming: give one cpr channel")
			}
			s.cpr = &ch
			continue
		}
		s.channels = append(s.channels, ch)
	}
	mains := 0
	for _, c := range s.channels {
		if c.Type == "main" {
			mains++
		}
	}
	if mains > 1 || (s.deferred && mains > 0) {
		return nil, errors.New("--incoming: give one main channel, or defer (and migrate-incoming)")
	}
	return s, nil
}

// start loads the incoming state from the main channel (once).
func (s *incomingSpec) start(ctx context.Context, g *migration.Migrator, m *machine.Machine, chs []migration.Channel, log hclog.Logger) error {
	var main *migration.Channel
	for i := range chs {
		if chs[i].Type == "main" {
			main = &chs[i]
		}
	}
	if main == nil {
		return errors.New("no main channel")
	}
	already := true
	s.once.Do(func() { already = false })
	if already {
		return errors.New("The incoming migration has already been started")
	}
	if st, _ := m.State(); st != machine.StateInMigrate {
		return fmt.Errorf("the machine is %s, not waiting for an incoming migration", st)
	}
	log.Info("incoming migration", "from", main.String())
	if s.cprIn != nil {
		return s.startCPR(ctx, g, *main, log)
	}
	if main.Transport == "file" {
		return g.Incoming(ctx, *main)
	}
	// A socket: listen now, load in the background.
	res, err := g.ListenIncoming(ctx, *main)
	if err != nil {
		return err
	}
	go func() {
		if err := <-res; err != nil {
			log.Error("incoming migration failed", "error", err)
			if !s.deferred {
				s.failed <- err
			}
		} else {
			log.Info("incoming migration completed")
		}
	}()
	return nil
}
