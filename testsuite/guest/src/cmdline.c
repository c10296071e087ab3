/*
 * cmdline.c - command line parsing (ring 3).
 *
 * Space-separated key=value tokens; unknown keys are ignored, so Linux-style
 * arguments may be mixed in. See README.md for the keys.
 */
#include "guest.h"

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int token_is(const char *s, size_t n, const char *word)
{
	size_t w = strlen(word);
	if (n != w)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] != word[i])
			return 0;
	return 1;
}

/* Number: 0x-prefixed hex or decimal, optional K/M/G/T suffix (powers of
 * 1024, either case). Returns 0 on success, -1 on a malformed number or
 * overflow. */
int parse_number(const char *s, size_t n, u64 *out)
{
	u64 v = 0, base = 10, shift = 0;
	size_t i = 0, digits = 0;

	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (n > i) {
		switch (s[n - 1]) {
		case 'k': case 'K': shift = 10; n--; break;
		case 'm': case 'M': shift = 20; n--; break;
		case 'g': case 'G': shift = 30; n--; break;
		case 't': case 'T': shift = 40; n--; break;
		}
	}
	for (; i < n; i++, digits++) {
		char c = s[i];
		u64 d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		if (v > (~0UL - d) / base)
			return -1;
		v = v * base + d;
	}
	if (digits == 0 || (shift && v > (~0UL >> shift)))
		return -1;
	*out = v << shift;
	return 0;
}

/* Find c in s[0..n); returns its index or n. */
static size_t find(const char *s, size_t n, char c)
{
	size_t i = 0;
	while (i < n && s[i] != c)
		i++;
	return i;
}

/* virtio_mmio.device=SIZE@ADDR:IRQ[:ID] (Linux's syntax; QEMU's microvm
 * appends one per virtio-mmio transport with a device when acpi=off). */
static int parse_virtio(const char *s, size_t n, struct virtio_mmio_dev *d)
{
	size_t at = find(s, n, '@');
	if (at == n || parse_number(s, at, &d->size))
		return -1;
	s += at + 1;
	n -= at + 1;
	size_t c1 = find(s, n, ':');
	if (c1 == n || parse_number(s, c1, &d->base))
		return -1;
	s += c1 + 1;
	n -= c1 + 1;
	size_t c2 = find(s, n, ':');
	u64 v;
	if (parse_number(s, c2, &v) || v > 0xffffffffUL)
		return -1;
	d->irq = (u32)v;
	d->id = 0;
	if (c2 < n) {
		if (parse_number(s + c2 + 1, n - c2 - 1, &v) || v > 0xffffffffUL)
			return -1;
		d->id = (u32)v;
	}
	return 0;
}

static void fail(struct config *cfg, const char *why, const char *tok, size_t n)
{
	if (cfg->error)
		return;
	cfg->error = why;
	if (n >= sizeof(cfg->bad))
		n = sizeof(cfg->bad) - 1;
	memcpy(cfg->bad, tok, n);
	cfg->bad[n] = 0;
}

