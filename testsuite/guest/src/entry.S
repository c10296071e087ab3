/*
 * entry.S - entry points and interrupt stubs of the wasmvmm test guest.
 *
 * Two ways in, both ending in kernel_main(kind, info) on boot_stack:
 *   entry64   ELF e_entry. Linux x86-64 boot protocol: 64-bit mode, paging on,
 *             low 4 GiB identity-mapped, flat GDT, interrupts off,
 *             RSI = struct boot_params.
 *   pvh_entry PVH (XEN_ELFNOTE_PHYS32_ENTRY note below): 32-bit protected mode,
 *             paging off, flat CS/DS, EBX = struct hvm_start_info.
 *             Loads the static identity map below, enables PAE + long mode,
 *             jumps to 64-bit code.
 * Both print the boot banner before doing anything else.
 *
 * Everything here runs in ring 0, which PVM emulates one instruction at a
 * time: keep it short, no SSE/AVX/XSAVE/INT3/CMPXCHG16B.
 */
#include "guest.h"

/* ---------------------------------------------------------------- PVH note */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 8			/* descsz: 64-bit entry address */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad pvh_entry

	.section .rodata
banner:
	.ascii "WASMVMM-GUEST BOOT\n"
banner_end:

/*
 * BANNER addr: program the 16550 at 0x3f8 (115200 8N1, FIFO on, no
 * interrupts) and print the banner, waiting for THRE (transmitter empty)
 * before each burst of up to 16 bytes (the FIFO depth). Clobbers eax, ecx,
 * edx, esi. \addr is the register used to address the byte: %esi in
 * 32-bit code, %rsi in 64-bit code. About 30 port accesses (VM exits).
 */
.macro UART_OUT port, val
	movw $\port, %dx
	movb $\val, %al
	outb %al, %dx
.endm
.macro BANNER addr
	UART_OUT 0x3f9, 0x00	/* IER: no interrupts */
	UART_OUT 0x3fb, 0x80	/* LCR: DLAB=1 */
	UART_OUT 0x3f8, 0x01	/* DLL: divisor 1 = 115200 baud */
	UART_OUT 0x3f9, 0x00	/* DLM */
	UART_OUT 0x3fb, 0x03	/* LCR: 8 data bits, no parity, 1 stop, DLAB=0 */
	UART_OUT 0x3fa, 0x07	/* FCR: enable and clear FIFOs */
	UART_OUT 0x3fc, 0x03	/* MCR: DTR | RTS */
	movl $banner, %esi
.Lburst\@:
	movw $0x3fd, %dx	/* LSR */
.Lthre\@:
	inb %dx, %al
	testb $0x20, %al	/* THRE */
	jz .Lthre\@
	movw $0x3f8, %dx	/* THR */
	movl $16, %ecx
.Lbyte\@:
	movb (\addr), %al
	outb %al, %dx
	incl %esi
	cmpl $banner_end, %esi
	je .Ldone\@
	decl %ecx
	jnz .Lbyte\@
	jmp .Lburst\@
.Ldone\@:
.endm

	.section .text.entry, "ax"

/* ------------------------------------------------- 64-bit Linux boot entry */
	.code64
	.globl entry64
entry64:
	cli
	cld
	movq %rsi, %rbx		/* boot_params */
	BANNER %rsi
	leaq boot_stack_top(%rip), %rsp
	movl $BOOT_LINUX64, %edi
	movq %rbx, %rsi
	call kernel_main
1:	hlt
	jmp 1b

/* ------------------------------------------------------------- PVH entry */
	.code32
	.globl pvh_entry
pvh_entry:
	cli
	cld
	BANNER %esi		/* ebx = hvm_start_info is left alone */
	/* Our GDT (64-bit code at 0x08, flat data at 0x10). */
	lgdt gdt_ptr
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs

	movl %cr4, %eax
	orl $0x20, %eax		/* CR4.PAE */
	movl %eax, %cr4
	movl $pml4, %eax	/* the static tables below: nothing to build */
	movl %eax, %cr3
	movl $0xc0000080, %ecx	/* EFER */
	rdmsr
	orl $0x100, %eax	/* EFER.LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax	/* CR0.PG | CR0.PE */
	movl %eax, %cr0
	ljmp $SEL_KCODE, $pvh64

	.code64
