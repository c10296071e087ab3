package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"wasmvmm/host/machine"
	"wasmvmm/host/machine/config"
	"wasmvmm/host/migration"
	"wasmvmm/host/monitor"
	"wasmvmm/host/plugin"
	"wasmvmm/host/pluginbuild"
	"wasmvmm/host/qmp"
	"wasmvmm/machines"
)

// runFlags are the flags run and demo share. Flags override the
// configuration file.
type runFlags struct {
	memory      string
	cpus        int
	shareMemory bool
	serial      string
	qmp         string
	incoming    multiFlag
	machineType string
	machinesDir string
	kernel      string
	initrd      string
	appendLine  string
	pluginDir   string
	paused      bool
	logLevel    string
	kvm         string
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.memory, "memory", "", "guest RAM, e.g. 512M or 4G")
	fs.IntVar(&f.cpus, "cpus", 0, "number of vCPUs")
	fs.BoolVar(&f.shareMemory, "share-memory", false, "back guest RAM with memfds (needed for cpr-transfer)")
	fs.StringVar(&f.serial, "serial", "", "serial console: stdio, null, file:PATH or unix:PATH")
	fs.StringVar(&f.qmp, "qmp", "", "QMP unix socket path (created mode 0600)")
	fs.Var(&f.incoming, "incoming", "incoming migration URI (repeatable): defer, file:PATH, unix:PATH, tcp:HOST:PORT, fd:N, cpr,unix:PATH")
	fs.StringVar(&f.machineType, "machine", "", "machine type (see `wasmvmm machines`)")
	fs.StringVar(&f.machinesDir, "machines", "", "read machine types from this directory instead of the built-in ones")
	fs.StringVar(&f.kernel, "kernel", "", "kernel to boot (ELF or bzImage)")
	fs.StringVar(&f.initrd, "initrd", "", "initial ramdisk")
	fs.StringVar(&f.appendLine, "append", "", "kernel command line")
	fs.StringVar(&f.pluginDir, "plugins", "", "directory of the .wasm plugins")
	fs.BoolVar(&f.paused, "S", false, "start paused (resume with QMP cont)")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level: trace, debug, info, warn, error")
	fs.StringVar(&f.kvm, "kvm", "/dev/kvm", "KVM device")
}

// demoCmdline runs the dirtier over 64 MiB at 64 MiB/s (one marker a
// second), checks the disk and the display at boot and again every ten
// passes.
const demoCmdline = "workload=dirtier dirty_rate_mb=64 blk_test=1 gpu_test=1 dev_every=10"

