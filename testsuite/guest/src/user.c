/*
 * user.c - ring-3 main: READY marker, command line, virtio-mmio table,
 * workload dispatch, ACPI power-off. Runs natively under PVM; its port I/O
 * traps to the kernel's #GP handler, its privileged requests are system calls (a marked UD2, see entry.S).
 */
#include "virtio.h"

static struct config cfg;
static char cmdline[4096];
static struct line out; /* zero: ring-3 console */

long sys3(long nr, long a, long b, long c)
{
	/* Marked UD2: see ud_entry in entry.S. */
	__asm__ volatile("ud2\n\t.ascii \"SY\"" : "+a"(nr) : "D"(a), "S"(b), "d"(c) : "memory");
	return nr;
}

void console_write(const char *s, size_t n)
{
	if (cfg.console_pio)
		serial_write(s, n); /* every in/out traps (#GP) and is emulated */
	else
		sys3(SYS_WRITE, (long)s, (long)n, 0);
}

static void say(const char *s)
{
	ln_str(&out, s);
	ln_end(&out);
}

void guest_fatal(const char *msg)
{
	ln_str(&out, "GUEST PANIC ");
	ln_str(&out, msg);
	ln_end(&out);
	sys3(SYS_HALT, 0, 0, 0);
	for (;;)
		;
}

/* -------------------------------------------------------- ACPI S5 */

static u8 checksum(const u8 *p, size_t n)
{
	u8 s = 0;
	while (n--)
		s += *p++;
	return s;
}

static const u8 *find_rsdp(const struct bootinfo *bi)
{
	if (bi->rsdp)
		return (const u8 *)bi->rsdp;
	/* Legacy BIOS area, 16-byte aligned (qboot and SeaBIOS put it there). */
	for (u64 a = 0xe0000; a < 0x100000; a += 16) {
		const u8 *p = (const u8 *)a;
		if (*(const u64 *)p == 0x2052545020445352UL /* "RSD PTR " */ && checksum(p, 20) == 0)
			return p;
	}
	return NULL;
}

static const u8 *find_fadt(const struct bootinfo *bi)
{
	const u8 *rsdp = find_rsdp(bi);
	if (!rsdp)
		return NULL;
	int x = rsdp[15] >= 2 && *(const u64 *)(rsdp + 24);
	const u8 *sdt = x ? (const u8 *)*(const u64 *)(rsdp + 24) : (const u8 *)(u64) * (const u32 *)(rsdp + 16);
	if (!sdt)
		return NULL;
	u32 len = *(const u32 *)(sdt + 4), step = x ? 8 : 4;
	for (u32 off = 36; off + step <= len; off += step) {
		const u8 *t = x ? (const u8 *)*(const u64 *)(sdt + off) : (const u8 *)(u64) * (const u32 *)(sdt + off);
		if (t && *(const u32 *)t == 0x50434146 /* "FACP" */)
			return t;
	}
	return NULL;
}

/* Power off through the FADT: PM1a_CNT_BLK if it has one (SLP_TYP 0, as
 * QEMU's \_S5), else the hardware-reduced SLEEP_CONTROL_REG (QEMU microvm's
 * GED: SLP_TYP 5). Returns if nothing worked. */
static void acpi_poweroff(const struct bootinfo *bi)
{
	const u8 *f = find_fadt(bi);
	if (!f)
		return;
	u32 len = *(const u32 *)(f + 4);
	u32 pm1a = *(const u32 *)(f + 64);
	if (pm1a && pm1a < 0x10000) {
		outw((u16)pm1a, 0x2000);
		return;
	}
	if (len >= 256 && f[244] == 0 /* system memory */) {
		u64 addr = *(const u64 *)(f + 248);
		if (addr)
			*(volatile u8 *)addr = (5 << 2) | (1 << 5); /* SLP_TYP=5, SLP_EN */
	}
}

/* ------------------------------------------------------------- main */

static u64 cycles_to_us(u64 cycles, u64 hz) { return hz ? cycles / (hz / 1000000 ? hz / 1000000 : 1) : 0; }

