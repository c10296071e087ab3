// Command wasmvmm is a KVM virtual machine monitor whose devices are
// WebAssembly plugins.
//
//	wasmvmm run CONFIG.toml [flags]   boot the VM a configuration describes
//	wasmvmm demo [flags]              boot the test guest with the default devices
//	wasmvmm build-plugins [DIR]       build every plugin under plugins/ into DIR
//	wasmvmm analyze FILE              print a migration stream as JSON
//	wasmvmm migrate --qmp SOCK URI    live-migrate a running VM (progress and figures)
//	wasmvmm machines                  list the machine types
//	wasmvmm dump-vmstate --machine NAME FILE   every section schema of a machine type
//	wasmvmm compat-check SRC.json DST.json     what breaks migrating from SRC to DST
//	wasmvmm compat-matrix [--out DIR]          every machine type x release x release, checked and migrated
//	wasmvmm version
//
// run and demo take the same flags; see `wasmvmm run -h`.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is the wasmvmm release.
const version = "0.1.0"

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest, false, stdin, stdout, stderr)
	case "demo":
		return cmdRun(rest, true, stdin, stdout, stderr)
	case "build-plugins":
		return cmdBuildPlugins(rest, stdout, stderr)
	case "analyze":
		return cmdAnalyze(rest, stdout, stderr)
	case "migrate":
		return cmdMigrate(rest, stdout, stderr)
	case "machines":
		return cmdMachines(rest, stdout, stderr)
	case "dump-vmstate":
		return cmdDumpVMState(rest, stdout, stderr)
	case "compat-check":
		return cmdCompatCheck(rest, stdout, stderr)
	case "compat-matrix":
		return cmdCompatMatrix(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "wasmvmm %s\n", version)
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "wasmvmm: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

// flagExit is the exit status of a command whose flags failed to parse:
// 0 when help was asked for (the flag package printed the usage), 2 for a
// usage error.
func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: wasmvmm COMMAND [ARGS]

commands:
  run CONFIG.toml [flags]   boot the VM described by a configuration file
  demo [flags]              boot the test guest with every default device and the dirtier
  build-plugins [DIR]       build every plugin under plugins/ (default DIR: bin/plugins)
  analyze [-d all|state|desc] FILE
                            print a migration stream or snapshot as JSON
  migrate --qmp SOCK URI    migrate a running VM (unix:PATH, tcp:HOST:PORT, fd:N, file:PATH)
                            with a progress bar and the final figures
  machines                  list the machine types
  dump-vmstate [--machine NAME] FILE
                            write every section schema of a machine type (QEMU's -dump-vmstate JSON)
  compat-check [--json] SRC.json DST.json
                            compare two dumps like QEMU's vmstate-static-checker;
                            exit status = number of problems (0: compatible)
  compat-matrix [--out DIR] every machine type x source release x destination release:
                            static check and live migration both ways; matrix.md, matrix.html
  version                   print the version

run and demo flags: wasmvmm run -h
`)
}
