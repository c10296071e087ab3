/*
 * vblk.c - virtio-blk driver and the block check (ring 3).
 *
 * Pattern: byte i (0..511) of sector s is (s*7 + i + seed) & 0xff, written to
 * sectors [start, start+sectors), flushed, read back and compared.
 */
#include "virtio.h"

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512UL
#define BLK_BUF (64 * KiB) /* largest request */

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct {
	struct vq q;
	struct blk_req_hdr *hdr; /* DMA page: header, status at +64, id at +128 */
	u8 *buf;                 /* BLK_BUF bytes */
	u64 capacity;            /* 512-byte sectors */
	u64 max_chunk;           /* bytes per request */
	int ro;
} blk;

int blk_init(struct vdev *d)
{
	u64 want = 1UL << VIRTIO_BLK_F_SIZE_MAX | 1UL << VIRTIO_BLK_F_SEG_MAX | 1UL << VIRTIO_BLK_F_RO |
		   1UL << VIRTIO_BLK_F_BLK_SIZE | 1UL << VIRTIO_BLK_F_FLUSH;
	if (vdev_begin(d, want))
		return -1;
	blk.capacity = vm_config64(d, 0);
	blk.max_chunk = BLK_BUF;
	if (d->features & (1UL << VIRTIO_BLK_F_SIZE_MAX)) {
		u64 sm = vm_config32(d, 8) & ~(SECTOR - 1);
		if (sm && sm < blk.max_chunk)
			blk.max_chunk = sm;
	}
	blk.ro = (d->features >> VIRTIO_BLK_F_RO) & 1;
	if (!blk.hdr && !(blk.hdr = dma_alloc(d, PAGE_SIZE)))
		return -1;
	if (!blk.buf && !(blk.buf = dma_alloc(d, BLK_BUF)))
		return -1;
	if (vdev_setup_queue(d, &blk.q, 0, 16))
		return -1;
	return vdev_driver_ok(d);
}

/* One request: header (out), optional data (out or in), status (in).
 * Returns -1 if the transport failed (device reset), else the status byte. */
static int blk_request(struct vdev *d, u32 type, u64 sector, void *data, u32 len, int data_in)
{
	volatile u8 *status = (u8 *)blk.hdr + 64;
	struct vbuf b[3];
	u32 n = 0, used;

	blk.hdr->type = type;
	blk.hdr->reserved = 0;
	blk.hdr->sector = sector;
	*status = 0xff;
	b[n++] = (struct vbuf){ blk.hdr, sizeof(*blk.hdr), 0 };
	if (len)
		b[n++] = (struct vbuf){ data, len, (u32)data_in };
	b[n++] = (struct vbuf){ (void *)status, 1, 1 };
	if (vq_exec(d, &blk.q, b, n, &used))
		return -1;
	return *status;
}

/* A request that must succeed. */
static int blk_do(struct vdev *d, u32 type, u64 sector, void *data, u32 len, int data_in)
{
	int st = blk_request(d, type, sector, data, len, data_in);
	if (st > 0) {
		static const char *const what[] = { "read status", "write status", "", "", "flush status" };
		return vdev_fail(d, type < 5 ? what[type] : "request status", (u64)st);
	}
	return st;
}

int blk_get_id(struct vdev *d, char *serial)
{
	u8 *id = (u8 *)blk.hdr + 128;
	memset(id, 0, 20);
	int st = blk_request(d, VIRTIO_BLK_T_GET_ID, 0, id, 20, 1);
	if (st == VIRTIO_BLK_S_UNSUPP) { /* not fatal: the device has no id */
		memcpy(serial, "(unsupported)", 14);
		return 0;
	}
	if (st)
		return st < 0 ? -1 : vdev_fail(d, "GET_ID status", (u64)st);
	/* Up to 20 bytes, NUL-terminated only if shorter (§5.2.6). */
	u32 i;
	for (i = 0; i < 20 && id[i]; i++)
		serial[i] = id[i] >= 0x21 && id[i] < 0x7f ? (char)id[i] : '?';
	serial[i] = 0;
	return 0;
}

static u8 pattern(u64 sector, u64 i, u64 seed) { return (u8)(sector * 7 + i + seed); }

static int check_range(struct vdev *d, const struct blk_opts *o)
{
	if (o->sectors == 0)
		return vdev_fail(d, "blk_sectors is 0", ~0UL);
	if (o->start + o->sectors > blk.capacity || o->start + o->sectors < o->start)
		return vdev_fail(d, "range beyond capacity", blk.capacity);
	return 0;
}

static u64 chunk_sectors(const struct blk_opts *o)
{
	u64 c = o->chunk ? o->chunk : blk.max_chunk;
	if (c > blk.max_chunk)
		c = blk.max_chunk;
	c /= SECTOR;
	return c ? c : 1;
}

int blk_write_pattern(struct vdev *d, const struct blk_opts *o)
{
	if (check_range(d, o))
		return -1;
	if (blk.ro)
		return vdev_fail(d, "device is read-only", ~0UL);
	u64 per = chunk_sectors(o);
	for (u64 s = o->start; s < o->start + o->sectors; s += per) {
		u64 n = o->start + o->sectors - s;
		if (n > per)
			n = per;
		for (u64 k = 0; k < n; k++)
			for (u64 i = 0; i < SECTOR; i++)
				blk.buf[k * SECTOR + i] = pattern(s + k, i, o->seed);
		if (blk_do(d, VIRTIO_BLK_T_OUT, s, blk.buf, (u32)(n * SECTOR), 0))
			return -1;
	}
	if (d->features & (1UL << VIRTIO_BLK_F_FLUSH))
		return blk_do(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
	return 0;
}

int blk_verify(struct vdev *d, const struct blk_opts *o)
{
	if (check_range(d, o))
		return -1;
	u64 per = chunk_sectors(o);
	for (u64 s = o->start; s < o->start + o->sectors; s += per) {
		u64 n = o->start + o->sectors - s;
		if (n > per)
			n = per;
		memset(blk.buf, 0xa5, n * SECTOR); /* stale data must not pass */
		if (blk_do(d, VIRTIO_BLK_T_IN, s, blk.buf, (u32)(n * SECTOR), 1))
			return -1;
		for (u64 k = 0; k < n; k++)
			for (u64 i = 0; i < SECTOR; i++) {
				u8 got = blk.buf[k * SECTOR + i], want = pattern(s + k, i, o->seed);
				if (got != want) {
					struct line l;
					l.n = 0;
					ln_str(&l, "mismatch sector=");
					ln_dec(&l, s + k);
					ln_str(&l, " byte=");
					ln_dec(&l, i);
					ln_str(&l, " want=");
					ln_hex(&l, want);
					ln_str(&l, " got");
					l.buf[l.n] = 0;
					return vdev_fail(d, l.buf, got);
				}
			}
	}
	return 0;
}
