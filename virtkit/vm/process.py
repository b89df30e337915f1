"""A VM engine's process under its detached waiter: the VM's files, create, start, state, exit, stop's end, removal.

Both engines (QEMU, virtkit-vmm) subclass VmProcessDriver and fill in what differs: how a VM is validated and
booted (argv, boot files), how its process answers (control socket, ready, paused), and how it stops.

Files of a VM, under $VIRTKIT_HOME/vms/<id>/: vm.json (what create decided), the boot files, run.json (the
process's argv, the console offset of the current run), qemu.pid and qemu.log (the process's pid and stderr:
the waiter names them so for every engine), exit.json (written by the waiter), console.log (the serial
console), stop-requested. Control sockets live in $VIRTKIT_HOME/run/ (short: unix socket paths are limited to
108 bytes).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from virtkit.config import Home
from virtkit.core.driver import ExitStatus
from virtkit.core.errors import InvalidArgument, InvalidState, SystemFailure, Unsupported, VirtkitError
from virtkit.core.models import Instance
from virtkit.vm.qemu.console import ConsoleFilter
from virtkit.vm.qemu.initramfs import EXIT_MARKER, command_param

DEFAULT_MEMORY = 256 << 20
MIN_MEMORY = 64 << 20
MAX_CMDLINE_PARAM = 1500         # x86 COMMAND_LINE_SIZE is 2048; the fixed parameters take the rest
START_TIMEOUT = 10.0
_MARKER_RE = re.compile(re.escape(EXIT_MARKER).encode() + rb" (\d+)")


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class VmProcessDriver:
    type = "vm"
    process_name = "the VM's process"      # as messages name it
    stop_reason = "stopped"                 # the exit reason of a guest command ended by a stop

    def __init__(self, home: Home, images: Any) -> None:
        self.home = home
        self.images = images

    # -- paths ----------------------------------------------------------------------------------------
    def vm_dir(self, instance: Instance) -> str:
        return os.path.join(self.home.root, "vms", instance.id)

    def _file(self, instance: Instance, name: str) -> str:
        return os.path.join(self.vm_dir(instance), name)

    def log_path(self, instance: Instance) -> str:
        return self._file(instance, "console.log")

    def watch(self, instance: Instance) -> Any:
        from virtkit.container.watch import DirWatch

        return DirWatch(self.vm_dir(instance))

    def info(self, instance: Instance) -> dict[str, Any]:
        """What create decided (vCPUs, memory, kernel, engine specifics): for the user to see."""
        try:
            with open(self._file(instance, "vm.json")) as f:
                return dict(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # -- what each engine fills in --------------------------------------------------------------------
    def _validate(self, instance: Instance) -> dict[str, Any]:
        """Every check that can fail on the user's input, before anything is made; the plan kept in vm.json."""
        raise NotImplementedError

    def _check_host(self) -> None:
        """What the host must have for this engine (a clear error at create, not at start)."""

    def _install_boot_files(self, plan: dict[str, Any], default: tuple[Any, str] | None,
                            vdir: str) -> dict[str, Any]:
        """The VM's boot files in its directory; returns what to add to its plan."""
        raise NotImplementedError

    def _log_created(self, instance: Instance, plan: dict[str, Any]) -> None:
        """Say what create decided (virtkitd's log)."""

    def argv(self, instance: Instance) -> list[str]:
        """The command line of this VM's process (what start runs under its waiter)."""
        raise NotImplementedError

    def stop(self, instance: Instance, timeout: float) -> None:
        raise NotImplementedError

    def pause(self, instance: Instance) -> None:
        raise NotImplementedError

    def resume(self, instance: Instance) -> None:
        raise NotImplementedError

    def control_socket(self, instance: Instance) -> str:
        raise NotImplementedError

    def _ready(self, instance: Instance) -> bool:
        """The process answers on its control socket: its machine is set up (the kernel loaded)."""
        raise NotImplementedError

    def _paused(self, instance: Instance) -> bool:
        raise NotImplementedError

    def _process_marker(self, instance: Instance) -> bytes:
        """What only this VM's process has on its command line (a reused pid is not mistaken for it)."""
        raise NotImplementedError

    def _process_exit_status(self, instance: Instance, rec: dict[str, Any], finished: float) -> ExitStatus:
        """The process exited by itself, without a marker on the console: why."""
        raise NotImplementedError

    def _failed_to_start(self, instance: Instance, rec: dict[str, Any]) -> bool:
        return bool(rec["code"] != 0 and self._marker(instance) is None)

    def _console_offset(self, instance: Instance) -> int:
        """Where this run's output starts in console.log (appended to, run after run)."""
        try:
            return os.path.getsize(self.log_path(instance))
        except FileNotFoundError:
            return 0

    # -- create ---------------------------------------------------------------------------------------
    def _validate_machine(self, instance: Instance) -> dict[str, Any]:
        """The checks every VM engine shares: vCPUs, memory, the guest command and network on the command line."""
        spec = instance.spec or {}
        cpus = spec.get("cpus")
        try:
            vcpus = 1 if cpus is None else math.ceil(float(cpus))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"cpus: not a number: {cpus!r}") from exc
        host_cpus = os.cpu_count() or 1
        if vcpus < 1:
            raise InvalidArgument(f"cpus: a VM needs at least 1 vCPU (got {cpus!r})")
        if vcpus > host_cpus:
            raise InvalidArgument(f"cpus: {vcpus} vCPUs asked, but this host has {host_cpus} CPUs")
        memory = spec.get("memory")
        if memory is None:
            mem = DEFAULT_MEMORY
        else:
            from virtkit.core.options import parse_size

            mem = parse_size(memory, "memory")
        if mem < MIN_MEMORY:
            raise InvalidArgument(f"memory: a VM needs at least 64M (got {memory!r})")
        if mem > _host_memory():
            raise InvalidArgument(f"memory: {mem >> 20}M asked, but this host has {_host_memory() >> 20}M")
        command = list(spec.get("command") or []) or self._image_command(instance) or ["sh"]
        script = shlex.join(command)
        env = spec.get("env") or []
        if env:
            script = " ".join(f"export {shlex.quote(e)};" for e in env) + " exec " + script
        param = command_param(["sh", "-c", script]) if env else command_param(command)
        if len(param) > MAX_CMDLINE_PARAM:
            raise InvalidArgument(f"command: too long for the kernel command line ({len(param)} bytes encoded, "
                                  f"at most {MAX_CMDLINE_PARAM})")
        hostname = spec.get("hostname") or instance.name
        params = [param, f"virtkit.hostname={hostname}"]
        net = spec.get("net")
        if net and net.get("tap"):
            # the network service made the TAP and leased the address; the guest's /init configures eth0 from these
            params.append(f"virtkit.ip={net['address']}/{net['prefixlen']}")
            if net.get("gateway"):
                params.append(f"virtkit.gw={net['gateway']}")
            if net.get("dns"):          # virtkitd's name server for the network (net.dns): peers' names
                params.append(f"virtkit.dns={net['dns']}")
        return {"vcpus": vcpus, "memory_mib": mem >> 20, "params": params,
                "net": {"tap": net["tap"], "mac": net["mac"]} if net and net.get("tap") else None}

    def _image_command(self, instance: Instance) -> list[str]:
        if self.images is None or not instance.image:
            return []
        try:
            cfg = (self.images.get(instance.image).config or {}).get("config") or {}
        except VirtkitError:
            return []
        return list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])

    def create(self, instance: Instance) -> None:
        plan = self._validate(instance)
        self._check_host()
        # the shared kernel and initramfs are fetched and built (cached) before anything of this VM is made
        # (a system image's VM boots the image's own kernel and initramfs: none of these)
        default = None if plan["kernel"] or plan.get("system") else self._default_boot_files()
        vdir = self.vm_dir(instance)
        if os.path.exists(vdir):
            raise InvalidState(f"instance '{instance.name}': {vdir} exists already")
        try:
            os.makedirs(vdir, mode=0o700)
            plan.update(self._install_boot_files(plan, default, vdir))
            with open(os.path.join(vdir, "vm.json"), "w") as f:
                json.dump(plan, f)
            self._log_created(instance, plan)
        except BaseException as exc:
            shutil.rmtree(vdir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SystemFailure(f"cannot prepare VM '{instance.name}': {exc}") from exc
            raise

    @staticmethod
    def _default_boot_files() -> tuple[Any, str]:
        """Debian's cloud kernel and the busybox initramfs for it (both cached: fetched and built once)."""
        from virtkit.vm.qemu import initramfs, kernel

        kern = kernel.default_kernel()
        return kern, initramfs.build(kern, kernel.busybox())

    # -- start / state --------------------------------------------------------------------------------
    def start(self, instance: Instance) -> int:
        if self._process_pid(instance) is not None:
            raise InvalidState(f"instance '{instance.name}' is running already")
        argv = self.argv(instance)
        os.makedirs(self.home.run_dir, mode=0o700, exist_ok=True)
        for name in ("exit.json", "qemu.pid", "stop-requested"):
            try:
                os.unlink(self._file(instance, name))
            except FileNotFoundError:
                pass
        try:
            os.unlink(self.control_socket(instance))
        except FileNotFoundError:
            pass
        offset = self._console_offset(instance)
        cg = self._start_cgroup(instance)
        run: dict[str, Any] = {"argv": argv, "console_offset": offset, "started_at": time.time()}
        if cg is not None:
            # the waiter's child joins before it execs (every thread of the VM's process is born inside), and
            # the waiter removes the cgroup once the process is reaped
            run["cgroup"] = {"join": cg.join_files(), "remove": cg.dirs()}
        try:
            with open(self._file(instance, "run.json"), "w") as f:
                json.dump(run, f)
            return self._launch(instance)
        except BaseException:
            if cg is not None and self._process_pid(instance) is None:
                try:
                    cg.remove(timeout=1.0)
                except VirtkitError:
                    pass
            raise

    def _start_cgroup(self, instance: Instance) -> Any:
        """The VM's CPU cgroup with its weight, cap and pinning (see virtkit.vm.cgroup); None if it runs without."""
        from virtkit.sched.cpushare import CpuRequest, plan
        from virtkit.vm.cgroup import start_cgroup

        return start_cgroup(self.home, instance.id, plan(CpuRequest.from_spec(instance.spec or {}), None))

    def update_cpu(self, instance: Instance, live: bool) -> None:
        """`virtkit update`: the spec (read at every start) holds the new values; a running VM gets them now."""
        if live and self._process_pid(instance) is not None:
            from virtkit.vm.cgroup import update_running

            update_running(self.home, instance)

    def _launch(self, instance: Instance) -> int:
        """Start the waiter (detached) and wait until the VM's process answers."""
        # setsid -f: the waiter is not virtkitd's child (nothing to reap here) and has its own session
        subprocess.run(["setsid", "-f", sys.executable, "-m", "virtkit.vm.qemu.waiter", self.vm_dir(instance)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       close_fds=True, check=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(self._file(instance, "exit.json")):
                break
            pid = self._process_pid(instance)
            if pid is not None and self._ready(instance):
                return pid
            time.sleep(0.005)
        rec = self._exit_record(instance)
        if rec is not None and self._failed_to_start(instance, rec):
            raise SystemFailure(f"{self.process_name} of '{instance.name}' failed to start ({rec['reason']} "
                                f"{rec['code']}): {self._process_stderr(instance)}")
        pid = self._process_pid(instance)
        if pid is None and rec is None:
            raise SystemFailure(f"{self.process_name} of '{instance.name}' did not come up in {START_TIMEOUT:g} s")
        return pid or 0          # it ran and ended already (a very short guest)

    def _process_stderr(self, instance: Instance) -> str:
        try:
            with open(self._file(instance, "qemu.log")) as f:
                return f.read().strip()[-2000:] or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    def _process_pid(self, instance: Instance) -> int | None:
        """The VM process's pid while it lives."""
        try:
            with open(self._file(instance, "qemu.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if self._process_marker(instance) not in f.read():
                    return None
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return None
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def status(self, instance: Instance) -> str:
        """created | running | paused | stopped."""
        if os.path.exists(self._file(instance, "exit.json")):
            return "stopped"
        if self._process_pid(instance) is None:
            started = os.path.exists(self._file(instance, "run.json"))
            return "stopped" if started or not os.path.isdir(self.vm_dir(instance)) else "created"
        return "paused" if self._paused(instance) else "running"

    def _exit_record(self, instance: Instance) -> dict[str, Any] | None:
        try:
            with open(self._file(instance, "exit.json")) as f:
                return dict(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def output_filter(self, instance: Instance) -> ConsoleFilter:
        """The serial console carries kernel messages and virtkit's exit marker too; users see the guest's output."""
        return ConsoleFilter()

    def console_output(self, instance: Instance) -> bytes:
        """What the guest wrote on its serial console during its current (or last) run."""
        try:
            with open(self._file(instance, "run.json")) as f:
                offset = int(json.load(f).get("console_offset", 0))
            with open(self.log_path(instance), "rb") as f:
                f.seek(offset)
                return f.read()
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            return b""

    def _marker(self, instance: Instance) -> int | None:
        found = _MARKER_RE.findall(self.console_output(instance))
        return int(found[-1]) if found else None

    def exit_status(self, instance: Instance) -> ExitStatus | None:
        """The guest command's status from the console marker; else how the process ended (killed, crashed)."""
        rec = self._exit_record(instance)
        if rec is None:
            return None
        finished = float(rec["finished_at"])
        code = self._marker(instance)
        if code is not None:
            return ExitStatus(code, self.stop_reason if self._stop_requested(instance) else "exited", finished)
        if rec["reason"] != "exited":
            return ExitStatus(int(rec["code"]), str(rec["reason"]), finished)
        return self._process_exit_status(instance, rec, finished)

    def _stop_requested(self, instance: Instance) -> bool:
        return os.path.exists(self._file(instance, "stop-requested"))

    # -- stop / kill / remove -------------------------------------------------------------------------
    def _wait_gone(self, instance: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(self._file(instance, "exit.json")) or self._process_pid(instance) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _sigkill(self, instance: Instance, pid: int) -> None:
        """A stop's last resort: SIGKILL, then the waiter's record of it."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not self._wait_gone(instance, 10.0):
            raise SystemFailure(f"{self.process_name} of '{instance.name}' did not exit after SIGKILL")
        self._wait_record(instance)

    def _wait_record(self, instance: Instance, timeout: float = 2.0) -> None:
        """The process gone: give its waiter a moment to write how it ended."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self._file(instance, "exit.json")) and time.monotonic() < deadline:
            time.sleep(0.005)

    def kill(self, instance: Instance, sig: int) -> None:
        pid = self._process_pid(instance)
        if pid is None:
            raise InvalidState(f"instance '{instance.name}' is not running")
        os.kill(pid, sig)

    def _require_running(self, instance: Instance) -> None:
        if self._process_pid(instance) is None:
            raise InvalidState(f"instance '{instance.name}' is not running")

    def _kill_process(self, instance: Instance) -> None:
        """SIGKILL the engine's process (if any) and wait until it is gone and its exit recorded."""
        pid = self._process_pid(instance)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(instance, 10.0)
            self._wait_record(instance)

    def delete(self, instance: Instance) -> None:
        self._kill_process(instance)
        try:
            os.unlink(self.control_socket(instance))
        except FileNotFoundError:
            pass
        from virtkit.vm.cgroup import remove_quietly

        remove_quietly(self.home, instance)
        shutil.rmtree(self.vm_dir(instance), ignore_errors=True)

    # -- figures --------------------------------------------------------------------------------------
    def stats(self, instance: Instance) -> dict[str, Any]:
        """The process's figures from /proc: CPU time (all vCPU threads together), RSS, threads; {} when not running.

        cpu_usage_ns is the same figure as cpu_seconds, named as containers name theirs (what `virtkit stats` shows).
        """
        pid = self._process_pid(instance)
        if pid is None:
            return {}
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            return {}
        ticks = int(fields[11]) + int(fields[12])
        tick = os.sysconf("SC_CLK_TCK")
        plan = self.info(instance)
        return {
            "cpu_seconds": ticks / tick,
            "cpu_usage_ns": ticks * 1_000_000_000 // tick,
            "memory_rss_bytes": int(status.get("VmRSS", "0 kB").split()[0]) * 1024,
            "threads": int(status.get("Threads", "0").strip()),
            "vcpus": plan.get("vcpus"),
            "memory_bytes": (plan.get("memory_mib") or 0) << 20,
            "accel": plan.get("accel"),
            "pid": pid,
        }

    # -- not in the VM engines yet --------------------------------------------------------------------
    def exec_argv(self, instance: Instance, command: list[str], *, tty: bool, env: list[str],
                  console_socket: str | None = None) -> list[str]:
        raise Unsupported("exec into a VM needs the guest agent, which is not there yet")

    def snapshot(self, instance: Instance, dest: str) -> int:
        raise Unsupported("VM snapshots are not there yet")

    def restore(self, instance: Instance, src: str) -> None:
        raise Unsupported("VM snapshots are not there yet")

    def export_changes(self, instance: Instance, tar_path: str) -> None:
        raise Unsupported("publishing a VM's changes is not supported")
