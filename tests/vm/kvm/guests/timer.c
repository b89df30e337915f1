/* timer: HLT until a timer interrupt wakes the CPU. MODE 1: PIT IRQ0 through IOAPIC pin 2; MODE 2: PIT IRQ0
   through the PIC and LAPIC LINT0 (ExtINT); MODE 3: LAPIC timer, one-shot. Prints what woke it, exits 0. */
#include "rt.h"

#define VECTOR_PIN2 0x32
#define VECTOR_PIN0 0x30 /* IRQ0 on pin 0 is the other wiring boards use; reported, not accepted */
#define VECTOR_LAPIC_TIMER 0x40
#define PIT_10MS 11932   /* 1.193182 MHz */
#define LAPIC_10MS (10000000 / LAPIC_TIMER_NS_PER_COUNT)

static volatile int woken_by = -1;
static volatile int wakeups;

static void on_timer(int vector) { woken_by = vector; }

static const char *source(int vector)
{
    switch (vector) {
    case VECTOR_PIN2:
        return "pit-ioapic-pin2";
    case VECTOR_PIN0:
        return "pit-ioapic-pin0";
    case PIC_VECTOR_BASE:
        return "pit-pic";
    case VECTOR_LAPIC_TIMER:
        return "lapic-timer";
    }
    return "?";
}

int main(void)
{
    idt_init();
    irq_set_handler(VECTOR_PIN2, on_timer);
    irq_set_handler(VECTOR_PIN0, on_timer);
    irq_set_handler(PIC_VECTOR_BASE, on_timer);
    irq_set_handler(VECTOR_LAPIC_TIMER, on_timer);
#if MODE == 1
    ioapic_route(2, VECTOR_PIN2);
    ioapic_route(0, VECTOR_PIN0);
    watchdog_arm(2000000000ull);
    pit_oneshot(PIT_10MS);
#elif MODE == 2
    pic_init(0x01); /* IRQ0 only; the IOAPIC pins stay masked, so the PIC is the only path */
    watchdog_arm(2000000000ull);
    pit_oneshot(PIT_10MS);
#elif MODE == 3
    lapic_timer_start(VECTOR_LAPIC_TIMER, LAPIC_10MS, false);
#else
#error MODE must be 1, 2 or 3
#endif
    puts("halting\n");
    while (woken_by < 0 && !watchdog_fired) {
        sti_hlt();
        wakeups++;
    }
    if (woken_by < 0) {
        puts("timeout: no timer interrupt within 2 s\n");
        return 1;
    }
    watchdog_disarm();
    puts("woken by ");
    puts(source(woken_by));
    puts(" vector=0x");
    put_hex((uint64_t)woken_by, 2);
    puts(" halts=");
    put_dec((uint64_t)wakeups);
    puts("\n");
    return 0;
}
