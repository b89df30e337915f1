/* bench_exit_loop: 'S' on COM1, ITERATIONS writes to port 0x80 (each one a VM exit the VMM handles and
   ignores), 'E' and a newline, exit 0. The time between 'S' and 'E' is ITERATIONS round trips. */
#include "bench_exit.h"

#ifndef ITERATIONS
#error ITERATIONS is required
#endif

    .section .text.entry, "ax"
    BENCH_CODE
    .globl _start
_start:
    mov $0x3f8, %dx
    mov $'S', %al
    out %al, %dx
    mov $ITERATIONS, %ecx
1:  out %al, $0x80
    dec %ecx
    jnz 1b
    mov $'E', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    BENCH_EXIT
