/* The guest runtime: serial output, exit, port and MMIO access, interrupts (IDT, PIC, IOAPIC, LAPIC, PIT). */
#ifndef VIRTKIT_GUEST_RT_H
#define VIRTKIT_GUEST_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define COM1 0x3f8
#define EXIT_PORT 0xf4

/* Vectors: the PIC is remapped to 0x20-0x2f; IOAPIC and LAPIC sources use 0x30 and up. */
#define PIC_VECTOR_BASE 0x20
#define VECTOR_WATCHDOG 0x4f
#define VECTOR_SERIAL 0x4e
#define COM1_GSI 4
#define VECTOR_SPURIOUS 0xff

#define LAPIC_BASE 0xfee00000UL
#define IOAPIC_BASE 0xfec00000UL

/* KVM's LAPIC timer counts at 1 GHz (APIC bus cycle 1 ns); with divide-by-128 one count is 128 ns. */
#define LAPIC_TIMER_NS_PER_COUNT 128

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t mmio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }

/* Atomically enable interrupts and halt: STI's one-instruction shadow keeps an interrupt from landing between. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* serial (COM1) */
void putc(char c);
void puts(const char *s);
void put_hex(uint64_t v, int digits);
void put_dec(uint64_t v);
void put_bytes_hex(const void *p, size_t n);
int serial_getc_wait(void); /* one byte of serial input, halting on the UART interrupt until it comes */
__attribute__((noreturn)) void exit(int status);

/* entry state, recorded by the entry code before it changes anything */
extern uint64_t entry_rsp, entry_rflags;

/* interrupts */
typedef void (*irq_handler)(int vector);
void idt_init(void); /* also remaps and masks the PIC, so nothing arrives on an exception vector */
void irq_set_handler(int vector, irq_handler fn);
void pic_init(uint8_t unmasked_irqs);   /* remapped to PIC_VECTOR_BASE; bit n set = IRQ n enabled */
void ioapic_route(int pin, int vector); /* edge, active high, fixed, to APIC 0 */
void ioapic_mask(int pin);
uint32_t ioapic_read(uint32_t reg);
void lapic_eoi(void);
uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
void lapic_timer_start(int vector, uint32_t count, bool periodic);
void lapic_timer_stop(void);
void pit_oneshot(uint16_t count); /* channel 0, mode 0: one IRQ0 after count / 1.193182 MHz */

/* A one-shot LAPIC timer that sets watchdog_fired: waits poll it so that a lost interrupt ends as a report. */
extern volatile bool watchdog_fired;
void watchdog_arm(uint64_t ns);
void watchdog_disarm(void);

#endif
