/* Shared by the bench guests (assembly): code size for the format, and a way out on either VMM. */
#ifdef GUEST_FORMAT_PVH
#define BENCH_CODE .code32
#else
#define BENCH_CODE .code64
#endif

/* Exit status 0 through port 0xf4 (virtkit-vmm; QEMU with -device isa-debug-exit,iobase=0xf4). Where nothing
   answers that port, fault with an empty IDT: a triple fault, which QEMU run with -no-reboot turns into an exit. */
#define BENCH_EXIT \
    xor %eax, %eax; \
    out %al, $0xf4; \
    lidt empty_idt; \
    ud2; \
    .data; \
    .balign 8; \
empty_idt: \
    .word 0; \
    .quad 0; \
    .text
