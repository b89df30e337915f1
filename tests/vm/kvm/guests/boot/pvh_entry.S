/* A PVH test kernel: entered in 32-bit protected mode, paging off, EBX = struct hvm_start_info (as Linux's
 * pvh_start_xen is). It builds its own GDT and page tables, enters long mode the way Linux does, and calls
 * pvh_main(start_info) in 64-bit C. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text.head, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    mov %ebx, %esi
    mov $stack_top, %esp
    /* identity-map the first 1 GiB with 2 MiB pages: PML4[0] -> PDPT[0] -> PD */
    movl $pdpt + 3, pml4
    movl $pd + 3, pdpt
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB */
    mov %eax, pd(, %ecx, 8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    lgdt gdt_desc
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %esi, %edi              /* start_info, zero-extended */
    lea stack_top(%rip), %rsp
    call pvh_main
2:  hlt
    jmp 2b

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .balign 4096
pml4: .space 4096
pdpt: .space 4096
pd:   .space 4096
    .balign 16
    .space 8192
stack_top:
