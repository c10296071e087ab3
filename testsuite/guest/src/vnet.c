/*
 * vnet.c - virtio-net driver and the echo check (ring 3).
 *
 * Frame sent (size bytes, 60..1514, no FCS):
 *   [0,6)   ff:ff:ff:ff:ff:ff
 *   [6,12)  the device's MAC (config space with VIRTIO_NET_F_MAC, else 02:00:00:00:00:01)
 *   [12,14) ethertype 0x88b5 (IEEE local experimental)
 *   [14,..) "WASMVMM-ECHO <seq>" (seq decimal, from 1, counting every frame
 *           sent since boot), one NUL, then byte k of the frame = k & 0xff
 * Expected back: a frame of the same length whose bytes [12, size) are
 * identical, with destination = our MAC (the peer swapped the addresses) or
 * broadcast (the peer reflected it as is). Anything else received is ignored.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16

#define NET_HDR 12 /* struct virtio_net_hdr with num_buffers (always in 1.x) */
#define RX_BUFS 16
#define RX_BUF_SIZE 2048 /* largest rx buffer; default size */
#define RX_BUF_MIN 1526  /* 12 + 1514: smallest without MRG_RXBUF (§5.1.6.3.1) */
#define FRAME_MAX 1514
#define ETHERTYPE 0x88b5

static struct {
	struct vq rx, tx;
	u8 *rxbuf;  /* RX_BUFS x RX_BUF_SIZE */
	u8 *txbuf;  /* NET_HDR + frame */
	u8 *frame;  /* assembled received frame (FRAME_MAX + slack) */
	u16 rx_id[RX_BUFS]; /* descriptor head -> buffer index */
	u16 id_buf[VQ_MAX];
	u8 mac[6];
	u64 seq;
	int mrg;
	u32 rxsize;   /* bytes per posted rx buffer */
	u32 max_nbuf; /* most buffers one received frame used */
	u64 retransmits;
} net;

u64 net_retransmits(void) { return net.retransmits; }

u32 net_max_buffers(void) { return net.max_nbuf; }

const u8 *net_mac(void) { return net.mac; }

static int post_rx(struct vdev *d, u32 i)
{
	struct vbuf b = { net.rxbuf + i * RX_BUF_SIZE, net.rxsize, 1 };
	int head = vq_add(d, &net.rx, &b, 1);
	if (head < 0)
		return -1;
	net.id_buf[head] = (u16)i;
	return 0;
}

int net_init(struct vdev *d, const struct net_opts *o)
{
	u64 want = 1UL << VIRTIO_NET_F_MAC | 1UL << VIRTIO_NET_F_STATUS;
	if (o->mrg)
		want |= 1UL << VIRTIO_NET_F_MRG_RXBUF;
	if (vdev_begin(d, want))
		return -1;
	net.mrg = (d->features >> VIRTIO_NET_F_MRG_RXBUF) & 1;
	net.rxsize = o->rxbuf ? (u32)o->rxbuf : RX_BUF_SIZE;
	if (net.rxsize > RX_BUF_SIZE || net.rxsize < (net.mrg ? 64 : RX_BUF_MIN))
		return vdev_fail(d, net.mrg ? "net_rxbuf must be 64..2048: net_rxbuf" : "net_rxbuf without MRG_RXBUF must be 1526..2048: net_rxbuf", net.rxsize);
	if (d->features & (1UL << VIRTIO_NET_F_MAC)) {
		for (u32 i = 0; i < 6; i++)
			net.mac[i] = vm_config8(d, i);
	} else {
		static const u8 def[6] = { 0x02, 0, 0, 0, 0, 0x01 };
		memcpy(net.mac, def, 6);
	}
	if (!(net.rxbuf = dma_alloc(d, RX_BUFS * RX_BUF_SIZE)) || !(net.txbuf = dma_alloc(d, 2 * PAGE_SIZE)) ||
	    !(net.frame = dma_alloc(d, 2 * PAGE_SIZE)))
		return -1;
	if (vdev_setup_queue(d, &net.rx, 0, RX_BUFS) || vdev_setup_queue(d, &net.tx, 1, 16))
		return -1;
	if (net.rx.size < RX_BUFS)
		return vdev_fail(d, "rx queue too small: size", net.rx.size);
	/* Fill the receive queue before DRIVER_OK (§5.1.5). */
	for (u32 i = 0; i < RX_BUFS; i++)
		if (post_rx(d, i))
			return -1;
	if (vdev_driver_ok(d))
		return -1;
	vq_kick(d, &net.rx);
	return 0;
}

/* Link status for diagnostics: 1 up, 0 down, -1 unknown. */
int net_link(struct vdev *d)
{
	if (!(d->features & (1UL << VIRTIO_NET_F_STATUS)))
		return -1;
	return vm_config16(d, 6) & 1; /* status: u16, VIRTIO_NET_S_LINK_UP */
}

