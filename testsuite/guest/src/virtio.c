/*
 * virtio.c - virtio-mmio version 2 transport and split virtqueues (ring 3).
 *
 * Every register access below is an MMIO exit (~25-70 us under PVM), so the
 * drivers touch registers only to set a device up and to notify; completions
 * are polled in the used rings (guest RAM), with a TSC deadline.
 */
#include "virtio.h"

struct dev_env denv;

static void barrier(void) { __asm__ volatile("" ::: "memory"); }
static void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

/* ------------------------------------------------------------ errors */

static void err_set(struct vdev *d, const char *what, u64 v, int with_v)
{
	struct line l;
	l.n = 0;
	ln_str(&l, what);
	if (with_v) {
		ln_str(&l, "=");
		ln_hex(&l, v);
	}
	if (l.n >= sizeof(d->err))
		l.n = sizeof(d->err) - 1;
	memcpy(d->err, l.buf, l.n);
	d->err[l.n] = 0;
}

int vdev_fail(struct vdev *d, const char *what, u64 v)
{
	if (!d->err[0])
		err_set(d, what, v, v != ~0UL);
	/* Tell the device, then reset it so that it stops using our rings. */
	if (d->base) {
		vm_write(d, VMMIO_STATUS, vm_read(d, VMMIO_STATUS) | VS_FAILED);
		vm_write(d, VMMIO_STATUS, 0);
	}
	d->ready = 0;
	return -1;
}

/* --------------------------------------------------------------- DMA */

void *dma_alloc(struct vdev *d, u64 size)
{
	u64 a = denv.dma_next;
	size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	if (a + size > denv.dma_end || a + size < a) {
		vdev_fail(d, "dev_mem exhausted, need", size);
		return NULL;
	}
	denv.dma_next = a + size;
	memset((void *)a, 0, size);
	return (void *)a;
}

/* --------------------------------------------------------- registers */

u32 vm_read(const struct vdev *d, u32 off) { return *(volatile u32 *)(d->base + off); }

void vm_write(const struct vdev *d, u32 off, u32 v) { *(volatile u32 *)(d->base + off) = v; }

u8 vm_config8(const struct vdev *d, u32 off) { return *(volatile u8 *)(d->base + VMMIO_CONFIG + off); }

u16 vm_config16(const struct vdev *d, u32 off) { return *(volatile u16 *)(d->base + VMMIO_CONFIG + off); }

u32 vm_config32(const struct vdev *d, u32 off) { return vm_read(d, VMMIO_CONFIG + off); }

/* A 64-bit field is read as two 32-bit halves; ConfigGeneration tells
 * whether the device changed config space in between (§2.5.1). */
u64 vm_config64(const struct vdev *d, u32 off)
{
	for (;;) {
		u32 gen = vm_read(d, VMMIO_CONFIG_GENERATION);
		u64 lo = vm_config32(d, off), hi = vm_config32(d, off + 4);
		if (vm_read(d, VMMIO_CONFIG_GENERATION) == gen)
			return lo | hi << 32;
	}
}

static void write64(const struct vdev *d, u32 off, u64 v)
{
	vm_write(d, off, (u32)v);
	vm_write(d, off + 4, (u32)(v >> 32));
}

/* ----------------------------------------------------- initialization */

static int wait_status_zero(struct vdev *d)
{
	u64 deadline = rdtsc() + denv.timeout;
	while (vm_read(d, VMMIO_STATUS) != 0) {
		if (rdtsc() > deadline)
			return -1;
		cpu_relax();
	}
	return 0;
}

