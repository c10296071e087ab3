package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"

	"wasmvmm/host/compat"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
)

// cmdDumpVMState writes every section schema of a machine type, in the JSON
// shape of QEMU's -dump-vmstate.
func cmdDumpVMState(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dump-vmstate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	machineType := fs.String("machine", "", "machine type (default: the newest wasmvmm-virt)")
	machinesDir := fs.String("machines", "", "read machine types from this directory instead of the built-in ones")
	pluginDir := fs.String("plugins", "", "directory of the .wasm plugins")
	var use multiFlag
	fs.Var(&use, "use", "serve a device type with another plugin build, e.g. virtio-net=virtio-net@v2 (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: wasmvmm dump-vmstate [--machine NAME] [--use TYPE=PLUGIN] FILE|-")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	set, err := parsePluginSet("command line", use)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 2
	}
	ctx := context.Background()
	catalog, err := loadCatalog(*machinesDir)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	name := *machineType
	if name == "" {
		name = newestMachineType(catalog)
	}
	mt, err := catalog.Get(name)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	env, cleanup, err := newCompatEnv(ctx, *pluginDir, []*config.MachineType{mt}, set)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	defer cleanup()
	out, err := env.DumpVMState(ctx, mt, compat.MachineOptions{Set: set})
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: dump-vmstate %s: %v\n", mt.Name, err)
		return 1
	}
	if file := fs.Arg(0); file == "-" {
		_, err = stdout.Write(out)
	} else {
		err = os.WriteFile(file, out, 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	return 0
}

// parsePluginSet reads TYPE=PLUGIN choices.
func parsePluginSet(name string, use []string) (compat.PluginSet, error) {
	set := compat.PluginSet{Name: name, Use: map[string]string{}}
	for _, u := range use {
		typ, plug, ok := cutEq(u)
		if !ok {
			return set, fmt.Errorf("--use %q: want TYPE=PLUGIN, e.g. virtio-net=virtio-net@v2", u)
		}
		set.Use[typ] = plug
	}
	return set, nil
}

func cutEq(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return s[:i], s[i+1:], i > 0 && i < len(s)-1
		}
	}
	return "", "", false
}

// newCompatEnv finds the plugins (in a source checkout it builds those the
// machine types place, as each plugin set resolves them) and starts a
// plugin runtime.
func newCompatEnv(ctx context.Context, pluginFlag string, types []*config.MachineType, sets ...compat.PluginSet) (*compat.Env, func(), error) {
	l := discoverLayout(pluginFlag)
	if l.repo != "" && pluginFlag == "" {
		seen := map[string]bool{}
		var names []string
		for _, mt := range types {
			for _, d := range mt.Devices {
				for _, set := range sets {
					if n := set.Resolve(d.Plugin); !seen[n] {
						seen[n] = true
						names = append(names, n)
					}
				}
			}
		}
		if _, err := pluginbuild.Build(ctx, l.repo, l.pluginDir, names...); err != nil {
			return nil, nil, fmt.Errorf("build plugins: %w", err)
		}
	}
	rt, err := plugin.NewRuntime(ctx, plugin.Config{Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, nil, err
	}
	env := &compat.Env{Runtime: rt, PluginDirs: []string{l.pluginDir}, Logger: hclog.New(&hclog.LoggerOptions{Name: "wasmvmm", Level: hclog.Error})}
	return env, func() { rt.Close(context.Background()) }, nil
}
