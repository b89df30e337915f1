/* The benchmark guest for bench/vmm.py: a PVH ELF both QEMU and virtkit-vmm boot the same way (32-bit entry).
 * It writes 'A' to COM1 at once (first byte), then LOOPS writes to port 0x80 (the cheapest exit: a port the
 * VMM handles and ignores), then 'B', then its status byte to the exit port 0xf4. */
    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18                 /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start32

    .text
    .code32
    .globl _start32
_start32:
    mov $0x3f8, %dx
    mov $'A', %al
    out %al, %dx
    mov $0x80, %dx
    mov $LOOPS, %ecx
1:  out %al, %dx
    dec %ecx
    jnz 1b
    mov $0x3f8, %dx
    mov $'B', %al
    out %al, %dx
    mov $3, %al
    out %al, $0xf4
2:  hlt
    jmp 2b
