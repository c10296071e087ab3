// Package kvm drives Linux KVM on x86-64 through ioctls (golang.org/x/sys/unix),
// with the structure layouts and ioctl numbers of the UAPI headers written out
// in Go. It is plain KVM code: nothing in it depends on the kind of KVM behind
// /dev/kvm (VT-x, AMD-V, or a software KVM such as kvm_pvm).
//
// Typical use by the VM assembly code:
//
//	sys, err := kvm.Open("")          // /dev/kvm, API version checked
//	err = sys.CheckCapabilities()     // names every missing required capability
//	vm, err := sys.CreateVM()         // TSS at kvm.TSSAddr, identity map at kvm.IdentityMapAddr
//	err = vm.CreateIRQChip()          // PICs, IOAPIC, LAPICs
//	err = vm.CreatePIT2()
//	err = vm.SetUserMemoryRegion(0, 0, ram, kvm.MemLogDirtyPages)
//	cpu, err := vm.CreateVCPU(0)
//	cpuid, err := sys.SupportedCPUID() // adjust as needed
//	err = cpu.SetCPUID(cpuid)
//	err = cpu.SetSregs(...); err = cpu.SetRegs(...)
//
// Each vCPU runs on its own goroutine locked to an OS thread:
//
//	runtime.LockOSThread()
//	for {
//		exit, err := cpu.Run()
//		switch {
//		case err != nil:
//			return err
//		case exit.Interrupted():
//			if exit.Kicked && stopRequested() {
//				return nil
//			}
//			continue // a signal or EAGAIN: run again
//		case exit.Reason == kvm.ExitIO:
//			handlePIO(exit.IO) // fill exit.IO.Data for an IN
//		case exit.Reason == kvm.ExitMMIO:
//			handleMMIO(exit.MMIO)
//		}
//	}
//
// Another goroutine stops a running vCPU with cpu.Kick().
//
// Migration: stop every vCPU (Kick, then let its goroutine stop calling Run),
// then on each vCPU's goroutine call (*VCPU).SaveState, which first completes
// the instruction of the last exit (CompletePendingIO), and call
// (*VM).SaveState once. On the destination: create the VM with the same
// devices, memory with the same contents, vCPUs with the same ids and CPUID,
// then (*VCPU).RestoreState for each vCPU and (*VM).RestoreState, and run.
// VCPUState and VMState are plain values that encoding/gob or any
// field-by-field encoder can carry.
//
// Dirty logging semantics are described in dirty.go (see GetDirtyLog and
// ClearDirtyLog).
package kvm
