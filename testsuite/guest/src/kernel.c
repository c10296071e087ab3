/*
 * kernel.c - the ring-0 half of the test guest.
 *
 * kernel_main() runs once, on the boot stack, with interrupts off:
 *   1. collects the command line, memory map and RSDP from boot_params
 *      (Linux 64-bit entry) or hvm_start_info (PVH entry) into `bi`;
 *   2. switches to the identity map of entry.S ([0, 4 GiB), 2 MiB pages,
 *      user-accessible, the 3-4 GiB device hole uncached), extended here
 *      with the RAM above 4 GiB from the memory map (up to 64 GiB);
 *   3. loads its own GDT (user segments + TSS) and IDT;
 *   4. reads the kvmclock scale (TSC frequency) for ring 3;
 *   5. IRETQs to user_main() in ring 3 and never comes back, except through
 *      exceptions (panic), the #GP port-I/O path and the marked-UD2 system calls
 *      (entry.S).
 * Ring 0 is emulated instruction by instruction under PVM (~0.5 us each):
 * every loop here is O(entries), and nothing is cleared that the ELF loader
 * zero-fills (p_memsz > p_filesz: .bss, stacks, high page tables).
 */
#include "guest.h"

extern char boot_stack_top[], df_stack_top[], user_stack_top[];
extern char __image_end[];
void enter_user(void (*rip)(struct bootinfo *), void *rsp, struct bootinfo *arg)
	__attribute__((noreturn));

/* The boot information handed to ring 3. */
static struct bootinfo bi;

/* ------------------------------------------------------------------ GDT */

/* Flat segments. The PVH entry loads this table from 32-bit code, so it and
 * gdt_ptr must stay below 4 GiB (they do: the image is at 1 MiB). */
u64 gdt[7] __attribute__((aligned(16))) = {
	0,
	0x00af9b000000ffffUL, /* 0x08 kernel code, 64-bit, DPL 0 */
	0x00cf93000000ffffUL, /* 0x10 kernel data */
	0x00cff3000000ffffUL, /* 0x18 user data, DPL 3 */
	0x00affb000000ffffUL, /* 0x20 user code, 64-bit, DPL 3 */
	0, 0,                 /* 0x28 TSS descriptor (16 bytes), set below */
};

struct __attribute__((packed)) desc_ptr {
	u16 limit;
	u64 base;
};
struct desc_ptr gdt_ptr = { sizeof(gdt) - 1, (u64)gdt };

struct __attribute__((packed)) tss64 {
	u32 reserved0;
	u64 rsp[3]; /* stack for entries from ring 3 (rsp[0]) */
	u64 reserved1;
	u64 ist[7]; /* ist[0] = IST1: double fault */
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base; /* = sizeof: no I/O bitmap, ring-3 in/out #GP */
};
static struct tss64 tss __attribute__((aligned(16)));

static void setup_gdt(void)
{
	u64 base = (u64)&tss, limit = sizeof(tss) - 1;

	tss.rsp[0] = (u64)boot_stack_top;
	tss.ist[0] = (u64)df_stack_top;
	tss.iomap_base = sizeof(tss);
	gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89UL << 40) |
		 (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt[6] = base >> 32;
	__asm__ volatile("lgdt %0" ::"m"(gdt_ptr));
	/* Reload CS (the Linux entry arrives with the loader's selectors). */
	__asm__ volatile("pushq %0\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:" ::"i"(SEL_KCODE)
			 : "rax", "memory");
	__asm__ volatile("movl %0, %%ds\n\tmovl %0, %%es\n\tmovl %0, %%ss\n\t"
			 "movl %0, %%fs\n\tmovl %0, %%gs" ::"r"(SEL_KDATA));
	__asm__ volatile("ltr %w0" ::"r"(SEL_TSS));
}

/* ------------------------------------------------------------------ IDT */

static void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}


/* The IDT is complete at link time (entry.S): load it. */
extern char idt[], idt_end[];

static void setup_idt(void)
{
	struct desc_ptr p = { idt_end - idt - 1, (u64)idt };
	__asm__ volatile("lidt %0" ::"m"(p));
}

/* -------------------------------------------------------------- paging */

/* [0, 4 GiB) is mapped by the static tables of entry.S; RAM above 4 GiB gets
 * 2 MiB pages in pds_high (NOBITS, zero-filled by the loader). */
extern u64 pml4[512], pdpt[512];
static u64 pds_high[MAX_MAPPED_GIB - 4][512] __attribute__((section(".bss.pgtables"), aligned(4096)));

#define PTE_TABLE 0x07UL /* present | writable | user */
#define PTE_2M_WB 0x87UL /* present | writable | user | 2 MiB page */

/* Map [start, end) above 4 GiB, write-back. pds_high is one flat array of
 * PD entries, so consecutive 2 MiB pages are consecutive entries. */
