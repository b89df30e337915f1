/* dirty: write a known set of pages, using no stack and no memory besides them, report on COM1, wait for one
   byte of serial input (polling, so no interrupt frame lands anywhere), write a second set, report, halt. */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    movl $0x11111111, 0x300000
    movl $0x22222222, 0x305000
    movl $0x33333333, 0x3ff000
    mov $'1', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $'\n', %al
    out %al, %dx

    mov $0x3fd, %dx             /* LSR: data ready in bit 0 */
1:  in %dx, %al
    test $1, %al
    jz 1b
    mov $0x3f8, %dx
    in %dx, %al

    movl $0x44444444, 0x301000
    movl $0x55555555, 0x305000  /* written again: the log was cleared when the host read it */
    movabs $0x6666666666666666, %rax
    mov %rax, 0x302ffc          /* one 8-byte write across the 0x302000/0x303000 boundary */
    movl $0x77777777, 0xfff000  /* the last page of 16 MiB */
    mov $'2', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
2:  hlt
    jmp 2b