pvh64:
	leaq boot_stack_top(%rip), %rsp
	movl $BOOT_PVH, %edi
	movl %ebx, %esi
	call kernel_main
1:	hlt
	jmp 1b

/* ----------------------------------------------------------- ring-3 entry */
/* enter_user(rip, rsp, arg): iretq to ring 3 with IF=0, IOPL=0. */
	.globl enter_user
enter_user:
	movl $SEL_UDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	pushq $SEL_UDATA	/* ss */
	pushq %rsi		/* rsp */
	pushq $0x2		/* rflags: reserved bit only */
	pushq $SEL_UCODE	/* cs */
	pushq %rdi		/* rip */
	movq %rdx, %rdi		/* first argument of the ring-3 function */
	xorl %esi, %esi
	xorl %edx, %edx
	iretq

/* ------------------------------------------------------ exception stubs */
/*
 * 32 stubs, 16 bytes apart from isr_stubs: push a dummy error code when the
 * CPU does not, push the vector, go to the common path. The IDT below points
 * vector v at isr_stubs + 16 * v.
 */
	.balign 16
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 32
	.balign 16
	.if vec == 13
	jmp gp_entry
	.elseif vec == 6
	jmp ud_entry
	.else
	.if !((vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	.endif
	.set vec, vec + 1
	.endr
	.globl isr_stubs_end
isr_stubs_end:

/* Not-present IDT entries (vectors 32..255) raise #NP with the vector in
 * the error code, so the panic message still names the vector. */

isr_common:
	/* stack: vector, error code, rip, cs, rflags, rsp, ss */
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	call exception_panic	/* does not return */
1:	cli
	hlt
	jmp 1b

/*
 * #GP fast path: ring-3 port I/O. PVM (and IOPL=0 anywhere) raises #GP(0) for
 * in/out in ring 3; decode the instruction at RIP, do it here, skip it.
 * Handles in/out with DX or imm8 port, 8/16/32-bit (0x66 prefix = 16-bit).
 * Anything else goes to the panic path.
 */
gp_entry:
	cmpq $0, (%rsp)		/* error code != 0: a selector fault */
	jne 9f
	testb $3, 16(%rsp)	/* from ring 0: a kernel bug */
	jz 9f
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	/* 0 rsi, 8 rdx, 16 rcx, 24 rax, 32 error, 40 rip, 48 cs, ... */
	movq 40(%rsp), %rsi
	xorl %ecx, %ecx		/* ecx = 1: operand-size prefix seen */
	movzbl (%rsi), %eax
	cmpb $0x66, %al
	jne 1f
	incl %ecx
	incq %rsi
	movzbl (%rsi), %eax
1:	incq %rsi		/* past the opcode */
	movzwl 8(%rsp), %edx	/* port from DX ... */
	cmpb $0xec, %al
	jae 2f
	cmpb $0xe4, %al
	jb 8f
	cmpb $0xe7, %al
	ja 8f
	movzbl (%rsi), %edx	/* ... or from imm8 */
	incq %rsi
	addb $8, %al		/* E4..E7 -> EC..EF */
2:	cmpb $0xef, %al
	ja 8f
	movq %rsi, 40(%rsp)	/* resume after the instruction */
	cmpb $0xee, %al
	jae 4f
	/* in: EC = byte, ED = word/dword */
	cmpb $0xec, %al
	movq 24(%rsp), %rax
	jne 3f
	inb %dx, %al
	jmp 6f
3:	testl %ecx, %ecx
	jnz 5f
	inl %dx, %eax
	jmp 6f
5:	inw %dx, %ax
6:	movq %rax, 24(%rsp)
	jmp 7f
4:	/* out: EE = byte, EF = word/dword */
	cmpb $0xee, %al
	movq 24(%rsp), %rax
	jne 3f
	outb %al, %dx
	jmp 7f
3:	testl %ecx, %ecx
	jnz 5f
	outl %eax, %dx
	jmp 7f
5:	outw %ax, %dx
7:	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $8, %rsp		/* error code */
	iretq
8:	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
9:	pushq $13
	jmp isr_common

/* --------------------------------------------------------- system calls */
/*
 * Ring 3 -> ring 0 calls. Under PVM `int N` from ring 3 raises #UD and
 * SYSCALL does not switch to ring 0, but exceptions are delivered through
 * our IDT, so the call instruction is a marked UD2:
 *	0f 0b 53 59	ud2; .ascii "SY"
 * rax = number, rdi, rsi, rdx = arguments; result in rax; every other
 * register is preserved. Any other #UD goes to the panic path.
 */
#define UD2_SYSCALL 0x59530b0f
ud_entry:
	testb $3, 8(%rsp)	/* frame: rip, cs, rflags, rsp, ss */
	jz 1f
	pushq %rsi
	movq 8(%rsp), %rsi
	cmpl $UD2_SYSCALL, (%rsi)
	popq %rsi
	jne 1f
	addq $4, (%rsp)		/* resume after the marked ud2 */
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	movq %rdx, %rcx
	movq %rsi, %rdx
	movq %rdi, %rsi
	movq %rax, %rdi
	call syscall_dispatch
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	iretq
1:	pushq $0
	pushq $6
	jmp isr_common

/* ------------------------------------------------------------- stacks */
	.section .bss.stacks, "aw", @nobits
	.balign 4096
	.space 16384
	.globl boot_stack_top
boot_stack_top:			/* kernel stack; also TSS.RSP0 */
	.space 4096
	.globl df_stack_top
df_stack_top:			/* IST1: double fault */
	.space 65536
	.globl user_stack_top
user_stack_top:

/*
 * Static page tables for [0, 4 GiB), ready at link time so that neither entry
 * path spends emulated ring-0 instructions building them (~1 ms per 512
 * entries under PVM). 2 MiB pages, all user-accessible (ring-3 workloads
 * touch RAM and device MMIO directly):
 *   [0, 3 GiB)      write-back (RAM below the hole; unbacked addresses are
 *                   harmless in a VM: they exit as MMIO)
 *   [3 GiB, 4 GiB)  uncached (PCD|PWT, PAT entry 3): LAPIC, IOAPIC, virtio-mmio
 * kernel.c adds RAM above 4 GiB (pdpt[4..63]) at boot.
 */
#define PTE_TABLE 0x07		/* present | writable | user */
#define PTE_2M_WB 0x87		/* present | writable | user | 2 MiB */
#define PTE_2M_UC 0x9f		/* PTE_2M_WB | PWT | PCD */
	.section .data.pgtables, "aw", @progbits
	.balign 4096
	.globl pml4, pdpt, pd_low
pml4:
	.quad pdpt + PTE_TABLE
	.fill 511, 8, 0
pdpt:
	.quad pd_low + PTE_TABLE, pd_low + 0x1000 + PTE_TABLE
	.quad pd_low + 0x2000 + PTE_TABLE, pd_low + 0x3000 + PTE_TABLE
	.fill 508, 8, 0
pd_low:
	.set i, 0
	.rept 1536
	.quad (i << 21) | PTE_2M_WB
	.set i, i + 1
	.endr
	.rept 512
	.quad (i << 21) | PTE_2M_UC
	.set i, i + 1
	.endr

/*
 * The IDT, complete at link time (filling it at boot cost ~0.3 ms of
 * emulated ring 0). A gate splits the handler address into 16/16/32-bit
 * fields, which relocations cannot do; but every stub lies in .text.entry,
 * which starts at entry64 = 0x100000 (guest.ld asserts it and that the
 * stubs stay below 0x110000), so the fields are (stub - entry64), 0x0010, 0.
 * Interrupt gates, DPL 0; #DF (8) runs on IST1. Vectors 32-255 are not
 * present (#NP).
 */
	.section .data
	.balign 16
	.globl idt, idt_end
idt:
	.set vec, 0
	.rept 32
	.word isr_stubs - entry64 + 16 * vec	/* offset 15:0 (image at 0x100000) */
	.word SEL_KCODE
	.byte (vec == 8)			/* IST */
	.byte 0x8e				/* present, interrupt gate */
	.word 0x0010				/* offset 31:16 */
	.long 0, 0				/* offset 63:32, reserved */
	.set vec, vec + 1
	.endr
	.fill (256 - 32) * 16, 1, 0
idt_end:

	.section .note.GNU-stack, "", @progbits
