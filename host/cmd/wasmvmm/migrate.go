package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"wasmvmm/host/migration"
	"wasmvmm/host/qmp"
)

// cmdMigrate is `wasmvmm migrate --qmp SOCK [flags] URI`: it starts a
// migration through a running VMM's QMP socket, draws a progress bar while
// it runs, and prints the final figures. Ctrl-C cancels the migration.
func cmdMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("qmp", "", "QMP socket of the source VMM")
	bw := fs.Int64("max-bandwidth", -1, "max-bandwidth in bytes/s (0: unlimited; default: leave as set)")
	downtime := fs.Int64("downtime-limit", -1, "downtime-limit in ms (default: leave as set)")
	autoConverge := fs.Bool("auto-converge", false, "throttle the vCPUs if the guest dirties memory faster than the link")
	quiet := fs.Bool("q", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if *sock == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: wasmvmm migrate --qmp SOCK [--max-bandwidth B] [--downtime-limit MS] [--auto-converge] URI")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := qmp.Dial(dctx, *sock)
	dcancel()
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm migrate: %v\n", err)
		return 1
	}
	defer c.Close()
	go func() {
		for range c.Events() {
		}
	}()
	if err := startMigration(ctx, c, fs.Arg(0), *bw, *downtime, *autoConverge); err != nil {
		fmt.Fprintf(stderr, "wasmvmm migrate: %v\n", err)
		return 1
	}
	info, err := followMigration(ctx, c, stdout, !*quiet)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm migrate: %v\n", err)
		return 1
	}
	printFigures(stdout, info)
	if info.Status != migration.StatusCompleted {
		return 1
	}
	return 0
}

func startMigration(ctx context.Context, c *qmp.Client, uri string, bw, downtime int64, autoConverge bool) error {
	params := map[string]any{}
	if bw >= 0 {
		params["max-bandwidth"] = bw
	}
	if downtime >= 0 {
		params["downtime-limit"] = downtime
	}
	if len(params) > 0 {
		if _, err := c.Execute(ctx, "migrate-set-parameters", params); err != nil {
			return err
		}
	}
	if autoConverge {
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "auto-converge", "state": true}}}
		if _, err := c.Execute(ctx, "migrate-set-capabilities", caps); err != nil {
			return err
		}
	}
	_, err := c.Execute(ctx, "migrate", map[string]any{"uri": uri})
	return err
}

// followMigration polls query-migrate until the migration ends; an
// interrupt sends migrate_cancel and keeps following.
func followMigration(ctx context.Context, c *qmp.Client, out io.Writer, bar bool) (migration.Info, error) {
	bg := context.Background()
	cancelled := false
	for {
		raw, err := c.Execute(bg, "query-migrate", nil)
		if err != nil {
			return migration.Info{}, err
		}
		var info migration.Info
		if err := json.Unmarshal(raw, &info); err != nil {
			return info, err
		}
		if bar {
			drawBar(out, info)
		}
		switch info.Status {
		case migration.StatusCompleted, migration.StatusFailed, migration.StatusCancelled, migration.StatusNone:
			if bar {
				fmt.Fprintln(out)
			}
			if info.Status == migration.StatusNone {
				return info, errors.New("no migration is running")
			}
			return info, nil
		}
		if ctx.Err() != nil && !cancelled {
			cancelled = true
			if _, err := c.Execute(bg, "migrate_cancel", nil); err != nil {
				return info, err
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drawBar redraws one progress line: bytes sent against bytes sent plus
// the dirty bytes still to send (pages never touched are not sent).
func drawBar(out io.Writer, info migration.Info) {
	const width = 30
	frac := 0.0
	var ram migration.RAMInfo
	if info.RAM != nil {
		ram = *info.RAM
	}
	if all := ram.Transferred + ram.Remaining; all > 0 {
		frac = float64(ram.Transferred) / float64(all)
	}
	if info.Status == migration.StatusCompleted {
		frac = 1
	}
	frac = min(frac, 1)
	n := int(frac * width)
	fmt.Fprintf(out, "\r%-14s [%s%s] %3.0f%%  sent %s  pass %d  %.0f Mbit/s   ",
		info.Status, strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100,
		human(ram.Transferred), ram.DirtySyncCount, ram.Mbps)
}

func printFigures(out io.Writer, info migration.Info) {
	ms := func(p *int64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%d ms", *p)
	}
	fmt.Fprintf(out, "status:       %s\n", info.Status)
	if info.ErrorDesc != "" {
		fmt.Fprintf(out, "error:        %s\n", info.ErrorDesc)
	}
	fmt.Fprintf(out, "total time:   %s\n", ms(info.TotalTime))
	fmt.Fprintf(out, "setup time:   %s\n", ms(info.SetupTime))
	fmt.Fprintf(out, "downtime:     %s\n", ms(info.Downtime))
	if r := info.RAM; r != nil {
		fmt.Fprintf(out, "transferred:  %s (%d pages with data, %d zero pages)\n", human(r.Transferred), r.Normal, r.Duplicate)
		fmt.Fprintf(out, "throughput:   %.0f Mbit/s\n", r.Mbps)
		fmt.Fprintf(out, "dirty syncs:  %d\n", r.DirtySyncCount)
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