func cmdRun(args []string, demo bool, stdin io.Reader, stdout, stderr io.Writer) int {
	name := "run"
	if demo {
		name = "demo"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f runFlags
	f.register(fs)
	fs.Usage = func() {
		if demo {
			fmt.Fprintln(stderr, "usage: wasmvmm demo [flags]")
		} else {
			fmt.Fprintln(stderr, "usage: wasmvmm run CONFIG.toml [flags]")
		}
		fs.PrintDefaults()
	}
	// Allow flags after the config file too.
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return flagExit(err)
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	level := hclog.LevelFromString(f.logLevel)
	if level == hclog.NoLevel {
		fmt.Fprintf(stderr, "wasmvmm: unknown log level %q\n", f.logLevel)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "wasmvmm", Level: level, Output: stderr})

	var vm *config.VM
	switch {
	case demo && len(positional) == 0:
		vm = &config.VM{}
	case !demo && len(positional) == 1:
		var err error
		if vm, err = config.LoadVM(positional[0]); err != nil {
			fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
			return 1
		}
	default:
		fs.Usage()
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	code, err := runVM(ctx, vm, &f, demo, stdin, stdout, stderr, log)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// applyFlags overrides the configuration with the flags given.
func applyFlags(vm *config.VM, f *runFlags, demo bool, l *layout) error {
	if f.memory != "" {
		n, err := config.ParseSize(f.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		vm.Machine.Memory = config.Size(n)
	}
	if f.cpus != 0 {
		if f.cpus < 0 {
			return fmt.Errorf("--cpus %d: must be positive", f.cpus)
		}
		vm.Machine.CPUs = f.cpus
	}
	if f.shareMemory {
		vm.Machine.ShareMemory = true
	}
	if f.machineType != "" {
		vm.Machine.Type = f.machineType
	}
	if f.kernel != "" {
		vm.Boot.Kernel = f.kernel
	}
	if f.initrd != "" {
		vm.Boot.Initrd = f.initrd
	}
	if f.appendLine != "" {
		vm.Boot.Cmdline = f.appendLine
	}
	if demo {
		if vm.Machine.Memory == 0 {
			vm.Machine.Memory = 256 << 20
		}
		if vm.Boot.Cmdline == "" {
			vm.Boot.Cmdline = demoCmdline
		}
		disk, err := demoDisk()
		if err != nil {
			return err
		}
		setBackend(vm, "blk0", "disk", disk)
		setBackend(vm, "net0", "net", "discard")
	}
	if f.serial == "" && (demo || !hasSerialBackend(vm)) {
		f.serial = "stdio"
	}
	if f.serial != "" {
		setBackend(vm, "serial0", "console", f.serial)
	}
	return nil
}

func hasSerialBackend(vm *config.VM) bool {
	for _, d := range vm.Devices {
		if d.ID == "serial0" && d.Backends["console"] != "" {
			return true
		}
	}
	return false
}

func setBackend(vm *config.VM, id, name, spec string) {
	for i := range vm.Devices {
		if vm.Devices[i].ID == id {
			if vm.Devices[i].Backends == nil {
				vm.Devices[i].Backends = map[string]string{}
			}
			vm.Devices[i].Backends[name] = spec
			return
		}
	}
	vm.Devices = append(vm.Devices, config.DeviceConfig{ID: id, Backends: map[string]string{name: spec}})
}

// loadCatalog returns the machine types: built in, or from --machines.
func loadCatalog(dir string) (*config.Catalog, error) {
	if dir != "" {
		return config.LoadCatalog(dir)
	}
	return config.LoadCatalogFS(machines.FS(), "machines (built in)")
}

// newestMachineType picks the default: the newest version of wasmvmm-virt.
func newestMachineType(c *config.Catalog) string {
	best := ""
	for _, n := range c.Names() {
		mt, _ := c.Get(n)
		if mt.Family == "wasmvmm-virt" && mt.Next == "" {
			best = n
		}
	}
	return best
}

// runVM builds and runs the VM until it stops; the returned code is the
// process exit status.
func runVM(ctx context.Context, vm *config.VM, f *runFlags, demo bool, stdin io.Reader, stdout, stderr io.Writer, log hclog.Logger) (int, error) {
	start := processStart()
	phase := func(name string) { log.Debug("startup", "phase", name, "since_process_start", time.Since(start)) }
	phase("main")
	l := discoverLayout(f.pluginDir)
	if err := applyFlags(vm, f, demo, &l); err != nil {
		return 2, err
	}
	catalog, err := loadCatalog(f.machinesDir)
	if err != nil {
		return 1, err
	}
	if vm.Machine.Type == "" {
		vm.Machine.Type = newestMachineType(catalog)
	}
	mt, err := catalog.Get(vm.Machine.Type)
	if err != nil {
		return 1, err
	}
	if demo && vm.Boot.Kernel == "" {
		if vm.Boot.Kernel, err = l.ensureGuest(ctx); err != nil {
			return 1, err
		}
	}
	specs, err := machine.DeviceSpecs(mt, vm)
	if err != nil {
		return 1, err
	}
	if l.repo != "" && f.pluginDir == "" {
		// In a source checkout, (re)build the plugins this VM uses.
		var names []string
		for _, s := range specs {
			names = append(names, s.Plugin)
		}
		if _, err := pluginbuild.Build(ctx, l.repo, l.pluginDir, names...); err != nil {
			return 1, fmt.Errorf("build plugins: %w", err)
		}
	}
	phase("config")
	rt, err := plugin.NewRuntime(ctx, plugin.Config{Logger: log.Named("plugin")})
	if err != nil {
		return 1, err
	}
	phase("plugin runtime")
	defer rt.Close(context.Background())

	console := newConsole(stdin, stdout, stderr)
	console.opts = machine.BackendOptions{Incoming: len(f.incoming) > 0, Owner: fmt.Sprintf("wasmvmm pid %d", os.Getpid())}
	loader := &machine.PluginLoader{
		Runtime:   rt,
		Find:      func(name string) (string, error) { return pluginbuild.Find(name, []string{l.pluginDir}) },
		Backends:  console.open,
		Migration: plugin.NewMigrationRegistry(),
		Preserved: plugin.NewFDRegistry(),
		Logger:    log,
	}
	incoming, err := parseIncoming(f.incoming)
	if err != nil {
		return 2, err
	}
	loader.Preload(ctx, specs)
	// cpr-transfer: read the cpr channel before anything of the machine
	// exists; RAM and preserved descriptors come from the source (cpr.go).
	mem, err := incoming.receiveCPR(ctx, vm, loader, console, log)
	if err != nil {
		return 1, err
	}
	if incoming.cprIn != nil {
		defer mem.Close()
		defer incoming.cprIn.Close()
	}
	// Machine types from --machines are checked against the plugins'
	// declarations (unknown devices, properties, compat entries); the
	// built-in ones are checked by the test suite against every release
	// (host/compat), so a start does not pay one instantiation per plugin.
	typeChecked := make(chan error, 1)
	if f.machinesDir != "" {
		go func() { typeChecked <- checkMachineType(ctx, rt, mt, l.pluginDir) }()
	} else {
		typeChecked <- nil
	}
	m, err := machine.New(machine.Config{
		VM: vm, MachineType: mt, KVMPath: f.kvm, Logger: log,
		Devices: loader.Factory(ctx, specs),
		NoBoot:  incoming.active(),
		Memory:  mem,
	})
	if err != nil {
		return 1, err
	}
	defer m.Close()
	phase("machine built")
	// The machine type check ran beside the machine's assembly; it must
	// pass before the guest runs.
	if err := <-typeChecked; err != nil {
		return 1, err
	}
	if incoming.active() {
		// inmigrate before the monitor answers: a migrate-incoming that
		// comes as soon as QMP is up must find the machine waiting.
		m.SetAutostart(!f.paused)
		if err := m.StartIncoming(); err != nil {
			return 1, err
		}
	}
	var srv *qmp.Server
	emit := func(name string, data map[string]any) {
		if srv != nil {
			srv.Emit(name, data)
		}
	}
	mig := migration.New(migration.Config{Machine: m, MachineType: mt.Name, Plugins: loader.Migration, Preserved: loader.Preserved, Logger: log.Named("migration"), Emit: emit})
	// m.Close (deferred above) cancels a migration still running and
	// waits for it before guest RAM goes away (migration.New registers
	// that with Machine.BeforeClose).
	if f.qmp != "" {
		srv = qmp.NewServer(qmp.Config{Version: qmp.VersionInfo{Package: "wasmvmm " + version}, Logger: log.Named("qmp")})
		mon, err := monitor.New(srv, m, vm.Machine.Type)
		if err != nil {
			return 1, err
		}
		mc := &monitor.Migration{G: mig}
		if incoming.deferred {
			mc.Incoming = func(chs []migration.Channel) error { return incoming.start(ctx, mig, m, chs, log) }
		}
		if err := mon.RegisterMigration(mc); err != nil {
			return 1, err
		}
		if err := srv.Listen(f.qmp); err != nil {
			return 1, fmt.Errorf("--qmp %s: %w", f.qmp, err)
		}
		defer srv.Close()
	}
	restore, err := console.start(func() { m.Shutdown("host-qmp-quit", false) })
	if err != nil {
		return 1, err
	}
	defer restore()
	if incoming.active() {
		if !incoming.deferred {
			if err := incoming.start(ctx, mig, m, incoming.channels, log); err != nil {
				return 1, fmt.Errorf("incoming migration: %w", err)
			}
		}
	} else if err := m.Start(f.paused); err != nil {
		return 1, err
	}
	phase("vcpus started")
	// Loading plugins leaves decoded modules behind as garbage (tens of
	// MiB); return it to the OS once, off the boot path.
	go debug.FreeOSMemory()
	select {
	case <-m.Done():
	case <-ctx.Done():
		m.Shutdown("host-signal", false)
	case err := <-incoming.failed:
		m.Shutdown("host-incoming-failed", false)
		restore()
		return 1, fmt.Errorf("incoming migration: %w", err)
	}
	restore()
	if st, reason := m.State(); st == machine.StateInternalError {
		return m.ExitCode(), fmt.Errorf("guest stopped: %s", reason)
	}
	return m.ExitCode(), nil
}

func cmdMachines(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("machines", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("machines", "", "read machine types from this directory")
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	c, err := loadCatalog(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	def := newestMachineType(c)
	for _, n := range c.Names() {
		mt, _ := c.Get(n)
		mark := " "
		if n == def {
			mark = "*"
		}
		fmt.Fprintf(stdout, "%s %-24s %s\n", mark, n, mt.Description)
	}
	return 0
}

func cmdBuildPlugins(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build-plugins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: wasmvmm build-plugins [OUTDIR]\n\nBuilds every plugin under plugins/ that is out of date into OUTDIR\n(default: the user cache directory) and prints name and path of each.")
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return 2
	}
	wd, _ := os.Getwd()
	repo := findRepo(wd)
	if repo == "" {
		fmt.Fprintln(stderr, "wasmvmm: build-plugins must run inside the wasmvmm source tree")
		return 1
	}
	out := fs.Arg(0)
	if out == "" {
		var err error
		if out, err = pluginbuild.DefaultOutDir(repo); err != nil {
			fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
			return 1
		}
	}
	built, err := pluginbuild.Ensure(context.Background(), repo, out)
	if err != nil {
		fmt.Fprintf(stderr, "wasmvmm: %v\n", err)
		return 1
	}
	for name, path := range built {
		fmt.Fprintf(stdout, "%s\t%s\n", name, path)
	}
	return 0
}

// processStart returns when this process started, from /proc/self/stat,
// falling back to now.
func processStart() time.Time {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Now()
	}
	// Field 22 (starttime, clock ticks since boot) follows the command in
	// parentheses, which may contain spaces.
	i := strings.LastIndexByte(string(b), ')')
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return time.Now()
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return time.Now()
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	const hz = 100 // USER_HZ on Linux
	sinceBoot := time.Duration(ts.Nano())
	started := time.Duration(ticks) * time.Second / hz
	return time.Now().Add(started - sinceBoot)
}

// demoDisk returns the demo's scratch disk, a sparse 64 MiB raw image in the
// user's cache directory, created on first use.
func demoDisk() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("demo disk: %w", err)
	}
	dir = filepath.Join(dir, "wasmvmm")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("demo disk: %w", err)
	}
	path := filepath.Join(dir, "demo-disk.img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("demo disk: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		if err := f.Truncate(64 << 20); err != nil {
			return "", fmt.Errorf("demo disk: %w", err)
		}
	}
	return path, nil
}
