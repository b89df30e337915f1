"""An 8250/16550A UART on port I/O: output to a sink, input from a queue, its interrupt line driven by level."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
IER_RDA, IER_THRE = 0x1, 0x2
IIR_NONE, IIR_THRE, IIR_RDA, IIR_FIFO = 0x1, 0x2, 0x4, 0xC0
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x1, 0x20, 0x40
MCR_LOOP, MCR_OUT2 = 0x10, 0x08
MSR_DCD, MSR_DSR, MSR_CTS = 0x80, 0x20, 0x10
INPUT_LIMIT = 64 * 1024


class Serial:
    """COM1 as Linux's 8250 driver and small guests expect it; a THR write goes to `sink` at once."""

    def __init__(self, sink: Callable[[bytes], None], set_irq: Callable[[bool], None]) -> None:
        self._sink = sink
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._input: collections.deque[int] = collections.deque()
        self.ier = 0
        self.lcr = 0x3
        self.mcr = MCR_OUT2
        self.scr = 0
        self.dll, self.dlh = 0x0C, 0
        self._thre_pending = False
        self._irq_level = False
        self.bytes_out = 0

    # -- BusDevice ------------------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read(offset)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        out = b""
        with self._lock:
            out = self._write(offset, value & 0xFF)
            self._update_irq()
        if out:
            self._sink(out)

    # -- host side --------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes typed at the host side: queued for the guest to read, RX interrupt raised."""
        with self._lock:
            room = INPUT_LIMIT - len(self._input)
            self._input.extend(data[:max(room, 0)])
            self._update_irq()

    def _read(self, offset: int) -> int:
        if self.lcr & LCR_DLAB and offset in (RBR_THR, IER):
            return self.dll if offset == RBR_THR else self.dlh
        if offset == RBR_THR:
            return self._input.popleft() if self._input else 0
        if offset == IER:
            return self.ier
        if offset == IIR_FCR:
            if self.ier & IER_RDA and self._input:
                return IIR_FIFO | IIR_RDA
            if self.ier & IER_THRE and self._thre_pending:
                self._thre_pending = False  # reading IIR with THRE as the cause clears it
                return IIR_FIFO | IIR_THRE
            return IIR_FIFO | IIR_NONE
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._input else 0)
        if offset == MSR:
            return MSR_DCD | MSR_DSR | MSR_CTS
        return self.scr

    def _write(self, offset: int, value: int) -> bytes:
        if self.lcr & LCR_DLAB and offset in (RBR_THR, IER):
            if offset == RBR_THR:
                self.dll = value
            else:
                self.dlh = value
            return b""
        if offset == RBR_THR:
            self.bytes_out += 1
            self._thre_pending = True
            if self.mcr & MCR_LOOP:
                self._input.append(value)
                return b""
            return bytes([value])
        if offset == IER:
            if value & IER_THRE and not self.ier & IER_THRE:
                self._thre_pending = True  # enabling THRE interrupts while empty raises one at once
            self.ier = value & 0x0F
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value
        elif offset == SCR:
            self.scr = value
        return b""

    def _update_irq(self) -> None:
        level = bool((self.ier & IER_RDA and self._input) or (self.ier & IER_THRE and self._thre_pending))
        if level != self._irq_level:
            self._irq_level = level
            self._set_irq(level)

    # -- snapshot ---------------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "scr": self.scr, "dll": self.dll,
                    "dlh": self.dlh, "thre_pending": self._thre_pending, "input": list(self._input)}

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.ier, self.lcr, self.mcr, self.scr = state["ier"], state["lcr"], state["mcr"], state["scr"]
            self.dll, self.dlh, self._thre_pending = state["dll"], state["dlh"], state["thre_pending"]
            self._input = collections.deque(state["input"])
            self._update_irq()
