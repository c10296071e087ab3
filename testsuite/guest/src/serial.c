/*
 * serial.c - 16550 UART output and tiny string helpers, used by ring 0 and
 * ring 3 alike. In ring 3 every in/out below raises #GP and the kernel's
 * #GP handler (entry.S) performs it.
 */
#include "guest.h"

#define COM1 0x3f8
#define UART_THR (COM1 + 0) /* transmit holding register */
#define UART_LSR (COM1 + 5) /* line status register */
#define LSR_THRE 0x20       /* transmit FIFO empty */
#define UART_FIFO 16

void *memset(void *d, int c, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* The UART was programmed by the entry code (115200 8N1, FIFO on). Wait for
 * an empty FIFO, then send a burst of up to 16 bytes: one LSR read per 16
 * bytes instead of one per byte (each port access is a VM exit). */
void serial_write(const char *s, size_t n)
{
	while (n) {
		size_t k = n < UART_FIFO ? n : UART_FIFO;
		while (!(inb(UART_LSR) & LSR_THRE))
			cpu_relax();
		for (size_t i = 0; i < k; i++)
			outb(UART_THR, (u8)s[i]);
		s += k;
		n -= k;
	}
}

/* ------------------------------------------------------- line builder */

void ln_mem(struct line *l, const char *s, size_t n)
{
	while (n-- && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = *s++;
}

void ln_str(struct line *l, const char *s) { ln_mem(l, s, strlen(s)); }

void ln_dec(struct line *l, u64 v)
{
	char tmp[20];
	int i = 0;
	do {
		tmp[i++] = '0' + v % 10;
		v /= 10;
	} while (v);
	while (i--)
		ln_mem(l, &tmp[i], 1);
}

void ln_hex(struct line *l, u64 v)
{
	char tmp[16];
	int i = 0;
	ln_str(l, "0x");
	do {
		tmp[i++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (i--)
		ln_mem(l, &tmp[i], 1);
}

void ln_end(struct line *l)
{
	l->buf[l->n++] = '\n'; /* ln_mem keeps one byte free */
	if (l->kernel)
		serial_write(l->buf, l->n);
	else
		console_write(l->buf, l->n);
	l->n = 0;
}
