/*
 * vgpu.c - virtio-gpu 2D driver and the test card (ring 3).
 *
 * GET_DISPLAY_INFO, RESOURCE_CREATE_2D (B8G8R8X8_UNORM) of scanout 0's size,
 * RESOURCE_ATTACH_BACKING (the pixel buffer in the DMA area, in 1 MiB
 * entries), draw the test card, TRANSFER_TO_HOST_2D, SET_SCANOUT 0,
 * RESOURCE_FLUSH. Test card for a W x H resource: pixel (x, y) has
 *   r = x*255/(W-1), g = y*255/(H-1), b = 255 if (x/32 + y/32) is odd else 0
 * stored as bytes B, G, R, 0.
 */
#include "virtio.h"

#define CMD_GET_DISPLAY_INFO 0x0100
#define CMD_RESOURCE_CREATE_2D 0x0101
#define CMD_SET_SCANOUT 0x0103
#define CMD_RESOURCE_FLUSH 0x0104
#define CMD_TRANSFER_TO_HOST_2D 0x0105
#define CMD_RESOURCE_ATTACH_BACKING 0x0106
#define RESP_OK_NODATA 0x1100
#define RESP_OK_DISPLAY_INFO 0x1101

#define FORMAT_B8G8R8X8_UNORM 2
#define MAX_SCANOUTS 16
#define RESOURCE_ID 1
#define BACKING_ENTRY (1 * MiB)
#define MAX_ENTRIES 64
#define DEFAULT_W 1024 /* when scanout 0 reports no mode */
#define DEFAULT_H 768

struct gpu_hdr {
	u32 type, flags;
	u64 fence_id;
	u32 ctx_id;
	u8 ring_idx, padding[3];
};

struct gpu_rect {
	u32 x, y, width, height;
};

struct gpu_display_info {
	struct gpu_hdr hdr;
	struct {
		struct gpu_rect r;
		u32 enabled, flags;
	} pmodes[MAX_SCANOUTS];
};

struct gpu_create_2d {
	struct gpu_hdr hdr;
	u32 resource_id, format, width, height;
};

struct gpu_mem_entry {
	u64 addr;
	u32 length, padding;
};

struct gpu_attach_backing {
	struct gpu_hdr hdr;
	u32 resource_id, nr_entries;
	struct gpu_mem_entry entries[MAX_ENTRIES];
};

struct gpu_set_scanout {
	struct gpu_hdr hdr;
	struct gpu_rect r;
	u32 scanout_id, resource_id;
};

struct gpu_flush {
	struct gpu_hdr hdr;
	struct gpu_rect r;
	u32 resource_id, padding;
};

struct gpu_transfer {
	struct gpu_hdr hdr;
	struct gpu_rect r;
	u64 offset;
	u32 resource_id, padding;
};

static struct {
	struct vq ctrl, cursor;
	u8 *cmd;  /* request page(s) */
	u8 *resp; /* response page */
	u32 *fb;
	u32 w, h;
	int created;
	int fallback; /* scanout 0 reported no mode: DEFAULT_W x DEFAULT_H */
} gpu;

int gpu_used_default_mode(void) { return gpu.fallback; }

int gpu_init(struct vdev *d)
{
	if (vdev_begin(d, 0)) /* 2D only: no VIRGL, no EDID */
		return -1;
	if (!(gpu.cmd = dma_alloc(d, 2 * PAGE_SIZE)) || !(gpu.resp = dma_alloc(d, PAGE_SIZE)))
		return -1;
	if (vdev_setup_queue(d, &gpu.ctrl, 0, 16) || vdev_setup_queue(d, &gpu.cursor, 1, 16))
		return -1;
	return vdev_driver_ok(d);
}

/* Send the request in gpu.cmd (len bytes), wait, check the response type. */
static int gpu_cmd(struct vdev *d, u32 type, u32 len, u32 resp_len, u32 want)
{
	struct gpu_hdr *h = (struct gpu_hdr *)gpu.cmd;
	struct gpu_hdr *r = (struct gpu_hdr *)gpu.resp;
	memset(h, 0, sizeof(*h));
	h->type = type;
	memset(r, 0, resp_len);
	struct vbuf b[2] = { { gpu.cmd, len, 0 }, { gpu.resp, resp_len, 1 } };
	if (vq_exec(d, &gpu.ctrl, b, 2, NULL))
		return -1;
	if (r->type != want) {
		struct line l;
		l.n = 0;
		ln_str(&l, "command ");
		ln_hex(&l, type);
		ln_str(&l, " response");
		l.buf[l.n] = 0;
		return vdev_fail(d, l.buf, r->type);
	}
	return 0;
}

