// Package machines embeds the machine types shipped with wasmvmm (the
// *.toml files of this directory, format in README.md), so the binary
// carries them; `--machines DIR` reads another directory instead.
package machines

import (
	"embed"
	"io/fs"
)

//go:embed *.toml
var files embed.FS

// FS returns the embedded machine type files.
func FS() fs.FS { return files }