static void map_high(u64 start, u64 end)
{
	u64 limit = (u64)MAX_MAPPED_GIB * GiB;

	if (start < 4 * GiB)
		start = 4 * GiB;
	if (end > limit) {
		bi.unmapped_ram = 1;
		end = limit;
	}
	start &= ~(2 * MiB - 1);
	if (start >= end)
		return;
	u64 *pte = &pds_high[0][0] + ((start - 4 * GiB) >> 21);
	u64 n = (end - start + 2 * MiB - 1) >> 21;
#pragma GCC unroll 8
	for (u64 i = 0; i < n; i++)
		pte[i] = (start + (i << 21)) | PTE_2M_WB;
	for (u64 g = start >> 30; g <= (end - 1) >> 30; g++)
		pdpt[g] = (u64)pds_high[g - 4] | PTE_TABLE;
}

static void setup_paging(void)
{
	u64 cr4;

	for (u32 i = 0; i < bi.nr_ranges; i++) {
		u32 t = bi.ram[i].type;
		if ((t == MEM_RAM || t == MEM_ACPI || t == MEM_NVS) && bi.ram[i].end > 4 * GiB)
			map_high(bi.ram[i].start, bi.ram[i].end);
	}

	/* Kernel and user share every page: SMEP/SMAP would fault ring 0. */
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	if (cr4 & ((1UL << 20) | (1UL << 21))) {
		cr4 &= ~((1UL << 20) | (1UL << 21));
		__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
	}
	__asm__ volatile("mov %0, %%cr3" ::"r"((u64)pml4) : "memory");
}

/* ---------------------------------------------------------- boot info */

static void add_range(u64 start, u64 size, u32 type)
{
	if (size == 0 || bi.nr_ranges >= MAX_MEM_RANGES)
		return;
	bi.ram[bi.nr_ranges].start = start;
	bi.ram[bi.nr_ranges].end = start + size;
	bi.ram[bi.nr_ranges].type = type;
	bi.nr_ranges++;
}

/* struct boot_params (Linux zero page): the fields we read. */
#define BP_ACPI_RSDP 0x070     /* u64 acpi_rsdp_addr */
#define BP_EXT_CMDLINE 0x0c8   /* u32 ext_cmd_line_ptr (high 32 bits) */
#define BP_E820_ENTRIES 0x1e8  /* u8 */
#define BP_CMDLINE 0x228       /* u32 hdr.cmd_line_ptr */
#define BP_E820_TABLE 0x2d0    /* 128 x {u64 addr, u64 size, u32 type} */

static void read_boot_params(const u8 *bp)
{
	u32 n = bp[BP_E820_ENTRIES];

	if (n > 128)
		n = 128;
	for (u32 i = 0; i < n; i++) {
		const u8 *e = bp + BP_E820_TABLE + 20 * i;
		add_range(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
	}
	bi.cmdline = *(const u32 *)(bp + BP_CMDLINE) |
		     ((u64) * (const u32 *)(bp + BP_EXT_CMDLINE) << 32);
	bi.rsdp = *(const u64 *)(bp + BP_ACPI_RSDP);
}

/* struct hvm_start_info (PVH). */
struct hvm_start_info {
	u32 magic; /* 0x336ec578 */
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr; /* version >= 1 */
	u32 memmap_entries;
	u32 reserved;
};
struct hvm_memmap_entry {
	u64 addr, size;
	u32 type, reserved;
};

static void read_pvh(const struct hvm_start_info *si)
{
	if (si->magic != 0x336ec578)
		return; /* no information: the fallback in kernel_main applies */
	bi.cmdline = si->cmdline_paddr;
	bi.rsdp = si->rsdp_paddr;
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_entry *m = (const void *)si->memmap_paddr;
		for (u32 i = 0; i < si->memmap_entries; i++)
			add_range(m[i].addr, m[i].size, m[i].type);
	}
}

/* ---------------------------------------------------------- TSC rate */

static void cpuid(u32 leaf, u32 r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}


/* kvmclock (pvclock) per-vCPU time info, written by the hypervisor. */
static volatile struct {
	u32 version, pad0;
	u64 tsc_timestamp, system_time;
	u32 mul;
	signed char shift;
	u8 flags, pad[2];
} pvti __attribute__((aligned(64)));

/*
 * Ring 0 sees the VMM's CPUID (ring 3 under PVM sees the host's), so the
 * probing happens here; ring 3 does the arithmetic (dirtier.c).
 * kvmclock: enable it just long enough to read mul/shift, then turn it off
 * so the hypervisor stops writing guest memory.
 */
