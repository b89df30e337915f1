"""`virtkit exec` into a VM: a helper process that runs one command through the guest agent, as a runtime would.

virtkitd's exec session (api/exec_session.py) runs what the driver's exec_argv returns and relays its stdin,
stdout, stderr and exit code; for a VM that is this helper: our stdin goes to the guest command's stdin, its
stdout and stderr come out on ours, and we exit with its exit code. A command that cannot run exits 127 (not
found) or 126 (not executable) with the reason on stderr, as Docker does; an agent that does not answer, 125.

Usage: python -m virtkit.vm.qemu.agent_exec [--name VM] [--env NAME=VALUE]... [--timeout S] SOCKET -- CMD [ARG...]
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterator

from virtkit.core.errors import VirtkitError
from virtkit.vm.qemu.agent import TIMEOUT, AgentCommandError, GuestAgent, exit_code_of_exec_error

AGENT_FAILED = 125


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _stdin_is_devnull() -> bool:
    """exec without -i gets /dev/null: then the guest command gets no stdin pipe either (its stdin: /dev/null)."""
    try:
        st, null = os.fstat(0), os.stat(os.devnull)
    except OSError:
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def _stdin_chunks() -> Iterator[bytes]:
    while True:
        data = os.read(0, 65536)
        if not data:
            return
        yield data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="virtkit.vm.qemu.agent_exec")
    p.add_argument("--name", default="the VM")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    p.add_argument("socket")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print("virtkit: exec: no command given", file=sys.stderr)
        return 2
    agent = GuestAgent(a.socket, name=a.name, timeout=a.timeout)
    try:
        return agent.run(cmd, env=a.env or None, stdin=None if _stdin_is_devnull() else _stdin_chunks(),
                         on_stdout=lambda d: _write_all(1, d), on_stderr=lambda d: _write_all(2, d))
    except AgentCommandError as exc:
        code = exit_code_of_exec_error(exc)
        if code == 127:
            print(f"virtkit: exec: {cmd[0]!r}: executable file not found in the guest's $PATH ({exc.desc})",
                  file=sys.stderr)
        elif code == 126:
            print(f"virtkit: exec: {cmd[0]!r}: cannot be run in the guest ({exc.desc})", file=sys.stderr)
        else:
            print(f"virtkit: error: VM '{a.name}': {exc.message}", file=sys.stderr)
        return code or AGENT_FAILED
    except VirtkitError as exc:
        print(f"virtkit: error: {exc.message}", file=sys.stderr)
        return AGENT_FAILED
    except BrokenPipeError:
        return AGENT_FAILED


if __name__ == "__main__":
    sys.exit(main())
