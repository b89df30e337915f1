/* cpuid: print what CPUID tells this guest: the vendor (leaf 0), the hypervisor signature (0x40000000) and the
   feature registers of leaves 1, 7 and 0x80000001, one "name=value" per line. */
#include "rt.h"

static void put_regs_text(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t words[3] = {a, b, c};
    for (int w = 0; w < 3; w++)
        for (int i = 0; i < 4; i++) {
            char ch = (char)(words[w] >> (8 * i));
            putc(ch >= 0x20 && ch < 0x7f ? ch : '?');
        }
}

static void put_reg(const char *name, uint32_t value)
{
    puts(name);
    puts("=");
    put_hex(value, 8);
    puts("\n");
}

int main(void)
{
    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t max_leaf = r[0];
    puts("vendor=");
    put_regs_text(r[1], r[3], r[2]); /* EBX, EDX, ECX spell it */
    puts("\nmax_leaf=");
    put_hex(max_leaf, 8);
    cpuid(0x40000000, 0, r);
    puts("\nhypervisor=");
    put_regs_text(r[1], r[2], r[3]); /* EBX, ECX, EDX */
    puts("\n");
    cpuid(1, 0, r);
    put_reg("leaf1_ecx", r[2]);
    put_reg("leaf1_edx", r[3]);
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        put_reg("leaf7_ebx", r[1]);
        put_reg("leaf7_ecx", r[2]);
        put_reg("leaf7_edx", r[3]);
    }
    cpuid(0x80000000, 0, r);
    if (r[0] >= 0x80000001) {
        cpuid(0x80000001, 0, r);
        put_reg("ext1_ecx", r[2]);
        put_reg("ext1_edx", r[3]);
    }
    return 0;
}
