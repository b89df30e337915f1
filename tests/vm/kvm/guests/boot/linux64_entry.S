/* The protected-mode part of the test kernel: offset 0 would be the 32-bit entry (this kernel has none),
 * offset 0x200 is the 64-bit entry the loader jumps to with RSI = boot_params. */
    .section .text.head, "ax"
    .code32
    .globl startup_32
startup_32:
    ud2

    .code64
    .org 0x200
    .globl startup_64
startup_64:
    cli
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    call linux64_main
1:  hlt
    jmp 1b

    .section .bss
    .balign 16
    .space 8192
stack_top:
