package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"wasmvmm/abi"
	"wasmvmm/host/plugin/meter"
)

const (
	hostModuleName = abi.HostModule
	wasiModuleName = "wasi_snapshot_preview1"
	initExport     = "_initialize"
)

// Module is a compiled plugin that passed the ABI checks. It is owned by
// its Runtime (closed by Runtime.Close) and may be instantiated many times.
type Module struct {
	rt       *Runtime
	name     string // file base name without .wasm, for messages
	path     string
	hash     string
	compiled wazero.CompiledModule
	metered  bool // instrumented by package meter
	major    int
	minor    int
	optional map[string]bool // optional exports present
}

// Name returns the plugin's name (the file name without ".wasm").
func (m *Module) Name() string { return m.name }

// Path returns the file the module was loaded from.
func (m *Module) Path() string { return m.path }

// SHA256 returns the hex SHA-256 of the module's bytes.
func (m *Module) SHA256() string { return m.hash }

// ABIVersion returns the ABI version the plugin was built for.
func (m *Module) ABIVersion() (major, minor int) { return m.major, m.minor }

// Load reads, instruments (package meter), compiles and checks a plugin.
// The instrumented bytes and the compiled code are cached across processes
// (keyed by the SHA-256 of the file); within a runtime the same path and
// content return the same *Module. A module that fails the checks is closed
// and an error names what is wrong.
func (r *Runtime) Load(ctx context.Context, path string) (*Module, error) {
	name := strings.TrimSuffix(filepath.Base(path), ".wasm")
	// The file is hashed as it is read, without keeping it: on the warm
	// path the instrumented copy from the cache is all wazero needs.
	hash, err := hashFile(path)
	if err != nil {
		return nil, fmt.Errorf("load plugin: %w", err)
	}
	key := path + "\x00" + hash

	// One compilation per key: wazero keys compiled code by the module's
	// content, so a second compilation of the same bytes shares the first
	// one's engine entry, and closing the loser's copy would free code the
	// winner runs. Concurrent loads of a key wait for the first.
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("load plugin %s: runtime closed", name)
	}
	if m, ok := r.modules[key]; ok {
		r.mu.Unlock()
		return m, nil
	}
	if r.loading == nil {
		r.loading = map[string]*moduleLoad{}
	}
	if l, ok := r.loading[key]; ok {
		r.mu.Unlock()
		<-l.done
		return l.m, l.err
	}
	l := &moduleLoad{done: make(chan struct{})}
	r.loading[key] = l
	r.mu.Unlock()

	l.m, l.err = r.compile(ctx, name, path, hash)
	r.mu.Lock()
	delete(r.loading, key)
	if l.err == nil {
		r.modules[key] = l.m
	}
	r.mu.Unlock()
	close(l.done)
	return l.m, l.err
}

// moduleLoad is a compilation in progress that other loads of the same
// file wait for.
type moduleLoad struct {
	done chan struct{}
	m    *Module
	err  error
}

// compile reads (or instruments) the module, compiles it and checks its
// imports, exports and ABI version.
func (r *Runtime) compile(ctx context.Context, name, path, hash string) (*Module, error) {
	code, err := r.moduleCode(path, hash)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	compiled, err := r.rt.CompileModule(ctx, code)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: compile: %w", name, err)
	}
	m := &Module{rt: r, name: name, path: path, hash: hash, compiled: compiled, metered: !r.cfg.NoDeadline, optional: map[string]bool{}}
	if err := m.check(); err != nil {
		_ = compiled.Close(ctx)
		return nil, err
	}
	return m, nil
}

// hashFile returns the hex SHA-256 of a file's contents.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// moduleCode returns the bytes to compile for the plugin at path whose
// contents hash to hash: instrumented with fuel metering, from the cache
// of instrumented modules when it has them (the file named by the hash, in
// a directory versioned by meter.Version), else read, instrumented and
// stored there (written to a temporary file and renamed, mode 0600; a
// cache that cannot be written only costs time). Unmetered runtimes get
// the file as it is.
func (r *Runtime) moduleCode(path, hash string) ([]byte, error) {
	var file string
	if r.meterDir != "" && !r.cfg.NoDeadline {
		file = filepath.Join(r.meterDir, hash+".wasm")
		if b, err := os.ReadFile(file); err == nil {
			return b, nil
		}
	}
	wasm, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(wasm); hex.EncodeToString(sum[:]) != hash {
		return nil, fmt.Errorf("%s changed while being loaded", path)
	}
	if r.cfg.NoDeadline {
		return wasm, nil
	}
	out, err := meter.Instrument(wasm)
	if err != nil {
		return nil, fmt.Errorf("instrument: %w", err)
	}
	if file != "" {
		if err := writeFileAtomic(file, out); err != nil {
			r.log.Warn("cannot cache the instrumented plugin", "error", err)
		}
	}
	return out, nil
}

