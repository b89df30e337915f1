/* isolation: fill this VM's free RAM with its secret, wait until the host says every VM has filled its own,
   then scan all of RAM for the other VM's secret. Both secrets come in inverted (-D), see isolation_scan.S. */
#include "rt.h"

#ifndef RAM_SIZE
#error RAM_SIZE (guest memory in bytes) is required
#endif
#if !defined(INVERTED_OWN) || !defined(INVERTED_OTHER)
#error INVERTED_OWN and INVERTED_OTHER (the complements of this VM's and the other VM's secrets) are required
#endif

extern char __image_end[];
void fill_secret(uint64_t *start, uint64_t *end, uint64_t inverted_secret);
uint64_t count_secret(const uint64_t *start, const uint64_t *end, uint64_t inverted_secret);

int serial_getc_wait(void);

int main(void)
{
    uint64_t *ram = (uint64_t *)0, *ram_end = (uint64_t *)(uintptr_t)RAM_SIZE;
    uint64_t *free_start = (uint64_t *)(((uintptr_t)__image_end + 4095) & ~4095UL);
    uint64_t expected = (uint64_t)(ram_end - free_start);

    idt_init();
    fill_secret(free_start, ram_end, INVERTED_OWN);
    puts("filled 0x");
    put_hex((uint64_t)(uintptr_t)free_start, 8);
    puts("-0x");
    put_hex((uint64_t)(uintptr_t)ram_end, 8);
    puts(" count=");
    put_dec(expected);
    puts("\n");
    serial_getc_wait(); /* the host sends a byte once every VM has filled its RAM */
    uint64_t other = count_secret(ram, ram_end, INVERTED_OTHER);
    uint64_t own = count_secret(ram, ram_end, INVERTED_OWN);
    puts("scanned own=");
    put_dec(own);
    puts(" other=");
    put_dec(other);
    puts("\n");
    return (other == 0 && own == expected) ? 0 : 1;
}
