/* irqfd: route IOAPIC pin GSI to a vector, say "ready", HLT; the host fires the GSI through an irqfd. */
#include "rt.h"

#define VECTOR_IRQFD 0x39

static volatile int fired;

static void on_irq(int vector)
{
    (void)vector;
    fired++;
}

int main(void)
{
    idt_init();
    irq_set_handler(VECTOR_IRQFD, on_irq);
    ioapic_route(GSI, VECTOR_IRQFD);
    watchdog_arm(20000000000ull); /* 20 s: the host decides when to fire; this only bounds a lost interrupt */
    puts("ready gsi=");
    put_dec(GSI);
    puts("\n");
    int halts = 0;
    while (!fired && !watchdog_fired) {
        sti_hlt();
        halts++;
    }
    watchdog_disarm();
    if (!fired) {
        puts("timeout: no interrupt on the irqfd GSI\n");
        return 1;
    }
    puts("woken by gsi=");
    put_dec(GSI);
    puts(" vector=0x");
    put_hex(VECTOR_IRQFD, 2);
    puts(" count=");
    put_dec((uint64_t)fired);
    puts(" halts=");
    put_dec((uint64_t)halts);
    puts("\n");
    return 0;
}
