"""What a user sees of a VM's serial console: the guest's output, without kernel messages or virtkit's marker."""

from __future__ import annotations

import re

from virtkit.vm.qemu.initramfs import EXIT_MARKER

# "[    0.226181] PCI: ..." - a printk line that made it past `quiet`
_KERNEL_LINE = re.compile(rb"^\[\s*\d+\.\d+\] ")


class ConsoleFilter:
    """Line-buffered: feed() chunks as they come, flush() at the end; returns what to show."""

    def __init__(self) -> None:
        self._partial = b""
        self._marker = EXIT_MARKER.encode()

    def _keep(self, line: bytes) -> bool:
        bare = line.rstrip(b"\r\n")
        return not (_KERNEL_LINE.match(bare) or bare.startswith(self._marker))

    def feed(self, data: bytes) -> bytes:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        # the guest's tty turns "\n" into "\r\n" (onlcr); a user's program wrote "\n"
        return b"".join(line.removesuffix(b"\r") + b"\n" for line in lines if self._keep(line))

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest if rest and self._keep(rest) else b""