static void probe_tsc(void)
{
	u32 r[4];

	cpuid(0, r);
	if (r[0] >= 0x15) {
		u32 max = r[0];
		cpuid(0x15, r);
		if (r[0] && r[1] && r[2])
			bi.cpuid_tsc_hz = (u64)r[2] * r[1] / r[0];
		else if (max >= 0x16 && (cpuid(0x16, r), r[0]))
			bi.cpuid_tsc_hz = (u64)r[0] * 1000000;
	}
	cpuid(0x40000000, r);
	if (r[1] != 0x4b4d564b || r[2] != 0x564b4d56 || r[3] != 0x4d) /* "KVMKVMKVM" */
		return;
	u32 max = r[0];
	if (!bi.cpuid_tsc_hz && max >= 0x40000010) {
		cpuid(0x40000010, r);
		bi.cpuid_tsc_hz = (u64)r[0] * 1000;
	}
	cpuid(0x40000001, r);
	u32 msr = (r[0] & (1 << 3)) ? 0x4b564d01 : (r[0] & 1) ? 0x12 : 0;
	if (!msr)
		return;
	wrmsr(msr, (u64)&pvti | 1);
	for (int i = 0; i < 100; i++) {
		u32 v = pvti.version;
		if (v && !(v & 1) && pvti.mul) {
			bi.pv_mul = pvti.mul;
			bi.pv_shift = pvti.shift;
			break;
		}
	}
	wrmsr(msr, 0);
}

/* ------------------------------------------------------------- main */

void kernel_main(u32 kind, u64 info)
{
	u64 t0 = rdtsc();

	bi.kind = kind;
	bi.tsc_boot = t0;
	bi.tsc_stage[0] = rdtsc(); /* (stage 0: nothing left to do here) */
	if (kind == BOOT_PVH)
		read_pvh((const void *)info);
	else
		read_boot_params((const void *)info);
	if (bi.nr_ranges == 0)
		add_range(0, 1 * GiB, MEM_RAM); /* no memory map: assume 1 GiB (printed by ring 3) */
	setup_paging();
	bi.tsc_stage[1] = rdtsc();
	setup_gdt();
	bi.tsc_stage[2] = rdtsc();
	setup_idt();
	bi.tsc_stage[3] = rdtsc();
	probe_tsc();
	bi.tsc_stage[4] = rdtsc();
	bi.image_end = (u64)__image_end;
	bi.tsc_user = rdtsc();
	enter_user(user_main, user_stack_top, &bi);
}

/* ------------------------------------------------------ exceptions */

struct frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error, rip, cs, rflags, rsp, ss;
};

static const char *const vec_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF-old", "#TS",
	"#NP", "#SS", "#GP", "#PF", "vec15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
	"vec22", "vec23", "vec24", "vec25", "vec26", "vec27", "#HV", "#VC", "#SX", "vec31",
};

static struct line panic_line;

/* Called by isr_common for every exception not handled elsewhere. */
void exception_panic(struct frame *f) __attribute__((noreturn));
void exception_panic(struct frame *f)
{
	struct line *l = &panic_line;
	u64 cr2;

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	l->n = 0;
	l->kernel = 1;
	ln_str(l, "\nGUEST PANIC exception vector=");
	ln_dec(l, f->vector);
	ln_str(l, " (");
	ln_str(l, f->vector < 32 ? vec_names[f->vector] : "?");
	ln_str(l, ") error=");
	ln_hex(l, f->error);
	ln_str(l, " rip=");
	ln_hex(l, f->rip);
	ln_str(l, " cr2=");
	ln_hex(l, cr2);
	ln_str(l, " cs=");
	ln_hex(l, f->cs);
	ln_str(l, " rflags=");
	ln_hex(l, f->rflags);
	ln_str(l, " rsp=");
	ln_hex(l, f->rsp);
	ln_end(l);
	ln_str(l, "GUEST PANIC regs rax=");
	ln_hex(l, f->rax);
	ln_str(l, " rbx=");
	ln_hex(l, f->rbx);
	ln_str(l, " rcx=");
	ln_hex(l, f->rcx);
	ln_str(l, " rdx=");
	ln_hex(l, f->rdx);
	ln_str(l, " rsi=");
	ln_hex(l, f->rsi);
	ln_str(l, " rdi=");
	ln_hex(l, f->rdi);
	ln_end(l);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---------------------------------------------- system calls (ud_entry) */

long syscall_dispatch(long nr, long a, long b, long c)
{
	(void)c;
	switch (nr) {
	case SYS_WRITE:
		serial_write((const char *)a, (size_t)b);
		return b;
	case SYS_HALT:
		for (;;)
			__asm__ volatile("cli; hlt");
	case SYS_CRASH: {
		/* Zero-limit IDT: the #UD cannot be delivered, nor the #GP/#DF
		 * that follow: triple fault (shutdown). */
		struct desc_ptr none = { 0, 0 };
		__asm__ volatile("lidt %0\n\tud2" ::"m"(none));
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	case SYS_PIO_BENCH: {
		u64 t0, n = (u64)b;
		if (n == 0)
			return 0;
		t0 = rdtsc();
		__asm__ volatile("1: outb %%al, %%dx\n\t"
				 "dec %%rcx\n\t"
				 "jnz 1b"
				 : "+c"(n)
				 : "a"(0), "d"((u16)a)
				 : "memory");
		return (long)(rdtsc() - t0);
	}
	}
	return -1;
}
