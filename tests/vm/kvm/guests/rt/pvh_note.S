/* The PVH entry note (Xen ELF note 18, PHYS32_ENTRY): QEMU's -kernel and PVH-aware VMMs enter here in 32-bit
   protected mode with paging off. The address is 8 bytes wide, as in Linux's vmlinux: QEMU reads a 64-bit
   value from the notes of an ELF64. The note section must stay 4-byte aligned (QEMU aligns the name to it). */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 8                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad _start
