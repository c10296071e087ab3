package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"wasmvmm/host/vmstate"
)

// cmdAnalyze prints a migration stream as JSON, like QEMU's
// scripts/analyze-migration.py: its machine, description and state.
func cmdAnalyze(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("analyze", flag.ContinueOnError)
	fs.SetOutput(stderr)
	part := fs.String("d", "all", "what to print: all, state or desc")
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: wasmvmm analyze [-d all|state|desc] FILE")
		return 2
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	defer f.Close()
	a, err := vmstate.Analyze(f)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: analyze %s: %v\n", fs.Arg(0), err)
		return 1
	}
	var v any = a
	switch *part {
	case "state":
		v = a.State
	case "desc":
		v = a.Description
	case "all":
	default:
		fmt.Fprintf(stderr, "wasmvmm: -d %q: want all, state or desc\n", *part)
		return 2
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "    ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	return 0
}