static u32 build_frame(u8 *f, u64 size, u64 seq)
{
	static const char text[] = "WASMVMM-ECHO ";
	struct line l;
	for (u32 k = 0; k < size; k++)
		f[k] = (u8)k;
	memset(f, 0xff, 6);
	memcpy(f + 6, net.mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	l.n = 0;
	ln_str(&l, text);
	ln_dec(&l, seq);
	memcpy(f + 14, l.buf, l.n);
	f[14 + l.n] = 0;
	return (u32)size;
}

/* Receive one frame into net.frame (all its buffers, MRG_RXBUF or not), re-post
 * the buffers. Returns its length, 0 if nothing arrived, -1 on error. */
static i64 rx_frame(struct vdev *d)
{
	u32 id, len, nbuf = 1, got = 0;
	if (!vq_poll(&net.rx, &id, &len))
		return 0;
	for (u32 b = 0;; b++) {
		if (id >= net.rx.size)
			return vdev_fail(d, "rx used ring: bad id", id);
		u32 i = net.id_buf[id];
		u8 *p = net.rxbuf + i * RX_BUF_SIZE;
		if (len > net.rxsize)
			return vdev_fail(d, "rx used len beyond buffer", len);
		if (b == 0) {
			if (len < NET_HDR)
				return vdev_fail(d, "rx used len below header", len);
			if (net.mrg)
				nbuf = p[10] | p[11] << 8;
			if (nbuf == 0 || nbuf > RX_BUFS)
				return vdev_fail(d, "rx num_buffers", nbuf);
			if (nbuf > net.max_nbuf)
				net.max_nbuf = nbuf;
			p += NET_HDR;
			len -= NET_HDR;
		}
		if (got + len <= FRAME_MAX + 64)
			memcpy(net.frame + got, p, len);
		got += len;
		if (post_rx(d, i))
			return -1;
		if (b + 1 == nbuf)
			break;
		/* The other buffers of a merged frame follow in the used ring. */
		u64 deadline = rdtsc() + denv.timeout;
		while (!vq_poll(&net.rx, &id, &len)) {
			if (rdtsc() > deadline)
				return vdev_fail(d, "rx: missing merged buffer of", nbuf);
			cpu_relax();
		}
	}
	vq_kick(d, &net.rx);
	if (got > FRAME_MAX + 64)
		return vdev_fail(d, "rx frame too long", got);
	return got ? (i64)got : -2; /* -2: an empty frame, ignore */
}

static int is_echo(const u8 *sent, u32 size, const u8 *f, i64 n)
{
	static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	if (n != size)
		return 0;
	int dst_ok = 1, dst_b = 1;
	for (u32 k = 0; k < 6; k++) {
		dst_ok &= f[k] == net.mac[k];
		dst_b &= f[k] == bcast[k];
	}
	if (!dst_ok && !dst_b)
		return 0;
	for (u32 k = 12; k < size; k++)
		if (f[k] != sent[k])
			return 0;
	return 1;
}

/* Send frame seq and wait for its echo. A frame (or its echo) may be lost
 * (e.g. in flight while the VM migrates), so the same frame is sent again
 * every timeout/8 until the echo arrives or the timeout expires. */
int net_echo(struct vdev *d, const struct net_opts *o, u64 frames)
{
	u64 size = o->size;
	if (size < 60 || size > FRAME_MAX)
		return vdev_fail(d, "net_size must be 60..1514: net_size", size);
	u64 resend = denv.timeout / 8;
	for (u64 f = 0; f < frames; f++) {
		u64 seq = ++net.seq;
		u8 *frame = net.txbuf + NET_HDR;
		memset(net.txbuf, 0, NET_HDR); /* no offloads, GSO_NONE, num_buffers 0 */
		build_frame(frame, size, seq);
		struct vbuf b = { net.txbuf, (u32)(NET_HDR + size), 0 };
		u64 now = rdtsc(), deadline = now + denv.timeout, next_send = now;
		for (int sent = 0;; sent++) {
			if (sent)
				net.retransmits++;
			if (vq_exec(d, &net.tx, &b, 1, NULL))
				return -1;
			next_send += resend;
			i64 n;
			while ((n = rx_frame(d)) == 0 || n == -2 || !is_echo(frame, (u32)size, net.frame, n)) {
				if (n == -1)
					return -1;
				now = rdtsc();
				if (now > deadline) {
					vdev_check(d);
					return vdev_fail(d, "no echo of seq", seq);
				}
				if (now > next_send)
					break; /* send it again */
				if (n == 0)
					cpu_relax();
			}
			if (n > 0 && is_echo(frame, (u32)size, net.frame, n))
				break;
		}
	}
	return 0;
}

/* The peer side of the echo check (net_test=2): every frame of our
 * ethertype that arrives goes back to its sender (destination = its source,
 * source = our MAC), unchanged otherwise. Never returns unless the device
 * fails. */
int net_respond(struct vdev *d, u64 *echoed)
{
	for (;;) {
		i64 n = rx_frame(d);
		if (n == -1)
			return -1;
		if (n <= 0) {
			cpu_relax();
			continue;
		}
		u8 *f = net.frame;
		if (n < 14 || n > FRAME_MAX || f[12] != (ETHERTYPE >> 8) || f[13] != (ETHERTYPE & 0xff))
			continue;
		u8 *t = net.txbuf + NET_HDR;
		memset(net.txbuf, 0, NET_HDR);
		memcpy(t, f + 6, 6);
		memcpy(t + 6, net.mac, 6);
		memcpy(t + 12, f + 12, (u64)n - 12);
		struct vbuf b = { net.txbuf, (u32)(NET_HDR + n), 0 };
		if (vq_exec(d, &net.tx, &b, 1, NULL))
			return -1;
		(*echoed)++;
	}
}
