/* 64-bit entry of a flat guest: record the entry state, switch to the image's own stack, clear .bss, run main. */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    mov %rsp, entry_rsp
    pushfq                      /* uses the VMM-provided stack once: it must be mapped, writable RAM */
    popq entry_rflags
    mov $stack_top, %rsp
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    call main
    mov %eax, %edi
    call exit

    .data
    .balign 8
    .globl entry_rsp, entry_rflags
entry_rsp: .quad 0
entry_rflags: .quad 0

    .section .stack, "aw", @nobits
    .balign 4096
    .space 16384
stack_top:
