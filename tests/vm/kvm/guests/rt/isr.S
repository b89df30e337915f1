/* 256 interrupt stubs, 16 bytes apart, all entering isr_dispatch(vector, error_code, frame). */
    .text
    .code64
    .globl isr_stubs
    .balign 16
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    /* exceptions that push an error code themselves; every other vector gets a zero in its place */
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    /* the caller-saved registers: isr_dispatch is a C function and keeps the rest */
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov 72(%rsp), %rdi          /* vector */
    mov 80(%rsp), %rsi          /* error code */
    lea 88(%rsp), %rdx          /* rip, cs, rflags, rsp, ss */
    cld
    call isr_dispatch
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq
