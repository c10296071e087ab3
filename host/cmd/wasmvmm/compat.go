package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"wasmvmm/host/compat"
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
