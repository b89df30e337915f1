/* serial_echo: read one line from COM1, each byte waited for on the UART's received-data interrupt (IOAPIC pin 4),
   and print it back; exit 0. */
#include "rt.h"

int main(void)
{
    char line[64];
    int n = 0;
    idt_init();
    puts("ready\n");
    for (;;) {
        int c = serial_getc_wait();
        if (c == '\n' || n == (int)sizeof(line) - 1)
            break;
        line[n++] = (char)c;
    }
    line[n] = 0;
    puts("echo: ");
    puts(line);
    puts("\n");
    return 0;
}
