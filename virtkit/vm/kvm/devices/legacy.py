"""Small port-I/O devices: the i8042 (its reset line), the exit port, the POST/debug port."""

from __future__ import annotations

from collections.abc import Callable

I8042_CMD_RESET = 0xFE
I8042_STATUS_SYSTEM = 0x04


class I8042:
    """Just enough of the keyboard controller: Linux resets the machine by pulsing its reset line (0xFE to 0x64)."""

    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset

    def read(self, offset: int, size: int) -> int:
        # offset 0 is the data port (0x60), offset 4 the status port (0x64): no data, input buffer empty
        return 0 if offset == 0 else I8042_STATUS_SYSTEM

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and value & 0xFF == I8042_CMD_RESET:
            self._reset()


class ExitPort:
    """A byte written here ends the VM; it becomes the exit status of virtkit-vmm."""

    def __init__(self, exit_with: Callable[[int], None]) -> None:
        self._exit_with = exit_with

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self._exit_with(value & 0xFF)


class PostPort:
    """Port 0x80: firmware and kernels write POST codes and use it as an I/O delay; counted, otherwise ignored."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = 0

    def read(self, offset: int, size: int) -> int:
        return self.last

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        self.last = value & 0xFF