static void draw(u32 *fb, u32 w, u32 h)
{
	for (u32 y = 0; y < h; y++) {
		u32 g = h > 1 ? y * 255 / (h - 1) : 0;
		u32 *row = fb + (u64)y * w;
		for (u32 x = 0; x < w; x++) {
			u32 r = w > 1 ? x * 255 / (w - 1) : 0;
			u32 b = ((x / 32 + y / 32) & 1) ? 255 : 0;
			row[x] = b | g << 8 | r << 16; /* bytes B, G, R, X=0 */
		}
	}
}

static int transfer_flush(struct vdev *d)
{
	struct gpu_transfer *t = (struct gpu_transfer *)gpu.cmd;
	memset(t, 0, sizeof(*t));
	t->r = (struct gpu_rect){ 0, 0, gpu.w, gpu.h };
	t->offset = 0;
	t->resource_id = RESOURCE_ID;
	if (gpu_cmd(d, CMD_TRANSFER_TO_HOST_2D, sizeof(*t), sizeof(struct gpu_hdr), RESP_OK_NODATA))
		return -1;
	return 0;
}

static int flush(struct vdev *d)
{
	struct gpu_flush *f = (struct gpu_flush *)gpu.cmd;
	memset(f, 0, sizeof(*f));
	f->r = (struct gpu_rect){ 0, 0, gpu.w, gpu.h };
	f->resource_id = RESOURCE_ID;
	return gpu_cmd(d, CMD_RESOURCE_FLUSH, sizeof(*f), sizeof(struct gpu_hdr), RESP_OK_NODATA);
}

int gpu_draw(struct vdev *d, u32 *wp, u32 *hp)
{
	struct gpu_display_info *di = (struct gpu_display_info *)gpu.resp;
	if (gpu_cmd(d, CMD_GET_DISPLAY_INFO, sizeof(struct gpu_hdr), sizeof(*di), RESP_OK_DISPLAY_INFO))
		return -1;
	gpu.w = di->pmodes[0].r.width;
	gpu.h = di->pmodes[0].r.height;
	if (!di->pmodes[0].enabled || !gpu.w || !gpu.h) {
		gpu.w = DEFAULT_W;
		gpu.h = DEFAULT_H;
		gpu.fallback = 1;
	}
	if (gpu.w > 16384 || gpu.h > 16384)
		return vdev_fail(d, "scanout 0 too large: width", gpu.w);
	u64 bytes = (u64)gpu.w * gpu.h * 4;
	if ((bytes + BACKING_ENTRY - 1) / BACKING_ENTRY > MAX_ENTRIES)
		return vdev_fail(d, "framebuffer too large: bytes", bytes);
	if (!(gpu.fb = dma_alloc(d, bytes)))
		return -1;

	struct gpu_create_2d *c = (struct gpu_create_2d *)gpu.cmd;
	memset(c, 0, sizeof(*c));
	c->resource_id = RESOURCE_ID;
	c->format = FORMAT_B8G8R8X8_UNORM;
	c->width = gpu.w;
	c->height = gpu.h;
	if (gpu_cmd(d, CMD_RESOURCE_CREATE_2D, sizeof(*c), sizeof(struct gpu_hdr), RESP_OK_NODATA))
		return -1;
	gpu.created = 1;

	struct gpu_attach_backing *a = (struct gpu_attach_backing *)gpu.cmd;
	memset(a, 0, sizeof(*a));
	a->resource_id = RESOURCE_ID;
	for (u64 off = 0; off < bytes; off += BACKING_ENTRY) {
		struct gpu_mem_entry *e = &a->entries[a->nr_entries++];
		e->addr = (u64)gpu.fb + off;
		e->length = (u32)(bytes - off < BACKING_ENTRY ? bytes - off : BACKING_ENTRY);
	}
	u32 len = (u32)(sizeof(struct gpu_hdr) + 8 + a->nr_entries * sizeof(struct gpu_mem_entry));
	if (gpu_cmd(d, CMD_RESOURCE_ATTACH_BACKING, len, sizeof(struct gpu_hdr), RESP_OK_NODATA))
		return -1;

	draw(gpu.fb, gpu.w, gpu.h);
	if (transfer_flush(d))
		return -1;

	struct gpu_set_scanout *s = (struct gpu_set_scanout *)gpu.cmd;
	memset(s, 0, sizeof(*s));
	s->r = (struct gpu_rect){ 0, 0, gpu.w, gpu.h };
	s->scanout_id = 0;
	s->resource_id = RESOURCE_ID;
	if (gpu_cmd(d, CMD_SET_SCANOUT, sizeof(*s), sizeof(struct gpu_hdr), RESP_OK_NODATA))
		return -1;
	if (flush(d))
		return -1;
	*wp = gpu.w;
	*hp = gpu.h;
	return 0;
}

/* Periodic check: transfer the (unchanged) backing again and flush. */
int gpu_reflush(struct vdev *d)
{
	if (!gpu.created)
		return vdev_fail(d, "no resource", ~0UL);
	if (transfer_flush(d))
		return -1;
	return flush(d);
}
