/* A "kernel" entered at a Linux 64-bit entry (bzImage +0x200, or an ELF's e_entry): RSI = struct boot_params.
 * It reports what the loader put in the zero page, then exits with status 0x42 if the header looks right. */
#include "serial.h"

#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0
#define HDR_HEADER 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228

static uint32_t u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t u64(const uint8_t *p) { return u32(p) | (uint64_t)u32(p + 4) << 32; }

void linux64_main(const uint8_t *bp)
{
    field("boot_params", (uintptr_t)bp);
    text("cmdline", (const char *)(uintptr_t)u32(bp + HDR_CMD_LINE_PTR), 4096);
    field("loader", bp[HDR_TYPE_OF_LOADER]);
    field("loadflags", bp[HDR_LOADFLAGS]);
    field("version", bp[HDR_VERSION] | bp[HDR_VERSION + 1] << 8);
    uint8_t n = bp[BP_E820_ENTRIES];
    field("e820", n);
    for (int i = 0; i < n; i++) {
        const uint8_t *e = bp + BP_E820_TABLE + 20 * i;
        puts("e820_entry=");
        puthex(u64(e));
        putc(',');
        puthex(u64(e + 8));
        putc(',');
        puthex(u32(e + 16));
        putc('\n');
    }
    uint32_t initrd = u32(bp + HDR_RAMDISK_IMAGE), initrd_size = u32(bp + HDR_RAMDISK_SIZE);
    field("initrd_size", initrd_size);
    if (initrd_size)
        text("initrd", (const char *)(uintptr_t)initrd, initrd_size);
    const uint8_t *magic = bp + HDR_HEADER;
    finish(magic[0] == 'H' && magic[1] == 'd' && magic[2] == 'r' && magic[3] == 'S' ? 0x42 : 0x13);
}
