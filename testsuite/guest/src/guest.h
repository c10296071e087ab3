/*
 * guest.h - shared declarations of the wasmvmm test guest.
 *
 * The guest has two halves in one image:
 *   - a tiny ring-0 kernel (entry.S, kernel.c): boot, paging, GDT/TSS/IDT,
 *     exception reporting, port-I/O emulation for ring 3, a few syscall
 *     services. Ring 0 is emulated instruction by instruction under PVM,
 *     so it does as little as possible.
 *   - ring-3 code (user.c, cmdline.c, dirtier.c): command line, markers and
 *     every workload. Ring 3 runs natively.
 * serial.c is used by both: in ring 3 its in/out instructions trap (#GP)
 * and are performed by the kernel's #GP handler.
 */
#ifndef GUEST_H
#define GUEST_H

/* Constants first: entry.S includes this file too. */
#define KiB 1024UL
#define MiB (1024UL * KiB)
#define GiB (1024UL * MiB)
#define PAGE_SIZE 4096UL

/* GDT selectors (see gdt[] in kernel.c). */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x1b /* 0x18 | RPL 3 */
#define SEL_UCODE 0x23 /* 0x20 | RPL 3 */
#define SEL_TSS 0x28

/* System calls: a marked UD2 (entry.S); rax = number, rdi/rsi/rdx = arguments, rax = result. */
#define SYS_WRITE 0     /* (buf, len): write bytes to the serial port */
#define SYS_HALT 1      /* (): hlt forever with interrupts off */
#define SYS_CRASH 2     /* (): zero-limit IDT + ud2 = triple fault */
#define SYS_PIO_BENCH 3 /* (port, count): count x outb from ring 0, returns TSC cycles */

/* How the kernel was entered. */
#define BOOT_LINUX64 1 /* 64-bit Linux boot protocol, RSI = boot_params */
#define BOOT_PVH 2     /* PVH 32-bit entry, EBX = hvm_start_info */

/* Memory map entry types (E820 numbering; PVH uses the same values). */
#define MEM_RAM 1
#define MEM_RESERVED 2
#define MEM_ACPI 3
#define MEM_NVS 4

#define MAX_MEM_RANGES 64
#define MAX_MAPPED_GIB 64 /* page tables cover physical [0, 64 GiB) */

#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;
#define NULL ((void *)0)

struct mem_range {
	u64 start, end; /* [start, end) */
	u32 type;
};

/* What the kernel hands to ring 3 (lives in kernel .bss, user-readable). */
struct bootinfo {
	u32 kind;           /* BOOT_LINUX64 or BOOT_PVH */
	u32 nr_ranges;      /* entries in ram[] */
	u64 cmdline;        /* physical address of the NUL-terminated command line, 0 if none */
	u64 rsdp;           /* ACPI RSDP physical address if the loader gave one, else 0 */
	u64 image_end;      /* first byte after the guest image (stacks, page tables included) */
	u64 tsc_boot;       /* TSC at the first kernel C instruction */
	u64 tsc_user;       /* TSC just before entering ring 3 */
	u64 tsc_stage[5];   /* TSC after: bss clear, paging, GDT, IDT, TSC probe */
	u32 pv_mul;         /* kvmclock tsc_to_system_mul (0: no kvmclock) */
	i64 pv_shift;       /* kvmclock tsc_shift */
	u64 cpuid_tsc_hz;   /* TSC Hz from CPUID 0x15/0x16/0x40000010 (0: unknown) */
	u32 unmapped_ram;   /* 1 if some RAM lies above MAX_MAPPED_GIB and is not mapped */
	struct mem_range ram[MAX_MEM_RANGES];
};

/* ---- port I/O and CPU helpers (work in ring 0; trap to #GP in ring 3) ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* ---- lib (serial.c) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
size_t strlen(const char *s);

/* 16550 at 0x3f8. serial_write waits for THRE and sends up to 16 bytes per wait. */
void serial_write(const char *s, size_t n);

/* Line builder: collects one output line, then prints it with one write. */
struct line {
	char buf[4352];
	size_t n;
	int kernel; /* 0: print via the ring-3 console, 1: ring-0 direct serial */
};
void ln_str(struct line *l, const char *s);
void ln_mem(struct line *l, const char *s, size_t n);
void ln_dec(struct line *l, u64 v);
void ln_hex(struct line *l, u64 v); /* 0x-prefixed */
void ln_end(struct line *l);        /* append '\n' and print */

/* ---- ring 3 (user.c) ---- */
void user_main(struct bootinfo *bi) __attribute__((noreturn));
void console_write(const char *s, size_t n);
long sys3(long nr, long a, long b, long c);
void guest_fatal(const char *msg) __attribute__((noreturn)); /* "GUEST PANIC <msg>", halt */

/* ---- command line (cmdline.c) ---- */
enum workload { WL_DIRTIER, WL_IDLE, WL_CRASH, WL_PIO_BENCH, WL_SHUTDOWN, WL_SUSPEND, WL_FAULT };

#define MAX_VIRTIO_MMIO 32
struct virtio_mmio_dev {
	u64 base, size;
	u32 irq;
	u32 id; /* optional platform device id (":ID" suffix), else 0 */
};

struct config {
	enum workload workload;
	u64 dirty_start, dirty_end; /* 0: default */
	u64 dirty_rate_mb;          /* MiB/s, 0 = unlimited */
	u64 marker_every;
	u64 pio_port, pio_count;
	u32 console_pio;            /* 1: ring-3 output by trapping in/out (#GP), 0 (default): SYS_WRITE */
	u32 nr_virtio;
	struct virtio_mmio_dev virtio[MAX_VIRTIO_MMIO];
	/* virtio device checks (devices.c, README.md) */
	u64 blk_test, blk_start, blk_sectors, blk_seed;
	u64 net_test, net_frames, net_size, net_mrg, net_rxbuf;
	u64 gpu_test;
	u64 dev_every;              /* dirtier passes between device checks, 0 = never */
	u64 dev_mem, dev_mem_size;  /* the drivers' DMA area */
	u64 dev_timeout_ms;
	const char *error;          /* first parse error, or NULL */
	char bad[64];               /* the offending token */
};
void parse_cmdline(const char *cmdline, struct config *cfg);
int parse_number(const char *s, size_t n, u64 *out); /* 0x.., decimal, K/M/G suffix */

/* ---- dirtier (dirtier.c) ---- */
u64 tsc_hz_estimate(const struct bootinfo *bi, const char **source);
void run_dirtier(const struct bootinfo *bi, const struct config *cfg, int suspend) __attribute__((noreturn));

#endif /* __ASSEMBLER__ */
#endif
