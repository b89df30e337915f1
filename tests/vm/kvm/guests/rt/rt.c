/* The guest runtime: COM1 output, the exit port, the IDT and its dispatch, PIC, IOAPIC, LAPIC and PIT helpers. */
#include "rt.h"

/* gcc may emit calls to these even in freestanding code (struct copies, zeroing) */
void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

/* ---- serial ---------------------------------------------------------------------------------------------- */

void putc(char c)
{
    /* LSR bit 5: THR empty. The VMM's UART is always empty, so this costs one port read per byte. */
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (uint8_t)c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void put_hex(uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--)
        putc(hex[(v >> (i * 4)) & 0xf]);
}

void put_dec(uint64_t v)
{
    char buf[21];
    int i = sizeof(buf);
    buf[--i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

void put_bytes_hex(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        put_hex(b[i], 2);
}

void exit(int status)
{
    outb(EXIT_PORT, (uint8_t)status);
    /* a VMM without the exit port (QEMU without isa-debug-exit) gets here: halt for good */
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- IDT and dispatch ------------------------------------------------------------------------------------ */

struct idt_entry {
    uint16_t offset_lo, selector;
    uint8_t ist, type_attr;
    uint16_t offset_mid;
    uint32_t offset_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler handlers[256];
extern char isr_stubs[];

void idt_init(void)
{
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int v = 0; v < 256; v++) {
        uint64_t addr = (uint64_t)(uintptr_t)(isr_stubs + 16 * v);
        idt[v] = (struct idt_entry){(uint16_t)addr, cs, 0, 0x8e, (uint16_t)(addr >> 16), (uint32_t)(addr >> 32), 0};
    }
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
    pic_init(0);
}

void irq_set_handler(int vector, irq_handler fn) { handlers[vector] = fn; }

void isr_dispatch(uint64_t vector, uint64_t error, const uint64_t *frame)
{
    if (vector < 32) {
        puts("\nEXCEPTION vector=");
        put_dec(vector);
        puts(" error=0x");
        put_hex(error, 8);
        puts(" rip=0x");
        put_hex(frame[0], 8);
        puts("\n");
        exit(0xee);
    }
    if (vector == VECTOR_SPURIOUS)
        return; /* spurious interrupts take no EOI */
    if (!handlers[vector]) {
        puts("\nUNEXPECTED vector=0x");
        put_hex(vector, 2);
        puts("\n");
        exit(0xed);
    }
    handlers[vector]((int)vector);
    if (vector >= PIC_VECTOR_BASE && vector < PIC_VECTOR_BASE + 16) {
        if (vector >= PIC_VECTOR_BASE + 8)
            outb(0xa0, 0x20);
        outb(0x20, 0x20);
    }
    /* ExtINT (PIC) deliveries set no LAPIC ISR bit; an EOI with none in service is ignored */
    lapic_eoi();
}

/* ---- serial input -------------------------------------------------------------------------------------- */

static void serial_irq(int vector) { (void)vector; /* the waiter reads LSR itself */ }

int serial_getc_wait(void)
{
    irq_set_handler(VECTOR_SERIAL, serial_irq);
    ioapic_route(COM1_GSI, VECTOR_SERIAL);
    outb(COM1 + 1, 0x01); /* IER: received-data interrupt */
    while (!(inb(COM1 + 5) & 0x01))
        sti_hlt();
    int c = inb(COM1);
    outb(COM1 + 1, 0x00);
    ioapic_mask(COM1_GSI);
    return c;
}

/* ---- PIC ------------------------------------------------------------------------------------------------- */

void pic_init(uint8_t unmasked_irqs)
{
    /* the reset PIC would deliver IRQ n as vector n (an exception vector): remap before anything can fire */
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, PIC_VECTOR_BASE);
    outb(0xa1, PIC_VECTOR_BASE + 8);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, (uint8_t)~unmasked_irqs);
    outb(0xa1, 0xff);
}

/* ---- IOAPIC ---------------------------------------------------------------------------------------------- */

uint32_t ioapic_read(uint32_t reg)
{
    mmio_write32(IOAPIC_BASE, reg);
    return mmio_read32(IOAPIC_BASE + 0x10);
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(IOAPIC_BASE, reg);
    mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(int pin, int vector)
{
    ioapic_write(0x11 + 2 * pin, 0);                 /* destination APIC ID 0 */
    ioapic_write(0x10 + 2 * pin, (uint32_t)vector); /* fixed, physical, active high, edge, unmasked */
}

void ioapic_mask(int pin) { ioapic_write(0x10 + 2 * pin, 1u << 16); }

/* ---- LAPIC ----------------------------------------------------------------------------------------------- */

uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
void lapic_eoi(void) { lapic_write(0xb0, 0); }

void lapic_timer_start(int vector, uint32_t count, bool periodic)
{
    lapic_write(0x3e0, 0xa);                                      /* divide by 128 */
    lapic_write(0x320, (uint32_t)vector | (periodic ? 1u << 17 : 0)); /* LVT timer, unmasked */
    lapic_write(0x380, count);                                    /* initial count starts it */
}

void lapic_timer_stop(void)
{
    lapic_write(0x380, 0);
    lapic_write(0x320, 1u << 16);
}

/* ---- PIT ------------------------------------------------------------------------------------------------- */

void pit_oneshot(uint16_t count)
{
    outb(0x43, 0x30); /* channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count), binary */
    outb(0x40, (uint8_t)count);
    outb(0x40, (uint8_t)(count >> 8));
}

/* ---- watchdog -------------------------------------------------------------------------------------------- */

volatile bool watchdog_fired;

static void watchdog_handler(int vector)
{
    (void)vector;
    watchdog_fired = true;
}

void watchdog_arm(uint64_t ns)
{
    uint64_t count = ns / LAPIC_TIMER_NS_PER_COUNT;
    watchdog_fired = false;
    irq_set_handler(VECTOR_WATCHDOG, watchdog_handler);
    lapic_timer_start(VECTOR_WATCHDOG, count > 0xffffffffu ? 0xffffffffu : (uint32_t)count, false);
}

void watchdog_disarm(void) { lapic_timer_stop(); }
