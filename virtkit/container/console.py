"""The container's terminal: a pty from the container's devpts, its master handed over --console-socket.

runc's protocol, which conmon and podman speak: one sendmsg on the unix socket whose data is the pty
name and whose SCM_RIGHTS ancillary data carries the master fd.
"""

from __future__ import annotations

import _socket  # the C module: socket.py builds enums at import, ~4 ms of every container start
import fcntl
import os
import struct
import termios

from virtkit.core.errors import InvalidArgument, SystemFailure

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414


def connect(path: str) -> _socket.socket:
    """Connect to the console socket early, while the host's filesystem is still visible."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        raise InvalidArgument(f"console-socket: cannot connect to {path}: {exc.strerror}") from exc
    return s


def open_pty(size: dict | None = None) -> tuple[int, int, str]:
    """Open /dev/ptmx (the container's, after pivot_root); returns (master, slave, slave name)."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
        name = f"/dev/pts/{n}"
        slave = os.open(name, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        raise SystemFailure(f"open terminal: {exc.strerror}") from exc
    if size and (size.get("height") or size.get("width")):
        fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", size.get("height", 0), size.get("width", 0), 0, 0))
    return master, slave, name


def send_master(sock: _socket.socket, master: int, name: str) -> None:
    try:
        sock.sendmsg([name.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))])
    except OSError as exc:
        raise SystemFailure(f"send terminal to console socket: {exc.strerror}") from exc


def become_tty(slave: int) -> None:
    """Make `slave` the controlling terminal and stdio of this (session-leading) process."""
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    termios.tcgetattr(0)  # fail early, with a clear error, if it is not a tty after all
