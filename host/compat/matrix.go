package compat

import (
	"context"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
	"time"

	"wasmvmm/host/machine/config"
)

// Releases are the plugin sets this tree keeps buildable: r1 serves
// virtio-net with release 1 (plugins/virtio-net), r2 with release 2
// (plugins/virtio-net/v2). Every other device type uses the plugin the
// machine type names in both.
func Releases() []PluginSet {
	return []PluginSet{
		{Name: "r1", Use: map[string]string{}},
		{Name: "r2", Use: map[string]string{"virtio-net": "virtio-net@v2"}},
	}
}

// KnownBreak is an incompatibility the project accepts: migrating a device
// from one plugin to another is expected to fail, for a stated reason.
type KnownBreak struct {
	DeviceType string // e.g. "virtio-net"
	From, To   string // plugin names as a set resolves them
	Reason     string
}

// KnownBreaks lists the accepted incompatibilities between the releases.
func KnownBreaks() []KnownBreak {
	return []KnownBreak{{
		DeviceType: "virtio-net", From: "virtio-net@v2", To: "virtio-net",
		Reason: "virtio-net@v2 adds subsection virtio-net/stats (a v2-only feature: device statistics), " +
			"which virtio-net v1 does not know: the pre-flight schema check refuses v2 -> v1 before any RAM moves " +
			"(a plain QEMU stream would fail on load once the subsection is sent, i.e. once the device counted traffic)",
	}}
}

// expectedBreak returns the reason a migration of mt from src to dst is
// expected to fail, or "".
func expectedBreak(mt *config.MachineType, src, dst PluginSet, known []KnownBreak) string {
	var reasons []string
	for _, k := range known {
		for _, d := range mt.Devices {
			if config.PluginType(d.Plugin) == k.DeviceType && src.Resolve(d.Plugin) == k.From && dst.Resolve(d.Plugin) == k.To {
				reasons = append(reasons, k.Reason)
				break
			}
		}
	}
	return strings.Join(reasons, "; ")
}

// Outcome is a matrix cell's verdict.
type Outcome string

// Outcomes.
const (
	Green       Outcome = "green"        // worked, as expected
	Red         Outcome = "red"          // failed unexpectedly
	RedExpected Outcome = "red-expected" // failed, as a known break says
	Unexpected  Outcome = "green-unexpected"
	Skipped     Outcome = "skipped" // not run (the forward migration failed)
)

// Result is one check of one cell.
type Result struct {
	Outcome Outcome `json:"outcome"`
	Detail  string  `json:"detail,omitempty"` // what failed, or figures
	Reason  string  `json:"reason,omitempty"` // why a red was expected
}

// Cell is one (machine type, source set, destination set) combination.
type Cell struct {
	Machine    string        `json:"machine"`
	Src        string        `json:"src"`
	Dst        string        `json:"dst"`
	Static     Result        `json:"static"`      // compat-check src -> dst
	Forward    Result        `json:"forward"`     // live migration src -> dst
	StaticBack Result        `json:"static_back"` // compat-check dst -> src
	Backward   Result        `json:"backward"`    // live migration dst -> fresh src
	Elapsed    time.Duration `json:"elapsed"`
	expectFwd  string
	expectBack string
}

// Matrix is the outcome of a run.
type Matrix struct {
	Sets    []PluginSet
	Cells   []*Cell
	Elapsed time.Duration
}

// MatrixOptions configure a run.
type MatrixOptions struct {
	Machines []*config.MachineType // default: every machine type of Catalog
	Catalog  *config.Catalog
	Sets     []PluginSet  // default Releases()
	Known    []KnownBreak // default KnownBreaks()
	// ScratchDir holds sockets and disk images (default: a temporary
	// directory, removed afterwards).
	ScratchDir string
	// Timeout bounds each migration (default 60 s).
	Timeout time.Duration
	// Progress, when set, is told about each cell as it finishes.
	Progress func(*Cell)
}

