/*
 * devices.c - the virtio device checks (ring 3): find the devices among the
 * command line's virtio_mmio.device= entries by their DeviceID, run the
 * checks at boot (BLK/NET/GPU markers) and, from the dirtier, every
 * dev_every passes (DEV markers).
 */
#include "virtio.h"

static struct line out; /* zero: ring-3 console */

static struct {
	const struct config *cfg;
	struct vdev blk, net, gpu;
	int want_blk, want_net, want_gpu;
	struct blk_opts bo;
	struct net_opts no;
} dv;

static const char *const names[] = { "blk", "net", "gpu" };

/* The RAM range (merged with adjacent RAM ranges) containing addr: its end, or 0. */
static u64 ram_end_at(const struct bootinfo *bi, u64 addr)
{
	u64 end = 0;
	for (int grew = 1; grew;) {
		grew = 0;
		for (u32 i = 0; i < bi->nr_ranges; i++) {
			const struct mem_range *r = &bi->ram[i];
			if (r->type != MEM_RAM)
				continue;
			if ((end == 0 && r->start <= addr && addr < r->end) || (end && r->start <= end && r->end > end)) {
				end = r->end;
				grew = 1;
			}
		}
	}
	return end;
}

static void fail_line(const char *prefix, const struct vdev *d)
{
	ln_str(&out, prefix);
	ln_str(&out, d->err[0] ? d->err : "unknown error");
	ln_end(&out);
}

/* Probe every entry (3 register reads each) and bind the first device of each kind. */
static void probe(void)
{
	const struct config *cfg = dv.cfg;
	for (u32 i = 0; i < cfg->nr_virtio; i++) {
		struct vdev p = { .base = cfg->virtio[i].base, .index = i };
		u32 magic = vm_read(&p, VMMIO_MAGIC);
		u32 version = magic == VIRTIO_MMIO_MAGIC ? vm_read(&p, VMMIO_VERSION) : 0;
		u32 id = magic == VIRTIO_MMIO_MAGIC ? vm_read(&p, VMMIO_DEVICE_ID) : 0;
		ln_str(&out, "VIRTIO-MMIO probe dev=");
		ln_dec(&out, i);
		ln_str(&out, " magic=");
		ln_hex(&out, magic);
		ln_str(&out, " version=");
		ln_dec(&out, version);
		ln_str(&out, " device_id=");
		ln_dec(&out, id);
		ln_end(&out);
		p.device_id = id;
		struct vdev *slot = id == VIRTIO_ID_BLK ? &dv.blk : id == VIRTIO_ID_NET ? &dv.net : id == VIRTIO_ID_GPU ? &dv.gpu : NULL;
		if (slot && !slot->base)
			*slot = p;
	}
}

/* "GUEST INFO <what> us=N" since t0 (TSC). */
static void info_us(const char *what, u64 t0)
{
	ln_str(&out, "GUEST INFO ");
	ln_str(&out, what);
	ln_str(&out, " us=");
	ln_dec(&out, (rdtsc() - t0) / (denv.hz / 1000000 ? denv.hz / 1000000 : 1));
	ln_end(&out);
}

static void boot_blk(void)
{
	struct vdev *d = &dv.blk;
	char serial[21];
	if (!d->base || blk_init(d) || blk_get_id(d, serial)) {
		fail_line("BLK FAIL ", d);
		return;
	}
	ln_str(&out, "BLK ID ");
	ln_str(&out, serial);
	ln_end(&out);
	if (blk_write_pattern(d, &dv.bo) || blk_verify(d, &dv.bo)) {
		fail_line("BLK FAIL ", d);
		return;
	}
	ln_str(&out, "BLK OK sectors=");
	ln_dec(&out, dv.bo.sectors);
	ln_end(&out);
}

int net_link(struct vdev *d);

static void boot_net(void)
{
	struct vdev *d = &dv.net;
	if (!d->base || net_init(d, &dv.no)) {
		fail_line("NET FAIL ", d);
		return;
	}
	const u8 *mac = net_mac();
	int link = net_link(d);
	ln_str(&out, "GUEST INFO net mac=");
	for (int i = 0; i < 6; i++) {
		ln_mem(&out, &"0123456789abcdef"[mac[i] >> 4], 1);
		ln_mem(&out, &"0123456789abcdef"[mac[i] & 15], 1);
		if (i < 5)
			ln_str(&out, ":");
	}
	ln_str(&out, " mrg_rxbuf=");
	ln_dec(&out, (d->features >> 15) & 1);
	ln_str(&out, " link=");
	ln_str(&out, link < 0 ? "unknown" : link ? "up" : "down");
	ln_end(&out);
	if (dv.cfg->net_test == 2) {
		/* The echo peer of another VM: answer forever. */
		u64 echoed = 0;
		ln_str(&out, "NET RESPONDER READY");
		ln_end(&out);
		net_respond(d, &echoed);
		fail_line("NET FAIL ", d);
		return;
	}
	if (net_echo(d, &dv.no, dv.no.frames)) {
		fail_line("NET FAIL ", d);
		return;
	}
	ln_str(&out, "NET OK frames=");
	ln_dec(&out, dv.no.frames);
	ln_end(&out);
	ln_str(&out, "GUEST INFO net max_num_buffers=");
	ln_dec(&out, net_max_buffers());
	ln_end(&out);
	ln_str(&out, "GUEST INFO net retransmits=");
	ln_dec(&out, net_retransmits());
	ln_end(&out);
}

