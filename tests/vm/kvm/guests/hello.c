/* hello: a line on COM1, the entry state the VMM promised (mode, segments, stack, interrupts), then exit 42. */
#include "rt.h"

#define MSR_EFER 0xc0000080
#define EXIT_STATUS 42

static uint16_t selector(int which)
{
    uint16_t v = 0;
    if (which == 0)
        __asm__ volatile("mov %%cs, %0" : "=r"(v));
    else if (which == 1)
        __asm__ volatile("mov %%ds, %0" : "=r"(v));
    else
        __asm__ volatile("mov %%ss, %0" : "=r"(v));
    return v;
}

int main(void)
{
    uint64_t cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    puts("Hello from a virtkit guest\n");
    puts("entry cs=0x");
    put_hex(selector(0), 2);
    puts(" ds=0x");
    put_hex(selector(1), 2);
    puts(" ss=0x");
    put_hex(selector(2), 2);
    puts(" rsp=0x");
    put_hex(entry_rsp, 8);
    puts(" if=");
    put_dec((entry_rflags >> 9) & 1);
    puts(" lma=");
    put_dec((rdmsr(MSR_EFER) >> 10) & 1);
    puts(" pg=");
    put_dec(cr0 >> 31);
    puts(" pae=");
    put_dec((cr4 >> 5) & 1);
    /* the identity map must reach the top of the 32-bit space: read the IOAPIC's version register there */
    puts(" ioapic_version=0x");
    put_hex(ioapic_read(1) & 0xff, 2);
    puts("\n");
    return EXIT_STATUS;
}
