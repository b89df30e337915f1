/* counter: on every LAPIC timer tick (periodic, TICK_NS) add one to a counter in memory and print it with a
   running sum kept in a register, until LIMIT. A snapshot restored elsewhere must continue both exactly. */
#include "rt.h"

#define VECTOR_TICK 0x41

volatile uint64_t counter; /* in guest RAM: the snapshot carries it */
static volatile uint64_t ticks;

static void on_tick(int vector)
{
    (void)vector;
    ticks++;
}

int main(void)
{
    uint64_t sum = 0; /* lives in a callee-saved register across the loop: the vCPU registers carry it */
    uint64_t seen = 0;
    idt_init();
    irq_set_handler(VECTOR_TICK, on_tick);
    lapic_timer_start(VECTOR_TICK, TICK_NS / LAPIC_TIMER_NS_PER_COUNT, true);
    while (counter < LIMIT) {
        while (ticks == seen)
            sti_hlt();
        seen = ticks;
        counter++;
        sum += counter;
        puts("count=");
        put_dec(counter);
        puts(" sum=");
        put_dec(sum);
        puts("\n");
    }
    lapic_timer_stop();
    puts("done\n");
    return 0;
}
