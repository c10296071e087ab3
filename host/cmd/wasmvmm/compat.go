package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"wasmvmm/host/compat"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
)

// cmdCompatCheck compares two dump-vmstate files with the semantics of
// QEMU's vmstate-static-checker; the exit status is the number of
// problems (at most 255), 0 when the destination can load what the source
// sends.
func cmdCompatCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compat-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	qemu := fs.Bool("qemu", false, "only QEMU's checks (no element-count and extra-field checks)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: wasmvmm compat-check [--json] [--qemu] SRC.json DST.json")
		fs.PrintDefaults()
	}
	// Flags may follow the files.
	var files []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return compat.MaxStatus
		}
		args = fs.Args()
		if len(args) > 0 {
			files = append(files, args[0])
			args = args[1:]
		}
	}
	if len(files) != 2 {
		fs.Usage()
		return compat.MaxStatus
	}
	src, err := compat.ReadDump(files[0])
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return compat.MaxStatus
	}
	dst, err := compat.ReadDump(files[1])
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return compat.MaxStatus
	}
	rep := compat.CheckWith(src, dst, compat.Options{Strict: !*qemu})
	if *asJSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
			return compat.MaxStatus
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return compat.MaxStatus
	}
	return rep.Status
}

// checkMachineType refuses, before a VM starts, a machine type that names
// a device type, property or compat entry its plugins do not declare.
func checkMachineType(ctx context.Context, rt *plugin.Runtime, mt *config.MachineType, pluginDir string) error {
	env := &compat.Env{Runtime: rt, PluginDirs: []string{pluginDir}}
	return env.CheckMachineType(ctx, mt, compat.PluginSet{Name: "this build"})
}

// cmdCompatMatrix runs the compatibility matrix and writes its reports.
func cmdCompatMatrix(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compat-matrix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", ".", "directory for matrix.md and matrix.html")
	machinesDir := fs.String("machines", "", "read machine types from this directory instead of the built-in ones")
	pluginDir := fs.String("plugins", "", "directory of the .wasm plugins (every release's plugins)")
	var only multiFlag
	fs.Var(&only, "machine", "run only this machine type (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: wasmvmm compat-matrix [--out DIR] [--machine NAME]...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	ctx := context.Background()
	catalog, err := loadCatalog(*machinesDir)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	o := compat.MatrixOptions{Catalog: catalog, Progress: func(c *compat.Cell) {
		fmt.Fprintf(stderr, "%-18s %s -> %s  static %s / %s  migrate %s / %s  (%.0f ms)\n", c.Machine, c.Src, c.Dst,
			c.Static.Outcome, c.StaticBack.Outcome, c.Forward.Outcome, c.Backward.Outcome, c.Elapsed.Seconds()*1000)
	}}
	for _, name := range only {
		mt, err := catalog.Get(name)
		if err != nil {
			fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
			return 1
		}
		o.Machines = append(o.Machines, mt)
	}
	types := o.Machines
	if types == nil {
		for _, n := range catalog.Names() {
			mt, _ := catalog.Get(n)
			types = append(types, mt)
		}
	}
	env, cleanup, err := newCompatEnv(ctx, *pluginDir, types, compat.Releases()...)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	defer cleanup()
	mx, err := env.RunMatrix(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: compat-matrix: %v\n", err)
		return 1
	}
	if err := mx.WriteReports(*out); err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	counts := mx.Counts()
	fmt.Fprintf(stdout, "%d cells in %.1f s: %d green, %d red-expected, %d red, %d unexpected green, %d skipped; reports: %s\n",
		len(mx.Cells), mx.Elapsed.Seconds(), counts[compat.Green], counts[compat.RedExpected], counts[compat.Red],
		counts[compat.Unexpected], counts[compat.Skipped], filepath.Join(*out, "matrix.{md,html}"))
	if u := mx.Unexpected(); len(u) > 0 {
		for _, s := range u {
			fmt.Fprintf(stderr, "unexpected: %s\n", s)
		}
		return 1
	}
	return 0
}
