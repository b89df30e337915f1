/* Output of the boot test guests: bytes to COM1's data port, a status byte to the VMM's exit port.
 * No LSR polling: the test harness takes every byte written to 0x3f8, so the guest never waits. */
#ifndef BOOT_GUEST_SERIAL_H
#define BOOT_GUEST_SERIAL_H

#include <stdint.h>

#define COM1 0x3f8
#define EXIT_PORT 0xf4

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void putc(char c) { outb(COM1, (uint8_t)c); }

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void puthex(uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[17];
    int i = 16;
    buf[i] = 0;
    do {
        buf[--i] = digits[v & 0xf];
        v >>= 4;
    } while (v);
    puts("0x");
    puts(&buf[i]);
}

/* "name=0x..\n" lines: the test parses them back into a dict */
static void field(const char *name, uint64_t v)
{
    puts(name);
    putc('=');
    puthex(v);
    putc('\n');
}

static void text(const char *name, const char *s, uint64_t max)
{
    puts(name);
    putc('=');
    for (uint64_t i = 0; i < max && s[i]; i++)
        putc(s[i]);
    putc('\n');
}

static __attribute__((noreturn)) void finish(uint8_t status)
{
    outb(EXIT_PORT, status);
    for (;;)
        __asm__ volatile("cli; hlt");
}

#endif