void user_main(struct bootinfo *bi)
{
	const char *src;
	size_t n = 0;

	if (bi->cmdline) {
		const char *c = (const char *)bi->cmdline;
		while (c[n] && n < sizeof(cmdline) - 1) {
			cmdline[n] = c[n];
			n++;
		}
	}
	while (n && (cmdline[n - 1] == ' ' || cmdline[n - 1] == '\n' || cmdline[n - 1] == '\t'))
		n--;
	cmdline[n] = 0;
	parse_cmdline(cmdline, &cfg);

	/* Exercise the #GP port-I/O path once per boot, whatever the console:
	 * a broken path panics (or hangs) here, before READY. */
	(void)inb(0x3fd);

	ln_str(&out, "WASMVMM-GUEST READY cmdline=");
	ln_str(&out, cmdline);
	ln_end(&out);

	u64 hz = tsc_hz_estimate(bi, &src);
	ln_str(&out, "GUEST INFO entry=");
	ln_str(&out, bi->kind == BOOT_PVH ? "pvh" : "linux64");
	ln_str(&out, " tsc_hz=");
	ln_dec(&out, hz);
	ln_str(&out, " tsc_source=");
	ln_str(&out, src);
	ln_str(&out, " ring0_us=");
	ln_dec(&out, cycles_to_us(bi->tsc_user - bi->tsc_boot, hz));
	ln_str(&out, " console=");
	ln_str(&out, cfg.console_pio ? "pio" : "syscall");
	ln_end(&out);
	ln_str(&out, "GUEST INFO ring0_us bss=");
	ln_dec(&out, cycles_to_us(bi->tsc_stage[0] - bi->tsc_boot, hz));
	ln_str(&out, " paging=");
	ln_dec(&out, cycles_to_us(bi->tsc_stage[1] - bi->tsc_stage[0], hz));
	ln_str(&out, " gdt=");
	ln_dec(&out, cycles_to_us(bi->tsc_stage[2] - bi->tsc_stage[1], hz));
	ln_str(&out, " idt=");
	ln_dec(&out, cycles_to_us(bi->tsc_stage[3] - bi->tsc_stage[2], hz));
	ln_str(&out, " tsc=");
	ln_dec(&out, cycles_to_us(bi->tsc_stage[4] - bi->tsc_stage[3], hz));
	ln_end(&out);
	ln_str(&out, "GUEST INFO memmap");
	for (u32 i = 0; i < bi->nr_ranges; i++) {
		ln_str(&out, " ");
		ln_hex(&out, bi->ram[i].start);
		ln_str(&out, "-");
		ln_hex(&out, bi->ram[i].end);
		ln_str(&out, ":");
		ln_dec(&out, bi->ram[i].type);
	}
	ln_end(&out);
	if (bi->unmapped_ram)
		say("GUEST INFO RAM above 64 GiB is not mapped");
	if (cfg.error) {
		ln_str(&out, "GUEST PANIC bad command line: ");
		ln_str(&out, cfg.error);
		ln_str(&out, ": ");
		ln_str(&out, cfg.bad);
		ln_end(&out);
		sys3(SYS_HALT, 0, 0, 0);
	}

	ln_str(&out, "VIRTIO-MMIO count=");
	ln_dec(&out, cfg.nr_virtio);
	ln_end(&out);
	for (u32 i = 0; i < cfg.nr_virtio; i++) {
		ln_str(&out, "VIRTIO-MMIO dev=");
		ln_dec(&out, i);
		ln_str(&out, " base=");
		ln_hex(&out, cfg.virtio[i].base);
		ln_str(&out, " size=");
		ln_hex(&out, cfg.virtio[i].size);
		ln_str(&out, " irq=");
		ln_dec(&out, cfg.virtio[i].irq);
		ln_end(&out);
	}

	devices_boot(bi, &cfg); /* nothing unless blk_test/net_test/gpu_test */

	switch (cfg.workload) {
	case WL_IDLE:
		say("GUEST IDLE");
		sys3(SYS_HALT, 0, 0, 0);
		break;
	case WL_CRASH:
		say("GUEST CRASH");
		sys3(SYS_CRASH, 0, 0, 0);
		break;
	case WL_SHUTDOWN:
		say("GUEST SHUTDOWN");
		outw(0x604, 0x2000); /* PM1a_CNT: SLP_EN | SLP_TYP=0 (S5) */
		acpi_poweroff(bi);   /* e.g. QEMU microvm: no port 0x604, GED instead */
		say("GUEST SHUTDOWN FAILED");
		sys3(SYS_HALT, 0, 0, 0);
		break;
	case WL_PIO_BENCH: {
		ln_str(&out, "PIO-BENCH start port=");
		ln_hex(&out, cfg.pio_port);
		ln_str(&out, " n=");
		ln_dec(&out, cfg.pio_count);
		ln_end(&out);
		u64 t = (u64)sys3(SYS_PIO_BENCH, (long)cfg.pio_port, (long)cfg.pio_count, 0);
		ln_str(&out, "PIO-BENCH done n=");
		ln_dec(&out, cfg.pio_count);
		ln_str(&out, " tsc=");
		ln_dec(&out, t);
		ln_end(&out);
		if (cfg.pio_count && hz) {
			ln_str(&out, "GUEST INFO pio-bench ns_per_out=");
			ln_dec(&out, t / cfg.pio_count * 1000000000UL / hz);
			ln_end(&out);
		}
		sys3(SYS_HALT, 0, 0, 0);
		break;
	}
	case WL_FAULT:
		/* An unmapped address (PML4 entry 1 is empty): #PF from ring 3,
		 * reported by the kernel as GUEST PANIC. */
		say("GUEST FAULT");
		(void)*(volatile u8 *)(512 * GiB);
		break;
	case WL_SUSPEND:
		run_dirtier(bi, &cfg, 1);
	case WL_DIRTIER:
		run_dirtier(bi, &cfg, 0);
	}
	sys3(SYS_HALT, 0, 0, 0);
	for (;;)
		;
}
