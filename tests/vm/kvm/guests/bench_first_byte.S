/* bench_first_byte: one byte on COM1 at once, then exit 0. Flat: 64-bit entry; pvh: 32-bit PVH entry. The same
   instructions run in both modes, so the two VMMs run the same guest. */
#include "bench_exit.h"

    .section .text.entry, "ax"
    BENCH_CODE
    .globl _start
_start:
    mov $0x3f8, %dx
    mov $'!', %al
    out %al, %dx
    BENCH_EXIT
