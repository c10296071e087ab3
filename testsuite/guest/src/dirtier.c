/*
 * dirtier.c - the memory dirtier workload (ring 3), in the spirit of QEMU's
 * migration-test guest.
 *
 * Pattern (checked page by page by the host after a migration):
 *   - at start the first byte of every 4 KiB page in [start, end) is set to 0;
 *   - pass N (N = 1, 2, ...) increments that byte on every page, in ascending
 *     order, so after pass N every page holds N mod 256, and during pass N
 *     the pages before the current one hold N and the rest N-1 (mod 256);
 *   - after every marker_every-th pass: "DIRTY pass=<N>".
 * With dirty_rate_mb > 0 the loop is paced with RDTSC (native in ring 3).
 */
#include "virtio.h"

static struct line out; /* zero: ring-3 console */

/*
 * TSC frequency, best source first:
 *   kvmclock  - exact: the hypervisor's own tsc_to_system_mul/shift, read by
 *               the kernel (ring 0 sees the VMM's CPUID; works under PVM and
 *               any KVM VMM that exposes the KVM leaves);
 *   cpuid     - leaf 0x15 (crystal ratio), 0x16 (base MHz) or 0x40000010;
 *   guess     - 2 GHz, when nothing else is available.
 * kvmclock: ns = ((tsc << shift) * mul) >> 32 (shift may be negative), so
 * Hz = 1e9 * 2^32 / mul / 2^shift.
 */
u64 tsc_hz_estimate(const struct bootinfo *bi, const char **source)
{
	if (bi->pv_mul) {
		u64 hz = (1000000000UL << 32) / bi->pv_mul;
		if (bi->pv_shift < 0)
			hz <<= -bi->pv_shift;
		else
			hz >>= bi->pv_shift;
		*source = "kvmclock";
		return hz;
	}
	if (bi->cpuid_tsc_hz) {
		*source = "cpuid";
		return bi->cpuid_tsc_hz;
	}
	*source = "guess";
	return 2000000000UL;
}

/* The RAM range containing addr, merged with adjacent RAM ranges; 0 if none. */
static u64 ram_end_from(const struct bootinfo *bi, u64 addr)
{
	u64 end = 0;
	int grew = 1;

	while (grew) {
		grew = 0;
		for (u32 i = 0; i < bi->nr_ranges; i++) {
			const struct mem_range *r = &bi->ram[i];
			if (r->type != MEM_RAM)
				continue;
			if ((end == 0 && r->start <= addr && addr < r->end) ||
			    (end != 0 && r->start <= end && r->end > end)) {
				end = r->end;
				grew = 1;
			}
		}
	}
	return end;
}

static void suspend_now(void)
{
	out.n = 0;
	ln_str(&out, "GUEST SUSPEND");
	ln_end(&out);
	outw(0x604, (1 << 10) | 0x2000); /* PM1a_CNT: SLP_TYP=1 (S3) | SLP_EN */
	ln_str(&out, "GUEST RESUMED");
	ln_end(&out);
}

static void marker(u64 pass)
{
	ln_str(&out, "DIRTY pass=");
	ln_dec(&out, pass);
	ln_end(&out);
}

void run_dirtier(const struct bootinfo *bi, const struct config *cfg, int suspend)
{
	u64 start = cfg->dirty_start ? cfg->dirty_start : 16 * MiB;
	u64 ram_end = ram_end_from(bi, start);
	u64 end = cfg->dirty_end;

	start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	if (!end) {
		end = start + 64 * MiB;
		if (ram_end && ram_end < end)
			end = ram_end;
	}
	end &= ~(PAGE_SIZE - 1);
	if (end <= start)
		guest_fatal("dirtier: empty range (dirty_end <= dirty_start)");
	if (start < bi->image_end)
		guest_fatal("dirtier: range overlaps the guest image (dirty_start too low)");
	if (!ram_end || end > ram_end)
		guest_fatal("dirtier: range is not inside RAM");
	if (end > (u64)MAX_MAPPED_GIB * GiB)
		guest_fatal("dirtier: range above the mapped 64 GiB");

	u64 pages = (end - start) / PAGE_SIZE;
	for (u64 p = start; p < end; p += PAGE_SIZE)
		*(volatile u8 *)p = 0;
	ln_str(&out, "DIRTIER start=");
	ln_hex(&out, start);
	ln_str(&out, " end=");
	ln_hex(&out, end);
	ln_str(&out, " pages=");
	ln_dec(&out, pages);
	ln_end(&out);

	const char *src;
	u64 hz = tsc_hz_estimate(bi, &src);
	/* TSC cycles per page at the requested rate (pages/s = MiB/s * 256). */
	u64 per_page = cfg->dirty_rate_mb ? hz / (cfg->dirty_rate_mb * 256) : 0;
	u64 next = rdtsc();
	u64 every = cfg->marker_every;

	for (u64 pass = 1;; pass++) {
		if (!per_page) {
			for (u64 p = start; p < end; p += PAGE_SIZE)
				(*(volatile u8 *)p)++;
		} else {
			for (u64 p = start; p < end; p += PAGE_SIZE) {
				u64 now;
				(*(volatile u8 *)p)++;
				next += per_page;
				while ((now = rdtsc()) < next)
					cpu_relax();
				/* After a stall (VM paused, migration downtime) do
				 * not burst to catch up: restart the schedule. */
				if (now - next > hz / 10)
					next = now;
			}
		}
		if (pass % every == 0)
			marker(pass);
		if (cfg->dev_every && pass % cfg->dev_every == 0)
			devices_periodic(pass);
		if (suspend && pass == 1)
			suspend_now();
	}
}
