"""The native-VMM InstanceDriver (engine "native" of type "vm"): `virtkit-vmm` under the per-VM waiter, driven
through its API socket.

The process machinery (waiter, pid, state, exit records, removal, /proc figures) is virtkit.vm.process's, shared
with the QEMU engine. Spec keys read: the QEMU engine's (cpus, memory, command, env, hostname, kernel) and
  kernel_format  "auto" (default) | "bzimage" | "elf" | "flat" of the kernel file
What boots:
  no kernel        Debian's cloud kernel (its PVH vmlinux, as ELF) with the busybox initramfs that runs the
                   command: the QEMU engine's guest. On a PVM host (DESIGN.md) it crawls: ~1M instructions/s.
  bzImage / ELF    the user's kernel as it is (drivers built in), with the same busybox initramfs
  flat             raw 64-bit code entered at 0x100000 in long mode, no initramfs or command line; the byte it
                   writes to port 0xf4 is its exit status

Files, besides virtkit.vm.process's: vms/<id>/kernel, initramfs.cpio; the API socket
$VIRTKIT_HOME/run/vmm-<id[:16]>.sock. virtkit-vmm truncates console.log when it starts: a run's console is the
whole file.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from virtkit.core.driver import ExitStatus
from virtkit.core.errors import InvalidArgument, InvalidState, SystemFailure, Unsupported
from virtkit.core.models import Instance
from virtkit.vm.process import VmProcessDriver, link_or_copy

API_TIMEOUT = 5.0
log = logging.getLogger(__name__)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def check_kernel(path: str, fmt: str, memory: int) -> str:
    """The format a user's kernel file boots as ("bzimage", "elf", "flat"); InvalidArgument naming what is wrong."""
    from virtkit.vm.kvm.boot.detect import detect_format, is_bzimage, is_elf
    from virtkit.vm.kvm.errors import BootError
    from virtkit.vm.kvm.layout import DEFAULT_LOAD_ADDR

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError as exc:
        raise InvalidArgument(f"kernel: no such file: {path}") from exc
    except OSError as exc:
        raise InvalidArgument(f"kernel: cannot read {path}: {exc.strerror}") from exc
    if not size:
        raise InvalidArgument(f"kernel: {path} is empty")
    try:
        kind = detect_format(head, fmt)
    except BootError as exc:
        raise InvalidArgument(f"kernel: {path}: {exc}") from exc
    if kind == "bzimage" and not is_bzimage(head):
        raise InvalidArgument(f"kernel: {path} is not a bzImage (no 'HdrS' signature); try --kernel-format auto")
    if kind == "elf" and not is_elf(head):
        raise InvalidArgument(f"kernel: {path} is not an ELF file; try --kernel-format auto")
    if kind == "flat" and DEFAULT_LOAD_ADDR + size > memory:
        raise InvalidArgument(f"memory: {memory >> 20}M is too small for the {size}-byte flat image loaded at "
                              f"{DEFAULT_LOAD_ADDR:#x}")
    return kind


