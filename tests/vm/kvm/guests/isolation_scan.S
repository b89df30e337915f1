/* Fill and count for the isolation guest. The secrets arrive inverted and are inverted in a register, so the
   values searched for never sit in the image, on the stack or anywhere else in guest memory. */
    .text
    .code64

/* void fill_secret(uint64_t *start, uint64_t *end, uint64_t inverted_secret) */
    .globl fill_secret
fill_secret:
    mov %rdx, %rax
    not %rax
    mov %rsi, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    cld
    rep stosq
    xor %eax, %eax
    ret

/* uint64_t count_secret(const uint64_t *start, const uint64_t *end, uint64_t inverted_secret) */
    .globl count_secret
count_secret:
    mov %rdx, %rax
    not %rax
    mov %rsi, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %edx, %edx
    cld
1:  test %rcx, %rcx
    jz 2f
    repne scasq
    jne 2f                      /* ran out without a match */
    inc %rdx
    jmp 1b
2:  mov %rdx, %rax
    xor %edx, %edx              /* leave no copy of the secret behind in a register either */
    ret
