"""The QEMU InstanceDriver (type "vm"): prepares a VM's boot files, runs QEMU under a detached waiter, drives QMP.

Instance spec keys read (all optional):
  cpus      vCPUs (a float like the container limit; rounded up), default 1, at most the host's CPU count
  memory    guest RAM in bytes (or a size string like "512M"), default 256M, at least 64M, at most host RAM
  command   argv run by the guest's /init (default: the image's Entrypoint + Cmd, else `sh`)
  env       ["NAME=VALUE", ...] exported to the command
  hostname  the guest's hostname (default: the instance name)
  kernel    absolute path of a kernel to boot instead of Debian's cloud kernel: an ELF vmlinux with a PVH note,
            or a bzImage to extract it from (its drivers must be built in: no modules are loaded for it)
  accel     "auto" (default) | "kvm" | "tcg"; a kvm that cannot work here is an InvalidArgument

Files of a VM, under $VIRTKIT_HOME/vms/<id>/: vm.json (what create decided), vmlinux + initramfs.cpio (hard
links into the kernel cache), run.json (QEMU's argv, the console offset of the current run), qemu.pid,
exit.json (written by the waiter), console.log (the serial console), qemu.log (QEMU's stderr), stop-requested.
The QMP socket is $VIRTKIT_HOME/run/qmp-<id[:16]>.sock (short: unix socket paths are limited to 108 bytes).
"""

from __future__ import annotations

import json
import logging
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
from virtkit.vm.qemu import accel as accel_mod
from virtkit.vm.qemu import qmp
from virtkit.vm.qemu.cmdline import VmConfig, build_argv, qemu_binary
from virtkit.vm.qemu.console import ConsoleFilter
from virtkit.vm.qemu.initramfs import EXIT_MARKER, command_param

