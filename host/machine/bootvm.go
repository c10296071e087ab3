package machine

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"wasmvmm/host/kvm"
	"wasmvmm/host/machine/acpi"
	"wasmvmm/host/machine/boot"
	"wasmvmm/host/machine/config"
)

// LAPIC register offsets and LVT delivery modes used to set up the BSP the
// way firmware leaves it: LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI.
const (
	lapicLVTLINT0 = 0x350
	lapicLVTLINT1 = 0x360
	lvtExtINT     = 0x7 << 8
	lvtNMI        = 0x4 << 8
)

// createVCPUs creates the vCPUs with the host's supported CPUID, each with
// its own APIC id.
func (m *Machine) createVCPUs(n int) error {
	if n == 0 {
		return nil
	}
	cpuid, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	for id := 0; id < n; id++ {
		c, err := m.vm.CreateVCPU(id)
		if err != nil {
			return err
		}
		m.vcpus = append(m.vcpus, &vcpu{id: id, cpu: c})
		entries := make([]kvm.CPUIDEntry, len(cpuid))
		copy(entries, cpuid)
		for i := range entries {
			e := &entries[i]
			switch e.Function {
			case 1:
				e.EBX = e.EBX&0x00ffffff | uint32(id)<<24
			case 0xb, 0x1f:
				e.EDX = uint32(id)
			}
		}
		if err := c.SetCPUID(entries); err != nil {
			return fmt.Errorf("vcpu %d: %w", id, err)
		}
		if id == 0 {
			if err := setupBSPLAPIC(c); err != nil {
				return err
			}
		} else if err := c.SetMPState(kvm.MPStateUninitialized); err != nil {
			// With an in-kernel irqchip APs wait for INIT/SIPI.
			return fmt.Errorf("vcpu %d: %w", id, err)
		}
	}
	return nil
}