static void parse_token(const char *t, size_t n, struct config *cfg)
{
	size_t eq = find(t, n, '=');
	const char *v = t + eq + 1;
	size_t vn = eq < n ? n - eq - 1 : 0;
	u64 num;

	if (eq == n)
		return; /* a bare word: not ours */
	if (token_is(t, eq, "workload")) {
		if (token_is(v, vn, "dirtier"))
			cfg->workload = WL_DIRTIER;
		else if (token_is(v, vn, "idle"))
			cfg->workload = WL_IDLE;
		else if (token_is(v, vn, "crash"))
			cfg->workload = WL_CRASH;
		else if (token_is(v, vn, "pio-bench"))
			cfg->workload = WL_PIO_BENCH;
		else if (token_is(v, vn, "shutdown"))
			cfg->workload = WL_SHUTDOWN;
		else if (token_is(v, vn, "suspend"))
			cfg->workload = WL_SUSPEND;
		else if (token_is(v, vn, "fault"))
			cfg->workload = WL_FAULT;
		else
			fail(cfg, "unknown workload", t, n);
	} else if (token_is(t, eq, "guest_console")) {
		if (token_is(v, vn, "pio"))
			cfg->console_pio = 1;
		else if (token_is(v, vn, "syscall"))
			cfg->console_pio = 0;
		else
			fail(cfg, "guest_console must be pio or syscall", t, n);
	} else if (token_is(t, eq, "virtio_mmio.device")) {
		if (cfg->nr_virtio >= MAX_VIRTIO_MMIO)
			fail(cfg, "too many virtio_mmio.device entries", t, n);
		else if (parse_virtio(v, vn, &cfg->virtio[cfg->nr_virtio]))
			fail(cfg, "bad virtio_mmio.device (want SIZE@ADDR:IRQ[:ID])", t, n);
		else
			cfg->nr_virtio++;
	} else {
		static const char *const keys[] = { "dirty_start", "dirty_end", "dirty_rate_mb",
						    "marker_every", "pio_port", "pio_count",
						    "blk_test", "blk_start", "blk_sectors", "blk_seed",
						    "net_test", "net_frames", "net_size", "net_mrg",
						    "gpu_test", "dev_every", "dev_mem", "dev_mem_size",
						    "dev_timeout_ms", "net_rxbuf" };
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			if (!token_is(t, eq, keys[k]))
				continue;
			if (parse_number(v, vn, &num)) {
				fail(cfg, "bad number", t, n);
				return;
			}
			switch (k) {
			case 0: cfg->dirty_start = num; break;
			case 1: cfg->dirty_end = num; break;
			case 2: cfg->dirty_rate_mb = num; break;
			case 3:
				if (num == 0)
					fail(cfg, "marker_every must be > 0", t, n);
				else
					cfg->marker_every = num;
				break;
			case 4:
				if (num > 0xffff)
					fail(cfg, "pio_port must be < 0x10000", t, n);
				else
					cfg->pio_port = num;
				break;
			case 5: cfg->pio_count = num; break;
			case 6: cfg->blk_test = num; break;
			case 7: cfg->blk_start = num; break;
			case 8: cfg->blk_sectors = num; break;
			case 9: cfg->blk_seed = num; break;
			case 10: cfg->net_test = num; break;
			case 11: cfg->net_frames = num; break;
			case 12:
				if (num < 60 || num > 1514)
					fail(cfg, "net_size must be 60..1514", t, n);
				else
					cfg->net_size = num;
				break;
			case 13: cfg->net_mrg = num; break;
			case 14: cfg->gpu_test = num; break;
			case 15: cfg->dev_every = num; break;
			case 16: cfg->dev_mem = num; break;
			case 17: cfg->dev_mem_size = num; break;
			case 18:
				if (num == 0 || num > 3600000)
					fail(cfg, "dev_timeout_ms must be 1..3600000", t, n);
				else
					cfg->dev_timeout_ms = num;
				break;
			case 19: cfg->net_rxbuf = num; break;
			}
			return;
		}
	}
}

void parse_cmdline(const char *s, struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->workload = WL_DIRTIER;
	cfg->marker_every = 1;
	cfg->pio_port = 0x80;
	cfg->pio_count = 100000;
	cfg->console_pio = 0;
	cfg->blk_sectors = 64;
	cfg->net_frames = 8;
	cfg->net_size = 64;
	cfg->net_mrg = 1;
	cfg->dev_mem = 4 * MiB;
	cfg->dev_mem_size = 12 * MiB;
	cfg->dev_timeout_ms = 5000;
	while (*s) {
		while (is_space(*s))
			s++;
		size_t n = 0;
		while (s[n] && !is_space(s[n]))
			n++;
		if (n)
			parse_token(s, n, cfg);
		s += n;
	}
}
