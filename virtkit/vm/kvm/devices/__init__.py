"""Legacy platform devices of the native VMM: 8250 UART, i8042, the exit port, the POST port."""