DEFAULT_MEMORY = 256 << 20
MIN_MEMORY = 64 << 20
MAX_CMDLINE_PARAM = 1500         # x86 COMMAND_LINE_SIZE is 2048; the fixed parameters take the rest
START_TIMEOUT = 10.0
log = logging.getLogger(__name__)
_MARKER_RE = re.compile(re.escape(EXIT_MARKER).encode() + rb" (\d+)")


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class QemuDriver:
    type = "vm"

    def __init__(self, home: Home, images: Any) -> None:
        self.home = home
        self.images = images

    # -- paths ----------------------------------------------------------------------------------------
    def vm_dir(self, instance: Instance) -> str:
        return os.path.join(self.home.root, "vms", instance.id)

    def _file(self, instance: Instance, name: str) -> str:
        return os.path.join(self.vm_dir(instance), name)

    def qmp_socket(self, instance: Instance) -> str:
        return os.path.join(self.home.run_dir, f"qmp-{instance.id[:16]}.sock")

    def log_path(self, instance: Instance) -> str:
        return self._file(instance, "console.log")

    def watch(self, instance: Instance) -> Any:
        from virtkit.container.watch import DirWatch

        return DirWatch(self.vm_dir(instance))

    def info(self, instance: Instance) -> dict[str, Any]:
        """What create decided (vCPUs, memory, accelerator and why, kernel release): for the user to see."""
        try:
            with open(self._file(instance, "vm.json")) as f:
                return dict(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # -- create ---------------------------------------------------------------------------------------
    def _validate(self, instance: Instance) -> dict[str, Any]:
        """Every check that can fail on the user's input, before anything is made."""
        spec = instance.spec or {}
        chosen = accel_mod.choose(spec.get("accel"))
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
        kernel = spec.get("kernel")
        if kernel is not None:
            from virtkit.vm.qemu.kernel import check_kernel_file

            check_kernel_file(kernel)
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
        return {"vcpus": vcpus, "memory_mib": mem >> 20, "accel": chosen.name, "accel_reason": chosen.reason,
                "kernel": kernel, "params": params,
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
        qemu_binary()                      # a clear error now, not at start, when QEMU is missing
        from virtkit.vm.qemu import initramfs, kernel

        if plan["kernel"]:
            kern = None
        else:
            kern = kernel.default_kernel()
            initrd = initramfs.build(kern, kernel.busybox())
        vdir = self.vm_dir(instance)
        if os.path.exists(vdir):
            raise InvalidState(f"instance '{instance.name}': {vdir} exists already")
        try:
            os.makedirs(vdir, mode=0o700)
            vmlinux, initrd_dst = os.path.join(vdir, "vmlinux"), os.path.join(vdir, "initramfs.cpio")
            if kern is None:
                self._custom_kernel(plan["kernel"], vmlinux)
                kern = kernel.Kernel(release="custom", vmlinux=vmlinux, modules=[])
                initrd = initramfs.build(kern, kernel.busybox())
            else:
                _link_or_copy(kern.vmlinux, vmlinux)
            _link_or_copy(initrd, initrd_dst)
            plan["release"] = kern.release
            with open(os.path.join(vdir, "vm.json"), "w") as f:
                json.dump(plan, f)
            log.info("VM %s: accelerator %s (%s)", instance.name, plan["accel"], plan["accel_reason"])
        except BaseException as exc:
            shutil.rmtree(vdir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SystemFailure(f"cannot prepare VM '{instance.name}': {exc}") from exc
            raise

    @staticmethod
    def _custom_kernel(src: str, dst: str) -> None:
        from virtkit.vm.qemu.vmlinux import extract_vmlinux, is_elf

        with open(src, "rb") as f:
            data = f.read()
        if is_elf(data):
            _link_or_copy(src, dst)
            return
        with open(dst, "wb") as f:
            f.write(extract_vmlinux(data))

    def argv(self, instance: Instance) -> list[str]:
        """The bare QEMU command line of this VM (what start runs under its waiter)."""
        plan = self.info(instance)
        if not plan:
            raise InvalidState(f"instance '{instance.name}' was not created as a VM")
        cfg = VmConfig(
            name=f"virtkit-{instance.id}", vcpus=plan["vcpus"], memory_mib=plan["memory_mib"],
            accel=accel_mod.Accel(plan["accel"], plan["accel_reason"]),
            vmlinux=self._file(instance, "vmlinux"), initramfs=self._file(instance, "initramfs.cpio"),
            console_log=self.log_path(instance), qmp_socket=self.qmp_socket(instance),
            kernel_params=tuple(plan["params"]), net=plan.get("net"),
        )
        return build_argv(cfg)

    # -- start / state --------------------------------------------------------------------------------
    def start(self, instance: Instance) -> int:
        if self._qemu_pid(instance) is not None:
            raise InvalidState(f"instance '{instance.name}' is running already")
        argv = self.argv(instance)
        os.makedirs(self.home.run_dir, mode=0o700, exist_ok=True)
        for name in ("exit.json", "qemu.pid", "stop-requested"):
            try:
                os.unlink(self._file(instance, name))
            except FileNotFoundError:
                pass
        sock = self.qmp_socket(instance)
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        try:
            offset = os.path.getsize(self.log_path(instance))
        except FileNotFoundError:
            offset = 0
        with open(self._file(instance, "run.json"), "w") as f:
            json.dump({"argv": argv, "console_offset": offset, "started_at": time.time()}, f)
        # setsid -f: the waiter is not virtkitd's child (nothing to reap here) and has its own session
        subprocess.run(["setsid", "-f", sys.executable, "-m", "virtkit.vm.qemu.waiter", self.vm_dir(instance)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       close_fds=True, check=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(self._file(instance, "exit.json")):
                break
            pid = self._qemu_pid(instance)
            if pid is not None and os.path.exists(sock):
                # QMP answers once QEMU's machine is set up (kernel loaded): before, QEMU may still fail
                try:
                    qmp.query_status(sock)
                    return pid
                except SystemFailure:
                    pass
            time.sleep(0.005)
        rec = self._exit_record(instance)
        if rec is not None and rec["code"] != 0 and self._marker(instance) is None:
            raise SystemFailure(f"QEMU of '{instance.name}' failed to start ({rec['reason']} {rec['code']}): "
                                f"{self._qemu_stderr(instance)}")
        pid = self._qemu_pid(instance)
        if pid is None and rec is None:
            raise SystemFailure(f"QEMU of '{instance.name}' did not come up in {START_TIMEOUT:g} s")
        return pid or 0          # it ran and ended already (a very short guest)

    def _qemu_stderr(self, instance: Instance) -> str:
        try:
            with open(self._file(instance, "qemu.log")) as f:
                return f.read().strip()[-2000:] or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    def _qemu_pid(self, instance: Instance) -> int | None:
        """QEMU's pid while it lives (checked against its -name, so a reused pid is not mistaken for it)."""
        try:
            with open(self._file(instance, "qemu.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f"virtkit-{instance.id}".encode() not in f.read():
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
        if self._qemu_pid(instance) is None:
            started = os.path.exists(self._file(instance, "run.json"))
            return "stopped" if started or not os.path.isdir(self.vm_dir(instance)) else "created"
        try:
            state = qmp.query_status(self.qmp_socket(instance)).get("status")
        except SystemFailure:
            return "running"
        return "paused" if state in ("paused", "suspended") else "running"

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
        """The guest command's status from the console marker; else how QEMU ended (killed, crashed)."""
        rec = self._exit_record(instance)
        if rec is None:
            return None
        finished = float(rec["finished_at"])
        code = self._marker(instance)
        if code is not None:
            stopped = os.path.exists(self._file(instance, "stop-requested"))
            return ExitStatus(code, "stopped by ACPI powerdown" if stopped else "exited", finished)
        if rec["reason"] != "exited":
            return ExitStatus(int(rec["code"]), str(rec["reason"]), finished)
        if rec["code"] != 0:
            return ExitStatus(int(rec["code"]), f"qemu failed (exit status {rec['code']})", finished)
        # QEMU ends cleanly on SIGTERM/SIGINT/SIGHUP, saying so on stderr
        m = re.search(r"terminating on signal (\d+)", self._qemu_stderr(instance))
        if m:
            sig = int(m.group(1))
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return ExitStatus(128 + sig, f"killed by {name}", finished)
        if b"Kernel panic" in self.console_output(instance):
            return ExitStatus(255, "guest kernel panic", finished)
        return ExitStatus(255, "guest powered off without reporting an exit status", finished)

    # -- stop / kill / pause --------------------------------------------------------------------------
    def _wait_gone(self, instance: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(self._file(instance, "exit.json")) or self._qemu_pid(instance) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop(self, instance: Instance, timeout: float) -> None:
        """ACPI powerdown through QMP (the guest's /init ends its command and powers off), SIGKILL after timeout."""
        pid = self._qemu_pid(instance)
        if pid is None:
            return
        with open(self._file(instance, "stop-requested"), "w"):
            pass
        sock = self.qmp_socket(instance)
        try:
            if qmp.query_status(sock).get("status") == "paused":
                qmp.cont(sock)
        except SystemFailure:
            pass
        deadline = time.monotonic() + timeout
        while True:
            # pressed again each second: a press before the guest's /init listens (early boot) is lost
            try:
                qmp.system_powerdown(sock)
            except SystemFailure:
                pass                # QMP unreachable: the kill below still stops it
            if self._wait_gone(instance, min(1.0, max(0.0, deadline - time.monotonic()))):
                self._wait_record(instance)
                return
            if time.monotonic() >= deadline:
                break
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not self._wait_gone(instance, 10.0):
            raise SystemFailure(f"QEMU of '{instance.name}' did not exit after SIGKILL")
        self._wait_record(instance)

    def _wait_record(self, instance: Instance, timeout: float = 2.0) -> None:
        """QEMU gone: give its waiter a moment to write how it ended."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self._file(instance, "exit.json")) and time.monotonic() < deadline:
            time.sleep(0.005)

    def kill(self, instance: Instance, sig: int) -> None:
        pid = self._qemu_pid(instance)
        if pid is None:
            raise InvalidState(f"instance '{instance.name}' is not running")
        os.kill(pid, sig)

    def pause(self, instance: Instance) -> None:
        self._require_running(instance)
        qmp.stop(self.qmp_socket(instance))

    def resume(self, instance: Instance) -> None:
        self._require_running(instance)
        qmp.cont(self.qmp_socket(instance))

    def _require_running(self, instance: Instance) -> None:
        if self._qemu_pid(instance) is None:
            raise InvalidState(f"instance '{instance.name}' is not running")

    def delete(self, instance: Instance) -> None:
        pid = self._qemu_pid(instance)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(instance, 10.0)
            self._wait_record(instance)
        try:
            os.unlink(self.qmp_socket(instance))
        except FileNotFoundError:
            pass
        shutil.rmtree(self.vm_dir(instance), ignore_errors=True)

    # -- figures --------------------------------------------------------------------------------------
    def stats(self, instance: Instance) -> dict[str, Any]:
        """QEMU's figures from /proc: CPU time (all vCPU threads together), RSS, threads; {} when not running."""
        pid = self._qemu_pid(instance)
        if pid is None:
            return {}
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            return {}
        tick = os.sysconf("SC_CLK_TCK")
        plan = self.info(instance)
        return {
            "cpu_seconds": (int(fields[11]) + int(fields[12])) / tick,
            "memory_rss_bytes": int(status.get("VmRSS", "0 kB").split()[0]) * 1024,
            "threads": int(status.get("Threads", "0").strip()),
            "vcpus": plan.get("vcpus"),
            "memory_bytes": (plan.get("memory_mib") or 0) << 20,
            "accel": plan.get("accel"),
            "pid": pid,
        }

    # -- not in this engine yet -----------------------------------------------------------------------
    def exec_argv(self, instance: Instance, command: list[str], *, tty: bool, env: list[str],
                  console_socket: str | None = None) -> list[str]:
        raise Unsupported("exec into a VM needs the guest agent, which is not there yet")

    def snapshot(self, instance: Instance, dest: str) -> int:
        raise Unsupported("VM snapshots are not there yet")

    def restore(self, instance: Instance, src: str) -> None:
        raise Unsupported("VM snapshots are not there yet")

    def export_changes(self, instance: Instance, tar_path: str) -> None:
        raise Unsupported("publishing a VM's changes is not supported")
