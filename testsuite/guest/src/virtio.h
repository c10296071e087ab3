/*
 * virtio.h - ring-3 virtio-mmio (version 2, virtio 1.2 §4.2) drivers of the
 * test guest: transport, split virtqueues, DMA area, and the blk, net and gpu
 * checks built on them.
 *
 * Everything runs in ring 3 with interrupts off: the MMIO windows are mapped
 * user-accessible (each register access is one VM exit), completions are
 * found by polling the used rings in guest RAM (the drivers set
 * VIRTQ_AVAIL_F_NO_INTERRUPT), and guest-physical = guest-virtual (identity
 * map), so buffer addresses go to the device unchanged.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "guest.h"

/* virtio-mmio registers (§4.2.2). */
#define VMMIO_MAGIC 0x000 /* "virt" = 0x74726976 */
#define VMMIO_VERSION 0x004
#define VMMIO_DEVICE_ID 0x008
#define VMMIO_VENDOR_ID 0x00c
#define VMMIO_DEVICE_FEATURES 0x010
#define VMMIO_DEVICE_FEATURES_SEL 0x014
#define VMMIO_DRIVER_FEATURES 0x020
#define VMMIO_DRIVER_FEATURES_SEL 0x024
#define VMMIO_QUEUE_SEL 0x030
#define VMMIO_QUEUE_NUM_MAX 0x034
#define VMMIO_QUEUE_NUM 0x038
#define VMMIO_QUEUE_READY 0x044
#define VMMIO_QUEUE_NOTIFY 0x050
#define VMMIO_INTERRUPT_STATUS 0x060
#define VMMIO_INTERRUPT_ACK 0x064
#define VMMIO_STATUS 0x070
#define VMMIO_QUEUE_DESC 0x080   /* low, high at +4 */
#define VMMIO_QUEUE_DRIVER 0x090 /* avail ring */
#define VMMIO_QUEUE_DEVICE 0x0a0 /* used ring */
#define VMMIO_CONFIG_GENERATION 0x0fc
#define VMMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976

/* Device status (§2.1). */
#define VS_ACKNOWLEDGE 1
#define VS_DRIVER 2
#define VS_DRIVER_OK 4
#define VS_FEATURES_OK 8
#define VS_NEEDS_RESET 64
#define VS_FAILED 128

/* Transport feature bits (§6). */
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33

/* Device ids (§5). */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLK 2
#define VIRTIO_ID_GPU 16

/* Split virtqueue (§2.7). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

/* One buffer of a chain: out (device reads) or in (device writes). */
struct vbuf {
	void *addr;
	u32 len;
	u32 write; /* 1: device-writable */
};

#define VQ_MAX 256

struct vq {
	u16 index;              /* queue number on the device */
	u16 size;               /* negotiated QueueNum */
	u16 free_head, num_free;
	u16 avail_idx;          /* next free avail slot (free-running) */
	u16 last_used;          /* next used slot to consume (free-running) */
	struct virtq_desc *desc;
	volatile u16 *avail;    /* flags, idx, ring[size] */
	volatile u8 *used;      /* flags, idx, ring[size] of virtq_used_elem */
};

/* A virtio-mmio device bound to a driver. */
struct vdev {
	u64 base;      /* MMIO window */
	u32 index;     /* position among the command line's devices */
	u32 device_id;
	u64 features;  /* negotiated */
	int ready;     /* DRIVER_OK set and no failure since */
	char err[96];  /* first failure, for the FAIL markers */
};

/* Timeouts and the DMA area, shared by the drivers (devices.c). */
struct dev_env {
	u64 hz;            /* TSC frequency */
	u64 timeout;       /* TSC cycles to wait for one completion */
	u64 dma_next, dma_end;
};
extern struct dev_env denv;

/* DMA area: page-aligned, zeroed; NULL (and dev->err set) when exhausted. */
void *dma_alloc(struct vdev *d, u64 size);

/* Transport (virtio.c). */
u32 vm_read(const struct vdev *d, u32 off);
void vm_write(const struct vdev *d, u32 off, u32 v);
/* Config space accesses have the field's width (§4.2.2.2): 8, 16, 32 bits;
 * 64-bit fields as two 32-bit halves. */
u8 vm_config8(const struct vdev *d, u32 off);
u16 vm_config16(const struct vdev *d, u32 off);
u32 vm_config32(const struct vdev *d, u32 off);
u64 vm_config64(const struct vdev *d, u32 off); /* generation-checked */
int vdev_fail(struct vdev *d, const char *what, u64 v); /* records, sets FAILED, resets; returns -1 */
/* Reset, ACKNOWLEDGE|DRIVER, negotiate (want & offered, VERSION_1 required),
 * FEATURES_OK. Returns 0 or -1 (d->err set). */
int vdev_begin(struct vdev *d, u64 want);
int vdev_setup_queue(struct vdev *d, struct vq *q, u16 index, u16 size);
int vdev_driver_ok(struct vdev *d);
int vdev_check(struct vdev *d); /* -1 (and reset) if NEEDS_RESET is set */

/* Split virtqueue (virtio.c). */
int vq_add(struct vdev *d, struct vq *q, const struct vbuf *bufs, u32 n); /* head id or -1 */
void vq_kick(struct vdev *d, struct vq *q);
int vq_poll(struct vq *q, u32 *id, u32 *len); /* 1: consumed one used element */
int vq_wait(struct vdev *d, struct vq *q, u32 head, u32 *len); /* poll until head completes */
/* vq_add + vq_kick + vq_wait. */
int vq_exec(struct vdev *d, struct vq *q, const struct vbuf *bufs, u32 n, u32 *len);

/* Drivers. Each init/run returns 0 or -1 with d->err set; the callers print. */
struct blk_opts {
	u64 start, sectors, seed, chunk;
};
int blk_init(struct vdev *d);
int blk_get_id(struct vdev *d, char *serial /* 21 bytes */);
int blk_write_pattern(struct vdev *d, const struct blk_opts *o);
int blk_verify(struct vdev *d, const struct blk_opts *o);

struct net_opts {
	u64 frames, size;
	int mrg;  /* negotiate VIRTIO_NET_F_MRG_RXBUF if offered */
	u64 rxbuf; /* bytes per rx buffer, 0: 2048 */
};
int net_init(struct vdev *d, const struct net_opts *o);
int net_echo(struct vdev *d, const struct net_opts *o, u64 frames);
int net_respond(struct vdev *d, u64 *echoed);
const u8 *net_mac(void);
u32 net_max_buffers(void); /* most rx buffers one frame used so far */
u64 net_retransmits(void);  /* frames sent again because no echo came in time */

int gpu_init(struct vdev *d);
int gpu_draw(struct vdev *d, u32 *w, u32 *h); /* display info .. flush */
int gpu_reflush(struct vdev *d);
int gpu_used_default_mode(void); /* 1: scanout 0 was disabled or empty */

/* devices.c */
void devices_boot(const struct bootinfo *bi, const struct config *cfg);
void devices_periodic(u64 pass);

#endif
