/* The PVH test kernel's 64-bit part: reports what the loader put in struct hvm_start_info, then exits with
 * status 0x42 if the magic and version are right. */
#include "serial.h"

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
struct hvm_modlist_entry { uint64_t paddr, size, cmdline_paddr, reserved; };
struct hvm_memmap_table_entry { uint64_t addr, size; uint32_t type, reserved; };

void pvh_main(const struct hvm_start_info *si)
{
    field("start_info", (uintptr_t)si);
    field("magic", si->magic);
    field("version", si->version);
    text("cmdline", (const char *)(uintptr_t)si->cmdline_paddr, 4096);
    field("rsdp", si->rsdp_paddr);
    field("memmap", si->memmap_entries);
    const struct hvm_memmap_table_entry *map = (const void *)(uintptr_t)si->memmap_paddr;
    for (uint32_t i = 0; i < si->memmap_entries; i++) {
        puts("memmap_entry=");
        puthex(map[i].addr);
        putc(',');
        puthex(map[i].size);
        putc(',');
        puthex(map[i].type);
        putc('\n');
    }
    field("modules", si->nr_modules);
    if (si->nr_modules) {
        const struct hvm_modlist_entry *mod = (const void *)(uintptr_t)si->modlist_paddr;
        field("initrd_size", mod->size);
        text("initrd", (const char *)(uintptr_t)mod->paddr, mod->size);
    }
    finish(si->magic == 0x336ec578 && si->version >= 1 ? 0x42 : 0x13);
}