class NativeDriver(VmProcessDriver):
    process_name = "virtkit-vmm"
    stop_reason = "stopped by SIGTERM"

    def control_socket(self, instance: Instance) -> str:
        return os.path.join(self.home.run_dir, f"vmm-{instance.id[:16]}.sock")

    # -- create ---------------------------------------------------------------------------------------
    def _validate(self, instance: Instance) -> dict[str, Any]:
        spec = instance.spec or {}
        plan = self._validate_machine(instance)
        kernel = spec.get("kernel")
        fmt = spec.get("kernel_format") or "auto"
        if kernel is None:
            if fmt not in ("auto", "elf"):
                raise InvalidArgument(f"kernel_format: {fmt} needs a kernel file (--kernel); "
                                      "the default kernel is Debian's ELF vmlinux")
            fmt = "elf"
        else:
            fmt = check_kernel(kernel, fmt, plan["memory_mib"] << 20)
        if fmt == "flat":
            cmdline = ""              # raw code: no /init reads a command, no kernel reads parameters
        else:
            from virtkit.vm.qemu.cmdline import KERNEL_PARAMS

            cmdline = " ".join([*KERNEL_PARAMS, *plan["params"]])
        return {**plan, "engine": "native", "kernel": kernel, "kernel_format": fmt, "cmdline": cmdline,
                "accel": "kvm", "accel_reason": "the native engine runs its own VMM on /dev/kvm"}

    def _check_host(self) -> None:
        from virtkit.core.options import require_kvm

        require_kvm()

    def _install_boot_files(self, plan: dict[str, Any], default: tuple[Any, str] | None,
                            vdir: str) -> dict[str, Any]:
        """kernel (booted as it is: virtkit-vmm reads bzImage, ELF and flat) and, unless flat, initramfs.cpio."""
        from virtkit.vm.qemu import initramfs, kernel

        dst = os.path.join(vdir, "kernel")
        if default is not None:
            kern, initrd = default
            link_or_copy(kern.vmlinux, dst)
        else:
            link_or_copy(plan["kernel"], dst)
            if plan["kernel_format"] == "flat":
                return {"release": "flat", "initrd": False}
            kern = kernel.Kernel(release="custom", vmlinux=plan["kernel"], modules=[])
            initrd = initramfs.build(kern, kernel.busybox())
        link_or_copy(initrd, os.path.join(vdir, "initramfs.cpio"))
        return {"release": kern.release, "initrd": True}

    def _log_created(self, instance: Instance, plan: dict[str, Any]) -> None:
        log.info("VM %s: native engine, %s kernel %s", instance.name, plan["kernel_format"],
                 plan["kernel"] or "(Debian's cloud kernel)")

    def argv(self, instance: Instance) -> list[str]:
        """The virtkit-vmm command line of this VM (what start runs under its waiter)."""
        plan = self.info(instance)
        if not plan:
            raise InvalidState(f"instance '{instance.name}' was not created as a VM")
        argv = [sys.executable, "-m", "virtkit.vm.kvm.cli",
                "--kernel", self._file(instance, "kernel"), "--kernel-format", plan["kernel_format"],
                "--memory", f"{plan['memory_mib']}M", "--cpus", str(plan["vcpus"]),
                "--serial", self.log_path(instance), "--api-sock", self.control_socket(instance)]
        if plan["cmdline"]:
            argv += ["--cmdline", plan["cmdline"]]
        if plan.get("initrd"):
            argv += ["--initrd", self._file(instance, "initramfs.cpio")]
        net = plan.get("net")
        if net:
            argv += ["--net", net["tap"], "--mac", net["mac"]]
        return argv

    # -- the API socket -------------------------------------------------------------------------------
    def _api(self, instance: Instance, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = _UnixHTTPConnection(self.control_socket(instance), API_TIMEOUT)
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
            answer = json.loads(raw) if raw else {}
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise SystemFailure(f"virtkit-vmm of '{instance.name}' does not answer on its API socket: {exc}") from exc
        finally:
            conn.close()
        if status >= 400 or not isinstance(answer, dict):
            message = answer.get("message") if isinstance(answer, dict) else None
            raise SystemFailure(f"virtkit-vmm of '{instance.name}': {method} {path}: {message or status}")
        return answer

    # -- state ----------------------------------------------------------------------------------------
    def _ready(self, instance: Instance) -> bool:
        """The API socket is made once the machine is built (kernel loaded): before, virtkit-vmm may still fail."""
        if not os.path.exists(self.control_socket(instance)):
            return False
        try:
            self._api(instance, "GET", "/vm")
        except SystemFailure:
            return False
        return True

    def _paused(self, instance: Instance) -> bool:
        try:
            return self._api(instance, "GET", "/vm").get("state") == "paused"
        except SystemFailure:
            return False

    def _process_marker(self, instance: Instance) -> bytes:
        return self.log_path(instance).encode()        # --serial names the VM's own directory

    def _vmm_error(self, instance: Instance) -> str | None:
        """What virtkit-vmm said on stderr (it says nothing when the guest ends the VM through the exit port)."""
        try:
            with open(self._file(instance, "qemu.log")) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        return text[-2000:] or None

    def _failed_to_start(self, instance: Instance, rec: dict[str, Any]) -> bool:
        # a guest may end with any status before start has looked: only virtkit-vmm's own complaint is a failure
        return super()._failed_to_start(instance, rec) and self._vmm_error(instance) is not None

    def _process_exit_status(self, instance: Instance, rec: dict[str, Any], finished: float) -> ExitStatus:
        code = int(rec["code"])
        if self._stop_requested(instance) and code in (0, 128 + signal.SIGTERM):
            return ExitStatus(128 + signal.SIGTERM, self.stop_reason, finished)
        error = self._vmm_error(instance)
        if error is not None and code == 0:
            return ExitStatus(code, error.splitlines()[-1].removeprefix("virtkit-vmm: "), finished)  # a reset
        if error is not None:
            return ExitStatus(code, f"virtkit-vmm failed: {error.splitlines()[-1]}", finished)
        return ExitStatus(code, "exited", finished)

    # -- stop / pause ---------------------------------------------------------------------------------
    def stop(self, instance: Instance, timeout: float) -> None:
        """SIGTERM to virtkit-vmm (it stops the vCPUs and exits, paused or not), SIGKILL after the timeout."""
        pid = self._process_pid(instance)
        if pid is None:
            return
        with open(self._file(instance, "stop-requested"), "w"):
            pass
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self._wait_gone(instance, timeout):
            self._wait_record(instance)
            return
        self._sigkill(instance, pid)

    def pause(self, instance: Instance) -> None:
        self._require_running(instance)
        self._api(instance, "PUT", "/actions", {"action": "pause"})

    def resume(self, instance: Instance) -> None:
        self._require_running(instance)
        self._api(instance, "PUT", "/actions", {"action": "resume"})

    # -- figures --------------------------------------------------------------------------------------
    def stats(self, instance: Instance) -> dict[str, Any]:
        """The process's figures (CPU, RSS) and the VMM's own: exits per reason, and per vCPU its exits and CPU time."""
        figures = super().stats(instance)
        if not figures:
            return {}
        try:
            vmm = self._api(instance, "GET", "/stats")
        except SystemFailure:
            return figures                 # it ended between the two looks
        exits = dict(vmm.get("exits") or {})
        return {
            **figures,
            "engine": "native",
            "vm_state": vmm.get("state"),
            "uptime_s": vmm.get("uptime_s"),
            "exits": exits,
            "exits_total": sum(exits.values()),
            "vcpu_stats": list(vmm.get("vcpus") or []),     # [{"index", "exits": {reason: n}, "cpu_time_s"}]
            "serial_bytes": vmm.get("serial_bytes"),
            "devices": vmm.get("devices") or [],
        }

    # -- not mapped yet -------------------------------------------------------------------------------
    def snapshot(self, instance: Instance, dest: str) -> int:
        raise Unsupported("snapshots of native-engine VMs are not wired into virtkit yet "
                          "(virtkit-vmm --snapshot-to DIR / --restore-from DIR does it by hand)")

    def restore(self, instance: Instance, src: str) -> None:
        raise Unsupported("snapshots of native-engine VMs are not wired into virtkit yet "
                          "(virtkit-vmm --snapshot-to DIR / --restore-from DIR does it by hand)")