func setupBSPLAPIC(c *kvm.VCPU) error {
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	put := func(off int, v uint32) {
		l[off], l[off+1], l[off+2], l[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put(lapicLVTLINT0, lvtExtINT)
	put(lapicLVTLINT1, lvtNMI)
	return c.SetLAPIC(l)
}

// loadKernel loads the kernel (ELF or bzImage), the initrd, ACPI tables and
// boot_params, and sets the BSP's registers for a 64-bit entry.
func (m *Machine) loadKernel() error {
	b := m.cfg.VM.Boot
	if b.Kernel == "" {
		return errors.New("no kernel: set [boot] kernel in the VM config or pass --kernel")
	}
	kernel, err := os.ReadFile(b.Kernel)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	lowEnd := m.layout.LowRAMEnd()
	var entry, kend uint64
	var header []byte
	var initrdMax uint64
	kr := bytes.NewReader(kernel)
	if len(kernel) >= 4 && string(kernel[:4]) == "\x7fELF" {
		if entry, kend, err = boot.LoadELF(kr, m.mem, lowEnd); err != nil {
			return fmt.Errorf("kernel %s: %w", b.Kernel, err)
		}
	} else {
		bz, err := boot.LoadBzImage(kr, m.mem, lowEnd, 0)
		if err != nil {
			return fmt.Errorf("kernel %s: %w", b.Kernel, err)
		}
		entry, kend, header, initrdMax = bz.Entry, bz.End, bz.Header.Raw, uint64(bz.Header.InitrdAddrMax)
	}
	cfg := boot.BootParamsConfig{Header: header, CmdlineAddr: boot.CmdlineAddr, Cmdline: m.cmdline()}
	if b.Initrd != "" {
		f, err := os.Open(b.Initrd)
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		addr, err := boot.LoadInitrd(f, uint64(st.Size()), m.mem, kend, initrdMax, lowEnd)
		if err != nil {
			return fmt.Errorf("initrd %s: %w", b.Initrd, err)
		}
		cfg.InitrdAddr, cfg.InitrdSize = addr, uint64(st.Size())
	}
	if cfg.E820, err = m.layout.E820(); err != nil {
		return err
	}
	rsdp, err := m.writeACPI()
	if err != nil {
		return err
	}
	cfg.RSDPAddr = rsdp
	if err := boot.WriteBootParams(m.mem, boot.ZeroPageAddr, cfg); err != nil {
		return err
	}
	cpu, err := boot.SetupLongMode(m.mem, m.layout.RAMEnd())
	if err != nil {
		return err
	}
	cpu.RIP = entry
	m.bootCPU, m.entry = cpu, entry
	return m.setBootRegisters(m.vcpus[0].cpu, cpu)
}

// cmdline is the configured command line plus the virtio-mmio entries for
// the devices the machine placed.
func (m *Machine) cmdline() string {
	cl := m.cfg.VM.Boot.Cmdline
	if s, err := boot.VirtioMMIOCmdline(m.virtioDevices()); err == nil && s != "" {
		if cl != "" {
			cl += " "
		}
		cl += s
	}
	return cl
}

// virtioDevices lists the MMIO windows of virtio devices (plugins named
// virtio-*) with their first IRQ.
func (m *Machine) virtioDevices() []boot.VirtioMMIODevice {
	var out []boot.VirtioMMIODevice
	for _, d := range m.devices {
		pd, ok := d.(*PluginDevice)
		if !ok {
			continue
		}
		s := pd.Spec()
		if len(s.MMIO) == 0 || len(s.IRQ) == 0 || !isVirtio(s.Plugin) {
			continue
		}
		if r := m.MMIO.Find(s.MMIO[0]); r != nil {
			out = append(out, boot.VirtioMMIODevice{Base: r.Base, Size: r.Size, IRQ: s.IRQ[0]})
		}
	}
	return out
}

func isVirtio(plugin string) bool { return len(plugin) > 7 && plugin[:7] == "virtio-" }

// writeACPI builds RSDP, XSDT, FADT, MADT and DSDT into guest memory and
// returns the RSDP's address.
func (m *Machine) writeACPI() (uint64, error) {
	cfg := acpi.Config{CPUs: len(m.vcpus), Addr: boot.ACPITablesAddr}
	for _, d := range m.virtioDevices() {
		cfg.VirtioMMIO = append(cfg.VirtioMMIO, acpi.VirtioMMIODevice{Base: d.Base, Size: d.Size, IRQ: d.IRQ})
	}
	for _, d := range m.devices {
		pd, ok := d.(*PluginDevice)
		if !ok {
			continue
		}
		s := pd.Spec()
		if len(s.PIO) > 0 && len(s.IRQ) > 0 && config.PluginType(s.Plugin) == "serial-16550" && s.IRQ[0] < 16 {
			cfg.Serial = append(cfg.Serial, acpi.SerialPort{Port: uint16(s.PIO[0]), IRQ: uint8(s.IRQ[0])})
		}
	}
	t, err := acpi.Build(cfg)
	if err != nil {
		return 0, fmt.Errorf("ACPI tables: %w", err)
	}
	if err := t.WriteToGuest(m.mem); err != nil {
		return 0, fmt.Errorf("write ACPI tables: %w", err)
	}
	return t.RSDPAddr, nil
}

func seg(s boot.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

// setBootRegisters converts the boot package's entry state into KVM's.
func (m *Machine) setBootRegisters(c *kvm.VCPU, st boot.CPUState) error {
	s, err := c.Sregs()
	if err != nil {
		return err
	}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = seg(st.CS), seg(st.DS), seg(st.ES), seg(st.FS), seg(st.GS), seg(st.SS)
	s.TR, s.LDT = seg(st.TR), seg(st.LDT)
	s.GDT = kvm.DTable{Base: st.GDT.Base, Limit: st.GDT.Limit}
	s.IDT = kvm.DTable{Base: st.IDT.Base, Limit: st.IDT.Limit}
	s.CR0, s.CR3, s.CR4, s.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{RIP: st.RIP, RSI: st.RSI, RSP: st.RSP, RFLAGS: st.RFLAGS})
}

// captureInitialState records every vCPU's and the VM's state before the
// first instruction, so system_reset can return to it.
func (m *Machine) captureInitialState() error {
	m.initial = m.initial[:0]
	for _, v := range m.vcpus {
		st, err := v.cpu.SaveState()
		if err != nil {
			return fmt.Errorf("capture initial state: %w", err)
		}
		m.initial = append(m.initial, st)
	}
	st, err := m.vm.SaveState()
	if err != nil {
		return fmt.Errorf("capture initial VM state: %w", err)
	}
	m.initialVM = st
	return nil
}

// restoreInitialState puts every vCPU and the VM back to the captured
// power-on state and reloads the boot structures a kernel may have reused.
func (m *Machine) restoreInitialState() error {
	if err := m.vm.RestoreState(m.initialVM); err != nil {
		return err
	}
	for i, v := range m.vcpus {
		v, st := v, m.initial[i]
		if err := m.onVCPU(v, func() error { return v.cpu.RestoreState(st) }); err != nil {
			return err
		}
	}
	if !m.cfg.NoBoot && len(m.vcpus) > 0 {
		// The guest may have overwritten the kernel image and the boot
		// structures: load them again, as firmware reboots would.
		return m.loadKernel()
	}
	return nil
}