int vdev_begin(struct vdev *d, u64 want)
{
	d->ready = 0;
	d->err[0] = 0;
	if (vm_read(d, VMMIO_MAGIC) != VIRTIO_MMIO_MAGIC)
		return vdev_fail(d, "bad magic", vm_read(d, VMMIO_MAGIC));
	u32 version = vm_read(d, VMMIO_VERSION);
	if (version != 2)
		return vdev_fail(d, "not a virtio-mmio version 2 device: version", version);

	/* §3.1.1: reset, wait for 0, ACKNOWLEDGE, DRIVER. */
	vm_write(d, VMMIO_STATUS, 0);
	if (wait_status_zero(d))
		return vdev_fail(d, "reset did not complete", ~0UL);
	vm_write(d, VMMIO_STATUS, VS_ACKNOWLEDGE);
	vm_write(d, VMMIO_STATUS, VS_ACKNOWLEDGE | VS_DRIVER);

	u64 offered;
	vm_write(d, VMMIO_DEVICE_FEATURES_SEL, 0);
	offered = vm_read(d, VMMIO_DEVICE_FEATURES);
	vm_write(d, VMMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (u64)vm_read(d, VMMIO_DEVICE_FEATURES) << 32;
	if (!(offered & (1UL << VIRTIO_F_VERSION_1)))
		return vdev_fail(d, "VIRTIO_F_VERSION_1 not offered: features", offered);
	/* ACCESS_PLATFORM is harmless to accept: no IOMMU, addresses are
	 * physical. A device offering it may refuse a driver without it. */
	want |= 1UL << VIRTIO_F_VERSION_1 | 1UL << VIRTIO_F_ACCESS_PLATFORM;
	d->features = offered & want;
	vm_write(d, VMMIO_DRIVER_FEATURES_SEL, 0);
	vm_write(d, VMMIO_DRIVER_FEATURES, (u32)d->features);
	vm_write(d, VMMIO_DRIVER_FEATURES_SEL, 1);
	vm_write(d, VMMIO_DRIVER_FEATURES, (u32)(d->features >> 32));

	vm_write(d, VMMIO_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK);
	u32 st = vm_read(d, VMMIO_STATUS);
	if (!(st & VS_FEATURES_OK))
		return vdev_fail(d, "FEATURES_OK refused: features", d->features);
	if (st & VS_NEEDS_RESET)
		return vdev_fail(d, "NEEDS_RESET after FEATURES_OK", ~0UL);
	return 0;
}

int vdev_setup_queue(struct vdev *d, struct vq *q, u16 index, u16 size)
{
	vm_write(d, VMMIO_QUEUE_SEL, index);
	if (vm_read(d, VMMIO_QUEUE_READY))
		return vdev_fail(d, "queue already ready after reset: queue", index);
	u32 max = vm_read(d, VMMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return vdev_fail(d, "queue not available: queue", index);
	if (size > max)
		size = (u16)max;
	if (size > VQ_MAX)
		size = VQ_MAX;

	/* One page each: descriptors (16 B x size <= 4 KiB), avail ring,
	 * used ring. Zeroed by dma_alloc. */
	u8 *mem = dma_alloc(d, 3 * PAGE_SIZE);
	if (!mem)
		return -1;
	q->index = index;
	q->size = size;
	q->desc = (struct virtq_desc *)mem;
	q->avail = (volatile u16 *)(mem + PAGE_SIZE);
	q->used = mem + 2 * PAGE_SIZE;
	q->avail_idx = 0;
	q->last_used = 0;
	q->free_head = 0;
	q->num_free = size;
	for (u16 i = 0; i < size; i++)
		q->desc[i].next = i + 1;
	/* Polling only: ask the device not to interrupt (a hint, §2.7.7). */
	q->avail[0] = VIRTQ_AVAIL_F_NO_INTERRUPT;

	vm_write(d, VMMIO_QUEUE_NUM, size);
	write64(d, VMMIO_QUEUE_DESC, (u64)q->desc);
	write64(d, VMMIO_QUEUE_DRIVER, (u64)q->avail);
	write64(d, VMMIO_QUEUE_DEVICE, (u64)q->used);
	vm_write(d, VMMIO_QUEUE_READY, 1);
	return 0;
}

int vdev_driver_ok(struct vdev *d)
{
	vm_write(d, VMMIO_STATUS, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
	d->ready = 1;
	return vdev_check(d);
}

int vdev_check(struct vdev *d)
{
	u32 st = vm_read(d, VMMIO_STATUS);
	if (st & VS_NEEDS_RESET)
		return vdev_fail(d, "device set NEEDS_RESET: status", st);
	if ((st & (VS_DRIVER_OK | VS_FAILED)) != VS_DRIVER_OK)
		return vdev_fail(d, "device not live: status", st);
	return 0;
}

/* --------------------------------------------------------- virtqueue */

static volatile u16 *used_idx(struct vq *q) { return (volatile u16 *)(q->used + 2); }

int vq_add(struct vdev *d, struct vq *q, const struct vbuf *bufs, u32 n)
{
	if (n == 0 || n > q->num_free)
		return vdev_fail(d, "virtqueue full: queue", q->index);
	u16 head = q->free_head, i = head, last = head;
	for (u32 k = 0; k < n; k++) {
		struct virtq_desc *ds = &q->desc[i];
		ds->addr = (u64)bufs[k].addr;
		ds->len = bufs[k].len;
		ds->flags = (bufs[k].write ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
		last = i;
		i = ds->next;
	}
	q->free_head = q->desc[last].next;
	q->num_free -= n;
	q->avail[2 + q->avail_idx % q->size] = head;
	barrier(); /* the ring entry before the index (x86 keeps stores in order) */
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	return head;
}

void vq_kick(struct vdev *d, struct vq *q)
{
	mb();
	vm_write(d, VMMIO_QUEUE_NOTIFY, q->index);
}

static void free_chain(struct vq *q, u16 head)
{
	u16 i = head, n = 1;
	while ((q->desc[i].flags & VIRTQ_DESC_F_NEXT) && n < q->size) {
		i = q->desc[i].next;
		n++;
	}
	q->desc[i].next = q->free_head;
	q->free_head = head;
	q->num_free += n;
}

int vq_poll(struct vq *q, u32 *id, u32 *len)
{
	if (*used_idx(q) == q->last_used)
		return 0;
	barrier(); /* the element after the index */
	const volatile struct virtq_used_elem *e =
		(const volatile struct virtq_used_elem *)(q->used + 4) + q->last_used % q->size;
	u32 i = e->id, l = e->len;
	q->last_used++;
	if (i < q->size)
		free_chain(q, (u16)i);
	*id = i;
	*len = l;
	return 1;
}

int vq_wait(struct vdev *d, struct vq *q, u32 head, u32 *len)
{
	u64 deadline = rdtsc() + denv.timeout;
	u32 id, l;
	for (;;) {
		while (vq_poll(q, &id, &l)) {
			if (id >= q->size)
				return vdev_fail(d, "used ring: bad id", id);
			if (id == head) {
				if (len)
					*len = l;
				return 0;
			}
		}
		if (rdtsc() > deadline) {
			vdev_check(d); /* NEEDS_RESET explains a timeout */
			return vdev_fail(d, "timeout waiting for queue", q->index);
		}
		cpu_relax();
	}
}

int vq_exec(struct vdev *d, struct vq *q, const struct vbuf *bufs, u32 n, u32 *len)
{
	int head = vq_add(d, q, bufs, n);
	if (head < 0)
		return -1;
	vq_kick(d, q);
	return vq_wait(d, q, (u32)head, len);
}