// writeFileAtomic writes data to a temporary file next to name, mode 0600,
// and renames it over name, so readers see the whole file or none.
func writeFileAtomic(name string, data []byte) error {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// check verifies the ABI contract of a compiled module before any
// instantiation: the version marker, every import, every export.
func (m *Module) check() error {
	exports := m.compiled.ExportedFunctions()

	var markers []string
	for name := range exports {
		if strings.HasPrefix(name, abi.MarkerPrefix) {
			markers = append(markers, name)
		}
	}
	sort.Strings(markers)
	switch len(markers) {
	case 0:
		return fmt.Errorf("plugin %s has no ABI marker export (%s<major>_<minor>); it was not built for wasmvmm", m.name, abi.MarkerPrefix)
	case 1:
	default:
		return fmt.Errorf("plugin %s exports %d ABI markers (%s); exactly one is allowed", m.name, len(markers), strings.Join(markers, ", "))
	}
	major, minor, ok := abi.ParseMarker(markers[0])
	if !ok {
		return fmt.Errorf("plugin %s exports a malformed ABI marker %q", m.name, markers[0])
	}
	if major != abi.Major {
		return fmt.Errorf("plugin %s was built for ABI %d.%d; this host serves ABI %d.%d", m.name, major, minor, abi.Major, abi.Minor)
	}
	if minor > abi.Minor {
		return fmt.Errorf("plugin %s was built for ABI %d.%d, newer than this host's ABI %d.%d", m.name, major, minor, abi.Major, abi.Minor)
	}
	m.major, m.minor = major, minor
	if def := exports[markers[0]]; len(def.ParamTypes()) != 0 || len(def.ResultTypes()) != 0 {
		return fmt.Errorf("plugin %s: marker %s must take and return nothing", m.name, markers[0])
	}

	for _, def := range m.compiled.ImportedFunctions() {
		mod, fn, _ := def.Import()
		switch mod {
		case hostModuleName:
			want, ok := abi.HostFunctions[fn]
			if !ok {
				return fmt.Errorf("plugin %s imports %s.%s, which this host does not provide", m.name, mod, fn)
			}
			if !sameSignature(def, want) {
				return fmt.Errorf("plugin %s imports %s.%s with signature %s; this host provides %s", m.name, mod, fn, defSignature(def), signatureString(want))
			}
		case wasiModuleName:
			// Checked by wazero at instantiation against its WASI module;
			// an unknown WASI name is reported here to fail before that.
			if !wasiProvides(fn) {
				return fmt.Errorf("plugin %s imports %s.%s, which this host does not provide", m.name, mod, fn)
			}
		default:
			return fmt.Errorf("plugin %s imports %s.%s, which this host does not provide (only %s and %s)", m.name, mod, fn, hostModuleName, wasiModuleName)
		}
	}
	for _, def := range m.compiled.ImportedMemories() {
		mod, n, _ := def.Import()
		return fmt.Errorf("plugin %s imports memory %s.%s; plugins must define their own memory", m.name, mod, n)
	}
	if _, ok := m.compiled.ExportedMemories()["memory"]; !ok {
		return fmt.Errorf("plugin %s does not export its memory as \"memory\"", m.name)
	}
	if def, ok := exports[initExport]; !ok {
		return fmt.Errorf("plugin %s lacks the %s export of a WASI reactor (build with -buildmode=c-shared)", m.name, initExport)
	} else if len(def.ParamTypes()) != 0 || len(def.ResultTypes()) != 0 {
		return fmt.Errorf("plugin %s: %s must take and return nothing", m.name, initExport)
	}

	var missing []string
	for _, name := range sortedKeys(abi.PluginExports) {
		ex := abi.PluginExports[name]
		def, ok := exports[name]
		if !ok {
			if ex.Required {
				missing = append(missing, name)
			}
			continue
		}
		if !sameSignature(def, ex.Signature) {
			return fmt.Errorf("plugin %s exports %s with signature %s; ABI %d.%d wants %s", m.name, name, defSignature(def), abi.Major, abi.Minor, signatureString(ex.Signature))
		}
		if !ex.Required {
			m.optional[name] = true
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("plugin %s lacks required export(s) %s", m.name, strings.Join(missing, ", "))
	}
	return nil
}

// wasiProvides reports whether wazero's wasi_snapshot_preview1 has fn.
func wasiProvides(fn string) bool {
	switch fn {
	case "args_get", "args_sizes_get", "environ_get", "environ_sizes_get",
		"clock_res_get", "clock_time_get", "fd_advise", "fd_allocate", "fd_close",
		"fd_datasync", "fd_fdstat_get", "fd_fdstat_set_flags", "fd_fdstat_set_rights",
		"fd_filestat_get", "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread",
		"fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite", "fd_read", "fd_readdir",
		"fd_renumber", "fd_seek", "fd_sync", "fd_tell", "fd_write", "path_create_directory",
		"path_filestat_get", "path_filestat_set_times", "path_link", "path_open",
		"path_readlink", "path_remove_directory", "path_rename", "path_symlink",
		"path_unlink_file", "poll_oneoff", "proc_exit", "proc_raise", "sched_yield",
		"random_get", "sock_accept", "sock_recv", "sock_send", "sock_shutdown":
		return true
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func valTypes(ts []abi.ValType) []api.ValueType {
	out := make([]api.ValueType, len(ts))
	for i, t := range ts {
		out[i] = api.ValueType(t)
	}
	return out
}

func sameSignature(def api.FunctionDefinition, s abi.Signature) bool {
	return slices.Equal(def.ParamTypes(), valTypes(s.Params)) && slices.Equal(def.ResultTypes(), valTypes(s.Results))
}

func typesString(ts []api.ValueType) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = api.ValueTypeName(t)
	}
	return "(" + strings.Join(names, ", ") + ")"
}

func defSignature(def api.FunctionDefinition) string {
	return typesString(def.ParamTypes()) + " -> " + typesString(def.ResultTypes())
}

func signatureString(s abi.Signature) string {
	return typesString(valTypes(s.Params)) + " -> " + typesString(valTypes(s.Results))
}
