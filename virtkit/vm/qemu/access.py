"""Reaching into a running QEMU VM: `exec` through the guest agent and the serial console's input.

Files (besides virtkit.vm.process's): the agent's chardev socket $VIRTKIT_HOME/run/qga-<id[:16]>.sock (short:
unix socket paths are limited to 108 bytes), vms/<id>/console.in (a FIFO: what console sessions write to
it goes to the serial console, see open_console), vms/<id>/agent-seen (the start time of the run
in which the agent last answered).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import TYPE_CHECKING

from virtkit.core.errors import InvalidState, Unsupported
from virtkit.core.models import Instance
from virtkit.vm.qemu import agent

if TYPE_CHECKING:
    from virtkit.vm.process import VmProcessDriver as _Base
else:
    _Base = object

# how long after a start exec waits for the agent to come up: a busybox VM starts it ~2-3 s into its boot
# under TCG here, a Debian one (qemu-guest-agent under systemd) after ~20-30 s; later, agent.TIMEOUT
AGENT_BOOT_WAIT = 60.0
# a system image's VM (debian --vm) boots systemd first: ~20 s here, more on a loaded host
SYSTEM_AGENT_BOOT_WAIT = 300.0
SERIAL_CHARDEV = "ser0"         # the serial console's chardev, as cmdline.py names it


class GuestAccess(_Base):
    def agent_socket(self, instance: Instance) -> str:
        return os.path.join(self.home.run_dir, f"qga-{instance.id[:16]}.sock")

    def console_fifo(self, instance: Instance) -> str:
        return self._file(instance, "console.in")

    def _make_console_fifo(self, instance: Instance) -> str:
        path = self.console_fifo(instance)
        try:
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                return path
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o600)
        return path

    def _remove_agent_socket(self, instance: Instance) -> None:
        try:
            os.unlink(self.agent_socket(instance))
        except FileNotFoundError:
            pass

    # -- exec -----------------------------------------------------------------------------------------------
    def _started_at(self, instance: Instance) -> float:
        try:
            with open(self._file(instance, "run.json")) as f:
                return float(json.load(f).get("started_at", 0.0))
        except (OSError, ValueError):
            return 0.0

    def _agent_wait(self, instance: Instance) -> float:
        """agent.TIMEOUT once the agent has answered in this run; until then what is left of the boot window."""
        started = self._started_at(instance)
        try:
            with open(self._file(instance, "agent-seen")) as f:
                if float(f.read().strip() or 0) == started:
                    return agent.TIMEOUT
        except (OSError, ValueError):
            pass
        window = SYSTEM_AGENT_BOOT_WAIT if self.info(instance).get("system") else AGENT_BOOT_WAIT
        return max(agent.TIMEOUT, started + window - time.time())

    def exec_argv(self, instance: Instance, command: list[str], *, tty: bool, env: list[str],
                  console_socket: str | None = None) -> list[str]:
        """The helper that runs `command` through the guest agent (virtkit.vm.qemu.agent_exec), once the agent
        answers: a VM still booting is waited for, an agent that never answers is a clear error here."""
        if tty:
            raise Unsupported(f"exec -t into VM '{instance.name}': the guest agent runs commands without a "
                              f"terminal; use `virtkit console {instance.name}` for the VM's terminal, or exec "
                              "without -t")
        if self._process_pid(instance) is None:
            raise InvalidState(f"instance '{instance.name}' is not running")
        sock = self.agent_socket(instance)
        if not os.path.exists(sock):
            raise InvalidState(f"VM '{instance.name}' has no guest agent channel (it was started before virtkit "
                               "gave VMs one: restart it)")
        started = self._started_at(instance)
        agent.GuestAgent(sock, name=instance.name).wait_ready(self._agent_wait(instance))
        try:
            with open(self._file(instance, "agent-seen"), "w") as f:
                f.write(repr(started))
        except OSError:
            pass
        return [sys.executable, "-m", "virtkit.vm.qemu.agent_exec", "--name", instance.name,
                *(f"--env={e}" for e in env), sock, "--", *command]

    # -- console --------------------------------------------------------------------------------------------
    def open_console(self, instance: Instance) -> int:
        """A descriptor that writes to the VM's serial console (its output stays the console log).

        QEMU 7.2's -chardev file takes no input file on the command line, so the console's chardev is swapped
        (QMP chardev-change) for a file chardev with the same output, appended, and console.in as its input:
        at each session, as QEMU reads the FIFO's end (no writer left) as the input's end for good. The FIFO is
        opened here first (read-write: no wait for a reader), so QEMU's own open of it never blocks its main loop.
        """
        from virtkit.vm.qemu import qmp

        if self._process_pid(instance) is None:
            raise InvalidState(f"instance '{instance.name}' is not running")
        path = self._make_console_fifo(instance)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        backend = {"type": "file", "data": {"in": path, "out": self.log_path(instance), "append": True}}
        try:
            qmp.execute(self.control_socket(instance), "chardev-change", {"id": SERIAL_CHARDEV, "backend": backend})
        except BaseException:
            os.close(fd)
            raise
        return fd

    def delete(self, instance: Instance) -> None:
        super().delete(instance)
        self._remove_agent_socket(instance)     # QEMU leaves it when killed
