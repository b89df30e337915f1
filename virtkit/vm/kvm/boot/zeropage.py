"""The Linux zero page (struct boot_params): its layout, under the kernel's names, and how virtkit fills it.

Offsets are those of arch/x86/include/uapi/asm/bootparam.h; setup_header fields are given at their offset in
boot_params, which is also their offset in a bzImage file (the header is copied over unchanged).
"""

from __future__ import annotations

import struct

from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.memory import GuestMemory

BOOT_PARAMS_SIZE = 4096

# struct boot_params
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_HDR = 0x1F1
BP_HDR_END = 0x290               # edd_mbr_sig_buffer starts here: no copied header may run past it
BP_E820_TABLE = 0x2D0
E820_ENTRY_SIZE = 20             # struct boot_e820_entry: u64 addr, u64 size, u32 type (packed)
E820_MAX_ENTRIES_ZEROPAGE = 128

# struct setup_header
HDR_SETUP_SECTS = 0x1F1
HDR_SYSSIZE = 0x1F4
HDR_VID_MODE = 0x1FA
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200                 # a short jmp: its displacement byte (0x201) is the header's length past 0x202
HDR_HEADER = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_RELOCATABLE_KERNEL = 0x234
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260
HDR_END = 0x26C                  # end of the fields protocol 2.15 defines

HDR_MAGIC = b"HdrS"
BOOT_FLAG_MAGIC = 0xAA55
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80
XLF_KERNEL_64 = 0x01
LOADER_TYPE_UNDEFINED = 0xFF     # boot.rst: 0xFF for a loader without an assigned ID
VIDEO_MODE_NORMAL = 0xFFFF
SYNTHETIC_VERSION = 0x020F       # what the header claims when there is no bzImage to copy one from


def put(buf: bytearray, offset: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, buf, offset, value)


def get(buf: bytes | bytearray, offset: int, fmt: str) -> int:
    return int(struct.unpack_from("<" + fmt, buf, offset)[0])


def build_zero_page(mem: GuestMemory, *, header: bytes = b"", cmdline_addr: int, cmdline_limit: int,
                    initrd: tuple[int, int] | None) -> bytearray:
    """boot_params with the header copied in (or a synthetic one), the command line, the initrd and the e820 map.

    The bzImage loader adds what only a bzImage needs (heap, code32_start); flat and ELF-long64 kernels get a
    synthetic header carrying the same fields, so a kernel entered at its 64-bit entry finds what it reads.
    """
    bp = bytearray(BOOT_PARAMS_SIZE)
    if header:
        bp[BP_HDR:BP_HDR + len(header)] = header
    else:
        put(bp, HDR_BOOT_FLAG, "H", BOOT_FLAG_MAGIC)
        bp[HDR_HEADER:HDR_HEADER + 4] = HDR_MAGIC
        put(bp, HDR_VERSION, "H", SYNTHETIC_VERSION)
        put(bp, HDR_LOADFLAGS, "B", LOADED_HIGH)
        put(bp, HDR_CMDLINE_SIZE, "I", cmdline_limit)
    put(bp, HDR_TYPE_OF_LOADER, "B", LOADER_TYPE_UNDEFINED)
    put(bp, HDR_VID_MODE, "H", VIDEO_MODE_NORMAL)
    put(bp, HDR_CMD_LINE_PTR, "I", cmdline_addr)
    if initrd is not None:
        put(bp, HDR_RAMDISK_IMAGE, "I", initrd[0])
        put(bp, HDR_RAMDISK_SIZE, "I", initrd[1] - initrd[0])
    entries = mem.e820()
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"the e820 map has {len(entries)} entries; the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}")
    put(bp, BP_E820_ENTRIES, "B", len(entries))
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + i * E820_ENTRY_SIZE, addr, size, kind)
    return bp