static void say_info(const char *s)
{
	ln_str(&out, s);
	ln_end(&out);
}

static void boot_gpu(void)
{
	struct vdev *d = &dv.gpu;
	u32 w, h;
	if (!d->base || gpu_init(d) || gpu_draw(d, &w, &h)) {
		fail_line("GPU FAIL ", d);
		return;
	}
	if (gpu_used_default_mode())
		say_info("GUEST INFO gpu scanout 0 reports no mode: using 1024x768");
	ln_str(&out, "GPU OK ");
	ln_dec(&out, w);
	ln_str(&out, "x");
	ln_dec(&out, h);
	ln_end(&out);
}

static void bad(const char *msg)
{
	guest_fatal(msg);
}

void devices_boot(const struct bootinfo *bi, const struct config *cfg)
{
	const char *src;
	dv.cfg = cfg;
	dv.want_blk = cfg->blk_test != 0;
	dv.want_net = cfg->net_test != 0;
	dv.want_gpu = cfg->gpu_test != 0;
	if (!dv.want_blk && !dv.want_net && !dv.want_gpu)
		return;
	dv.bo = (struct blk_opts){ cfg->blk_start, cfg->blk_sectors, cfg->blk_seed, 0 };
	dv.no = (struct net_opts){ cfg->net_frames, cfg->net_size, (int)cfg->net_mrg, cfg->net_rxbuf };
	memcpy(dv.blk.err, "no virtio-blk device (device id 2)", 35);
	memcpy(dv.net.err, "no virtio-net device (device id 1)", 35);
	memcpy(dv.gpu.err, "no virtio-gpu device (device id 16)", 36);

	denv.hz = tsc_hz_estimate(bi, &src);
	denv.timeout = denv.hz / 1000 * cfg->dev_timeout_ms;

	/* The DMA area: page-aligned, in RAM, above the image, below 4 GiB
	 * (the devices see physical addresses; the image's map is identity),
	 * and clear of the dirtier's range when the dirtier runs. */
	u64 a = (cfg->dev_mem + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	u64 e = (cfg->dev_mem + cfg->dev_mem_size) & ~(PAGE_SIZE - 1);
	if (e <= a || a < bi->image_end)
		bad("devices: dev_mem must lie above the guest image and dev_mem_size be > 0");
	u64 re = ram_end_at(bi, a);
	if (!re || e > re || e > (u64)MAX_MAPPED_GIB * GiB)
		bad("devices: dev_mem..dev_mem+dev_mem_size is not inside RAM");
	if (cfg->workload == WL_DIRTIER || cfg->workload == WL_SUSPEND) {
		u64 ds = cfg->dirty_start ? cfg->dirty_start : 16 * MiB;
		u64 de = cfg->dirty_end ? cfg->dirty_end : ds + 64 * MiB;
		if (a < de && ds < e)
			bad("devices: dev_mem overlaps the dirtier's range");
	}
	denv.dma_next = a;
	denv.dma_end = e;

	probe();
	dv.blk.err[0] = dv.blk.base ? 0 : dv.blk.err[0];
	dv.net.err[0] = dv.net.base ? 0 : dv.net.err[0];
	dv.gpu.err[0] = dv.gpu.base ? 0 : dv.gpu.err[0];
	u64 t0 = rdtsc();
	if (dv.want_blk) {
		boot_blk();
		info_us("blk_test", t0);
		t0 = rdtsc();
	}
	if (dv.want_net) {
		boot_net();
		info_us("net_test", t0);
		t0 = rdtsc();
	}
	if (dv.want_gpu) {
		boot_gpu();
		info_us("gpu_test", t0);
	}
}

/* One periodic pass: blk re-read/verify, one net echo, gpu transfer+flush.
 * A device that failed once stays failed (it was reset) and is reported in
 * every later pass. */
void devices_periodic(u64 pass)
{
	struct vdev *devs[3] = { &dv.blk, &dv.net, &dv.gpu };
	int want[3] = { dv.want_blk, dv.want_net, dv.want_gpu };
	struct line *l = &out;
	int failed = 0;

	if (!dv.want_blk && !dv.want_net && !dv.want_gpu)
		return;
	ln_str(l, "DEV FAIL pass=");
	ln_dec(l, pass);
	for (int i = 0; i < 3; i++) {
		struct vdev *d = devs[i];
		int r = -1;
		if (!want[i])
			continue;
		if (d->ready && vdev_check(d) == 0) {
			if (i == 0)
				r = blk_verify(d, &dv.bo);
			else if (i == 1)
				r = net_echo(d, &dv.no, 1);
			else
				r = gpu_reflush(d);
		}
		if (r) {
			ln_str(l, failed ? "; " : " ");
			ln_str(l, names[i]);
			ln_str(l, ": ");
			ln_str(l, d->err[0] ? d->err : "not ready");
			failed = 1;
		}
	}
	if (!failed) {
		l->n = 0;
		ln_str(l, "DEV OK pass=");
		ln_dec(l, pass);
	}
	ln_end(l);
}