// RunMatrix runs, for every machine type x source set x destination set,
// the static check both ways (dump-vmstate of each side, compared as
// compat-check does) and a real live migration forward and, if that
// worked, backward into a fresh machine with the source's set; each
// migration must carry the device state exactly (every field both sides
// have is compared).
func (e *Env) RunMatrix(ctx context.Context, o MatrixOptions) (*Matrix, error) {
	start := time.Now()
	if o.Sets == nil {
		o.Sets = Releases()
	}
	if o.Known == nil {
		o.Known = KnownBreaks()
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Machines == nil {
		if o.Catalog == nil {
			return nil, fmt.Errorf("matrix: no machine types")
		}
		for _, n := range o.Catalog.Names() {
			mt, err := o.Catalog.Get(n)
			if err != nil {
				return nil, err
			}
			o.Machines = append(o.Machines, mt)
		}
	}
	if o.ScratchDir == "" {
		dir, err := os.MkdirTemp("", "wasmvmm-matrix-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		o.ScratchDir = dir
	}
	dumps := map[string]*Dump{}
	dump := func(mt *config.MachineType, set PluginSet) (*Dump, error) {
		key := mt.Name + "/" + set.Name
		if d, ok := dumps[key]; ok {
			return d, nil
		}
		b, err := e.DumpVMState(ctx, mt, MachineOptions{Set: set, ScratchDir: o.ScratchDir, Properties: scenarioProperties(mt)})
		if err != nil {
			return nil, err
		}
		d, err := ParseDump(key+".json", b)
		if err != nil {
			return nil, err
		}
		dumps[key] = d
		return d, nil
	}
	mx := &Matrix{Sets: o.Sets}
	n := 0
	for _, mt := range o.Machines {
		for _, src := range o.Sets {
			for _, dst := range o.Sets {
				n++
				c := &Cell{Machine: mt.Name, Src: src.Name, Dst: dst.Name,
					expectFwd: expectedBreak(mt, src, dst, o.Known), expectBack: expectedBreak(mt, dst, src, o.Known)}
				t0 := time.Now()
				sd, err := dump(mt, src)
				if err != nil {
					return nil, err
				}
				dd, err := dump(mt, dst)
				if err != nil {
					return nil, err
				}
				c.Static = judgeStatic(Check(sd, dd), c.expectFwd)
				c.StaticBack = judgeStatic(Check(dd, sd), c.expectBack)
				dir := filepath.Join(o.ScratchDir, fmt.Sprintf("cell%d", n))
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return nil, err
				}
				c.Forward, c.Backward = e.migrateCell(ctx, mt, src, dst, dir, o.Timeout, c.expectFwd, c.expectBack)
				os.RemoveAll(dir)
				c.Elapsed = time.Since(t0)
				mx.Cells = append(mx.Cells, c)
				if o.Progress != nil {
					o.Progress(c)
				}
			}
		}
	}
	mx.Elapsed = time.Since(start)
	return mx, nil
}

// scenarioProperties turns on what makes the machine type's guest-visible
// differences matter: virtio-net's offloads need a vnet header.
func scenarioProperties(mt *config.MachineType) map[string]map[string]any {
	props := map[string]map[string]any{}
	for _, d := range mt.Devices {
		if config.PluginType(d.Plugin) == "virtio-net" {
			props[d.ID] = map[string]any{"vnet_hdr": true}
		}
	}
	return props
}

func judgeStatic(r *Report, expect string) Result {
	if r.Compatible() {
		if expect != "" {
			return Result{Outcome: Unexpected, Detail: "compatible, but a known break says it is not", Reason: expect}
		}
		return Result{Outcome: Green}
	}
	var lines []string
	for _, p := range r.Problems {
		lines = append(lines, p.String())
	}
	detail := strings.Join(lines, "; ")
	if expect != "" {
		return Result{Outcome: RedExpected, Detail: detail, Reason: expect}
	}
	return Result{Outcome: Red, Detail: detail}
}

func judgeRun(err error, expect string, detail string) Result {
	switch {
	case err == nil && expect == "":
		return Result{Outcome: Green, Detail: detail}
	case err == nil:
		return Result{Outcome: Unexpected, Detail: "migrated, but a known break says it cannot", Reason: expect}
	case expect != "":
		return Result{Outcome: RedExpected, Detail: err.Error(), Reason: expect}
	}
	return Result{Outcome: Red, Detail: err.Error()}
}

// migrateCell migrates a driven machine with src's plugins to dst's and
// back into a fresh src machine, comparing the device state each time.
func (e *Env) migrateCell(ctx context.Context, mt *config.MachineType, src, dst PluginSet, dir string, timeout time.Duration, expectFwd, expectBack string) (Result, Result) {
	props := scenarioProperties(mt)
	skipped := Result{Outcome: Skipped, Detail: "the forward migration failed"}
	a, err := e.NewMachine(ctx, mt, MachineOptions{Set: src, ScratchDir: dir, Properties: props})
	if err != nil {
		return Result{Outcome: Red, Detail: err.Error()}, skipped
	}
	defer a.Close()
	if err := Drive(a); err != nil {
		return Result{Outcome: Red, Detail: err.Error()}, skipped
	}
	fwd, b := e.hop(ctx, a, mt, dst, filepath.Join(dir, "fwd.sock"), dir, props, timeout, expectFwd)
	if b == nil {
		return fwd, skipped
	}
	defer b.Close()
	back, c := e.hop(ctx, b, mt, src, filepath.Join(dir, "back.sock"), dir, props, timeout, expectBack)
	if c != nil {
		c.Close()
	}
	return fwd, back
}

// hop migrates from into a new machine with set's plugins; it returns the
// new machine when the migration carried the state.
func (e *Env) hop(ctx context.Context, from *Machine, mt *config.MachineType, set PluginSet, sock, dir string, props map[string]map[string]any, timeout time.Duration, expect string) (Result, *Machine) {
	to, err := e.NewMachine(ctx, mt, MachineOptions{Set: set, ScratchDir: dir, Properties: props, Incoming: true})
	if err != nil {
		return Result{Outcome: Red, Detail: err.Error()}, nil
	}
	t0 := time.Now()
	err = Migrate(ctx, from, to, sock, timeout)
	took := time.Since(t0)
	if err == nil {
		var sa, sb map[string][]byte
		if sa, err = DeviceState(from); err == nil {
			if sb, err = DeviceState(to); err == nil {
				if d := DiffState(sa, sb, 5); len(d) > 0 {
					err = fmt.Errorf("device state differs after migration: %s", strings.Join(d, "; "))
				} else if commonKeys(sa, sb) == 0 && len(sa) > 0 {
					err = fmt.Errorf("no device field in common")
				}
			}
		}
	}
	r := judgeRun(err, expect, fmt.Sprintf("%.0f ms", took.Seconds()*1000))
	if err != nil {
		to.Close()
		return r, nil
	}
	return r, to
}

// Unexpected lists every check whose outcome is red or an unexpected
// green: what CI fails on.
func (mx *Matrix) Unexpected() []string {
	var out []string
	for _, c := range mx.Cells {
		for _, r := range []struct {
			name string
			res  Result
		}{{"static", c.Static}, {"forward", c.Forward}, {"static back", c.StaticBack}, {"backward", c.Backward}} {
			if r.res.Outcome == Red || r.res.Outcome == Unexpected {
				out = append(out, fmt.Sprintf("%s %s->%s %s: %s %s", c.Machine, c.Src, c.Dst, r.name, r.res.Outcome, r.res.Detail))
			}
		}
	}
	return out
}

// Counts returns how many checks had each outcome.
func (mx *Matrix) Counts() map[Outcome]int {
	n := map[Outcome]int{}
	for _, c := range mx.Cells {
		for _, r := range []Result{c.Static, c.Forward, c.StaticBack, c.Backward} {
			n[r.Outcome]++
		}
	}
	return n
}

func mdCell(r Result) string {
	switch r.Outcome {
	case Green:
		if r.Detail != "" {
			return "🟢 green (" + r.Detail + ")"
		}
		return "🟢 green"
	case RedExpected:
		return "🟠 red-expected"
	case Skipped:
		return "⚪ skipped"
	}
	return "🔴 " + string(r.Outcome) + ": " + mdEscape(r.Detail)
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// Markdown renders the matrix as a Markdown report: one table row per cell,
// then the reasons of the expected reds and the details of the reds.
func (mx *Matrix) Markdown() string {
	var b strings.Builder
	b.WriteString("# wasmvmm compatibility matrix\n\n")
	b.WriteString("Every machine type x source plugin set x destination plugin set: the static check (dump-vmstate of both sides, compared as `wasmvmm compat-check` does) and a real live migration over a unix socket, forward (source -> destination) and backward (destination -> a fresh machine with the source's plugins); each migration must carry every device field both sides have.\n\n")
	b.WriteString("Plugin sets:\n\n")
	for _, s := range mx.Sets {
		fmt.Fprintf(&b, "- `%s`\n", s)
	}
	counts := mx.Counts()
	fmt.Fprintf(&b, "\nChecks: %d green, %d red-expected, %d red, %d unexpected green, %d skipped; %.1f s.\n\n",
		counts[Green], counts[RedExpected], counts[Red], counts[Unexpected], counts[Skipped], mx.Elapsed.Seconds())
	b.WriteString("| machine type | src | dst | static -> | migrate -> | static <- | migrate <- |\n|---|---|---|---|---|---|---|\n")
	for _, c := range mx.Cells {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", c.Machine, c.Src, c.Dst, mdCell(c.Static), mdCell(c.Forward), mdCell(c.StaticBack), mdCell(c.Backward))
	}
	reasons := map[string]bool{}
	var rl []string
	var details []string
	for _, c := range mx.Cells {
		for _, r := range []struct {
			name string
			res  Result
		}{{"static ->", c.Static}, {"migrate ->", c.Forward}, {"static <-", c.StaticBack}, {"migrate <-", c.Backward}} {
			if r.res.Outcome == RedExpected {
				if !reasons[r.res.Reason] {
					reasons[r.res.Reason] = true
					rl = append(rl, r.res.Reason)
				}
				details = append(details, fmt.Sprintf("- %s %s/%s %s: %s", c.Machine, c.Src, c.Dst, r.name, r.res.Detail))
			}
		}
	}
	if len(rl) > 0 {
		b.WriteString("\n## Expected reds\n\n")
		for _, r := range rl {
			fmt.Fprintf(&b, "- %s\n", r)
		}
		b.WriteString("\nWhat failed:\n\n")
		b.WriteString(strings.Join(details, "\n"))
		b.WriteString("\n")
	}
	if u := mx.Unexpected(); len(u) > 0 {
		b.WriteString("\n## Unexpected\n\n")
		for _, s := range u {
			fmt.Fprintf(&b, "- %s\n", mdEscape(s))
		}
	}
	return b.String()
}

// HTML renders the matrix as an HTML table with green, red and orange
// (red-expected, with the reason as a tooltip and in the cell) cells.
func (mx *Matrix) HTML() string {
	var b strings.Builder
	b.WriteString(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>wasmvmm compatibility matrix</title>
<style>
body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #999;padding:4px 8px;vertical-align:top}
.green{background:#b7e4b7} .red{background:#f4a6a6} .red-expected{background:#f9d38c} .green-unexpected{background:#f4a6a6} .skipped{background:#ddd}
small{display:block;max-width:28em}
</style></head><body>
<h1>wasmvmm compatibility matrix</h1>
`)
	counts := mx.Counts()
	fmt.Fprintf(&b, "<p>%d green, %d red-expected, %d red, %d unexpected green, %d skipped; %.1f s.</p>\n<ul>\n",
		counts[Green], counts[RedExpected], counts[Red], counts[Unexpected], counts[Skipped], mx.Elapsed.Seconds())
	for _, s := range mx.Sets {
		fmt.Fprintf(&b, "<li><code>%s</code></li>\n", html.EscapeString(s.String()))
	}
	b.WriteString("</ul>\n<table>\n<tr><th>machine type</th><th>src</th><th>dst</th><th>static &rarr;</th><th>migrate &rarr;</th><th>static &larr;</th><th>migrate &larr;</th></tr>\n")
	for _, c := range mx.Cells {
		fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%s</td>", html.EscapeString(c.Machine), html.EscapeString(c.Src), html.EscapeString(c.Dst))
		for _, r := range []Result{c.Static, c.Forward, c.StaticBack, c.Backward} {
			text := string(r.Outcome)
			if r.Outcome == Green && r.Detail != "" {
				text += " (" + r.Detail + ")"
			}
			note := ""
			switch {
			case r.Reason != "":
				note = "<small>" + html.EscapeString(r.Reason) + "</small>"
			case r.Outcome == Red:
				note = "<small>" + html.EscapeString(r.Detail) + "</small>"
			}
			fmt.Fprintf(&b, `<td class="%s" title="%s">%s%s</td>`, r.Outcome, html.EscapeString(r.Detail), html.EscapeString(text), note)
		}
		b.WriteString("</tr>\n")
	}
	b.WriteString("</table>\n</body></html>\n")
	return b.String()
}

// WriteReports writes matrix.md and matrix.html into dir.
func (mx *Matrix) WriteReports(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "matrix.md"), []byte(mx.Markdown()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "matrix.html"), []byte(mx.HTML()), 0o644)
}
