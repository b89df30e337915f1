"""A container's stdio as the supervisor holds it: output copied into the log, stdin kept open for whoever attaches.

Without a terminal the container gets two pipes for stdout and stderr (and, when it is interactive, one for stdin;
else /dev/null). With one (process.terminal), the runtime hands the pty's master over a console socket (runc's
protocol, container/console.py): everything the container writes comes out of the master, as stdout, and input
goes into it. The supervisor keeps the stdin pipe's write end (or the master) for the container's life, so an
attached client may come and go and virtkitd may restart; it hands a copy to virtkitd on request (SCM_RIGHTS).
"""

from __future__ import annotations

import itertools
import os
import socket
import sys

from virtkit.core.errors import SystemFailure
from virtkit.core.logs import STDERR, STDOUT

_counter = itertools.count()


class ContainerIO:
    def __init__(self, log_path: str, run_dir: str, *, stdin: bool = False, tty: bool = False) -> None:
        self.log_fd = -1
        self.pipes: dict[int, int] = {}         # fds read into the log -> STDOUT | STDERR
        self.child: list[int] = []              # the container's ends, closed here once it has them
        self.stdin_w: int | None = None         # the stdin pipe's write end (no terminal)
        self.master: int | None = None          # the terminal's master (with one)
        self.console_path: str | None = None
        self._listener: socket.socket | None = None
        try:
            self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if tty:
                # unique per supervisor and request; short: unix socket paths hold 108 bytes
                self.console_path = os.path.join(run_dir, f"console-{os.getpid()}-{next(_counter)}.sock")
                self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._listener.bind(self.console_path)
                self._listener.listen(1)
                return
            if stdin:
                r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
                self.child.append(r)
            else:
                self.child.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for stream in (STDOUT, STDERR):
                r, w = os.pipe2(os.O_CLOEXEC)
                self.pipes[r] = stream
                self.child.append(w)
        except BaseException:
            self.close()
            raise

    @property
    def child_stdio(self) -> tuple[int, int, int] | None:
        """What the runtime dup2()s onto the container's 0, 1, 2 (None with a terminal: the pty is all three)."""
        return (self.child[0], self.child[1], self.child[2]) if self.child else None

    def created(self) -> None:
        """The container holds its ends now; with a terminal, take the master the runtime sent during create."""
        for fd in self.child:
            os.close(fd)
        self.child = []
        if self._listener is None:
            return
        try:
            self._listener.settimeout(5)
            conn, _ = self._listener.accept()
            with conn:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        except OSError as exc:
            raise SystemFailure(f"terminal: the runtime sent no pty master: {exc}") from exc
        finally:
            self._close_listener()
        if not fds:
            raise SystemFailure("terminal: the runtime sent no pty master")
        self.master = fds[0]
        os.set_inheritable(self.master, False)
        self.pipes[self.master] = STDOUT

    @property
    def input_fd(self) -> int | None:
        return self.master if self.master is not None else self.stdin_w

    def close_stdin(self) -> None:
        """EOF on the container's stdin (its pipe; a terminal has no EOF of its own: write ^D into it instead)."""
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def pump(self, fd: int) -> bool:
        """Copy what one output fd holds now into the log; False once it is at its end (a pty master: EIO)."""
        from virtkit.container import logfile

        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                return False
            try:
                os.write(self.log_fd, logfile.encode(self.pipes[fd], data))
            except OSError as exc:  # a full disk loses output, never the supervisor
                print(f"supervisor: cannot write log: {exc}", file=sys.stderr, flush=True)
            if len(data) < 65536:
                return True

    def close_output(self, fd: int) -> None:
        os.close(fd)
        del self.pipes[fd]
        if fd == self.master:
            self.master = None
        if not self.pipes and self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1

    def close(self) -> None:
        for fd in list(self.pipes):
            self.close_output(fd)
        for fd in self.child:
            os.close(fd)
        self.child = []
        self.close_stdin()
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1
        self._close_listener()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.console_path or "")
            except FileNotFoundError:
                pass
