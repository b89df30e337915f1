"""The QEMU InstanceDriver (engine "qemu" of type "vm"): QEMU's boot files and command line, QMP, ACPI stop.

The process machinery (waiter, pid, state, exit records, removal, figures) is virtkit.vm.process's.

Instance spec keys read (all optional):
  cpus      vCPUs (a float like the container limit; rounded up), default 1, at most the host's CPU count
  memory    guest RAM in bytes (or a size string like "512M"), default 256M, at least 64M, at most host RAM
  command   argv run by the guest's /init (default: the image's Entrypoint + Cmd, else `sh`)
  env       ["NAME=VALUE", ...] exported to the command
  hostname  the guest's hostname (default: the instance name)
  kernel    absolute path of a kernel to boot instead of Debian's cloud kernel: an ELF vmlinux with a PVH note,
            or a bzImage to extract it from (its drivers must be built in: no modules are loaded for it)
  accel     "auto" (default) | "kvm" | "tcg"; a kvm that cannot work here is an InvalidArgument
  disk_size, volumes   the root disk's size and volume disks: vm/qemu/disks.py (snapshots: vm/qemu/snapshot.py)
  template  False (--no-template): a system image's VM boots rather than starting from its template
  cloud_init  {"user_data": TEXT|None, "ssh_keys": [KEY, ...]} (--user-data, --ssh-key; core/options.py reads the
            files): a NoCloud seed disk for a system image's cloud-init (vm/qemu/seed.py); such a VM boots

A system image (`image build debian --vm`, labels org.virtkit.vm.*: vm/qemu/imageboot.py) boots its own kernel,
initramfs and init with its own cmdline before virtkit's, and runs no command; exec goes to its qemu-guest-agent,
and a VM of it starts from the image's saved template where that is safe (vm/qemu/template.py).

Boot files under $VIRTKIT_HOME/vms/<id>/: vmlinux + initramfs.cpio (hard links into the kernel cache).
The QMP socket is $VIRTKIT_HOME/run/qmp-<id[:16]>.sock. exec (guest agent) and console input: vm/qemu/access.py.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from typing import Any

from virtkit.core.driver import ExitStatus
from virtkit.core.errors import InvalidArgument, InvalidState, SystemFailure
from virtkit.core.models import Instance
from virtkit.vm.process import VmProcessDriver, link_or_copy
from virtkit.vm.qemu import accel as accel_mod
from virtkit.vm.qemu import qmp
from virtkit.vm.qemu.access import GuestAccess
from virtkit.vm.qemu.cmdline import VmConfig, build_argv, qemu_binary
from virtkit.vm.qemu.disks import VmDisks
from virtkit.vm.qemu.imageboot import ImageBoot, boot_files, image_boot
from virtkit.vm.qemu.seed import SEED_FILE, seed_args, seed_files, write_seed
from virtkit.vm.qemu.snapshot import VmSnapshots
from virtkit.vm.qemu.template import VmTemplates

log = logging.getLogger(__name__)


class QemuDriver(GuestAccess, VmTemplates, VmSnapshots, VmDisks, VmProcessDriver):
    process_name = "QEMU"
    stop_reason = "stopped by ACPI powerdown"

    def qmp_socket(self, instance: Instance) -> str:
        return os.path.join(self.home.run_dir, f"qmp-{instance.id[:16]}.sock")

    def control_socket(self, instance: Instance) -> str:
        return self.qmp_socket(instance)

    # -- create ---------------------------------------------------------------------------------------
    def _validate(self, instance: Instance) -> dict[str, Any]:
        spec = instance.spec or {}
        chosen = accel_mod.choose(spec.get("accel"))
        plan = self._validate_machine(instance)
        kernel = spec.get("kernel")
        if kernel is not None:
            from virtkit.vm.qemu.kernel import check_kernel_file

            check_kernel_file(kernel)
        boot = self._image_boot(instance)
        self._check_guest_config(instance, boot)
        if boot is not None:
            plan = self._plan_system(instance, plan, boot)
        plan.update(self._plan_disks(instance, plan))      # it may build the image's base disk
        plan = {**plan, "accel": chosen.name, "accel_reason": chosen.reason, "kernel": kernel}
        if boot is not None:
            plan.update(self._plan_template(instance, plan))   # last: it needs the whole plan
        return plan

    # -- system images (debian --vm): the image's own kernel, initramfs and init --------------------------
    def _image_boot(self, instance: Instance) -> ImageBoot | None:
        if self.images is None or not instance.image:
            return None
        return image_boot(self.images.get(instance.image).config)

    def _check_guest_config(self, instance: Instance, boot: ImageBoot | None) -> None:
        guest = (instance.spec or {}).get("cloud_init")
        if not guest:
            return
        field = "user_data" if guest.get("user_data") is not None else "ssh_keys"
        if boot is None:
            raise InvalidArgument(f"{field}: image '{instance.image}' takes no cloud-init: a minimal VM is "
                                  "configured by its kernel command line (hostname, network, command); "
                                  "--user-data and --ssh-key are for VMs of system images (image build debian --vm)")
        if not boot.cloud_init:
            raise InvalidArgument(f"{field}: image '{instance.image}' has no cloud-init to read it (an older "
                                  "build: make it again with `virtkit image build debian --vm`)")
        seed_files(instance.id, self._hostname(instance), guest["ssh_keys"], guest["user_data"])  # its errors now

    @staticmethod
    def _hostname(instance: Instance) -> str:
        return (instance.spec or {}).get("hostname") or instance.name

    def _plan_system(self, instance: Instance, plan: dict[str, Any], boot: ImageBoot) -> dict[str, Any]:
        """The image boots its own init: no command, its kernel parameters first, then virtkit's (network,
        hostname; the MAC picks the interface) as its network unit reads them."""
        spec = instance.spec or {}
        if spec.get("command"):
            raise InvalidArgument(f"command: image '{instance.image}' boots its own system as a VM and runs no "
                                  f"command of virtkit's; run -d, then `virtkit exec NAME -- CMD`")
        if spec.get("volumes"):
            raise InvalidArgument(f"volumes: not supported yet for VMs of system images ('{instance.image}')")
        params = [*boot.cmdline, *(p for p in plan["params"] if not p.startswith("virtkit.cmd="))]
        if plan.get("net"):
            params.append(f"virtkit.mac={plan['net']['mac']}")
        seed = bool(spec.get("cloud_init"))
        if boot.cloud_init and not seed:
            params.append("cloud-init=disabled")    # its generator stops at once: no ds-identify, no units
        vmlinux, initrd = boot_files(self.home.vm_disks, self.images.get(instance.image).digest,
                                     self.images.layer_paths(instance.image), boot)
        # "guest": the seed's content, for _install_boot_files only (taken out of the plan there, not stored)
        guest = {"id": instance.id, "hostname": self._hostname(instance), **spec["cloud_init"]} if seed else None
        return {**plan, "params": params, "seed": SEED_FILE if seed else None, "guest": guest,
                "system": {"vmlinux": vmlinux, "initrd": initrd, "agent_port": boot.agent_port}}

    def _check_host(self) -> None:
        qemu_binary()

    def _install_boot_files(self, plan: dict[str, Any], default: tuple[Any, str] | None,
                            vdir: str) -> dict[str, Any]:
        """vmlinux (a user's bzImage is unpacked: microvm boots only the ELF) and initramfs.cpio."""
        from virtkit.vm.qemu import initramfs, kernel, vkagent

        vmlinux = os.path.join(vdir, "vmlinux")
        if plan.get("system"):
            if plan["kernel"]:
                self._custom_kernel(plan["kernel"], vmlinux)
            else:
                link_or_copy(plan["system"]["vmlinux"], vmlinux)
            link_or_copy(plan["system"]["initrd"], os.path.join(vdir, "initramfs.cpio"))
            self._install_disks(plan, vdir)
            if guest := plan.pop("guest", None):
                write_seed(os.path.join(vdir, SEED_FILE),
                           seed_files(guest["id"], guest["hostname"], guest["ssh_keys"], guest["user_data"]))
            return {"release": "custom" if plan["kernel"] else "image"}
        if default is None:
            self._custom_kernel(plan["kernel"], vmlinux)
            kern = kernel.Kernel(release="custom", vmlinux=vmlinux, modules=[])
            initrd = initramfs.build(kern, kernel.busybox(), vkagent.build())
        else:
            kern, initrd = default
            link_or_copy(kern.vmlinux, vmlinux)
        link_or_copy(initrd, os.path.join(vdir, "initramfs.cpio"))
        self._install_disks(plan, vdir)
        return {"release": kern.release}

    @staticmethod
    def _default_boot_files() -> tuple[Any, str]:
        """Debian's cloud kernel and the busybox initramfs for it, with the guest agent (all cached)."""
        from virtkit.vm.qemu import initramfs, kernel, vkagent

        kern = kernel.default_kernel()
        return kern, initramfs.build(kern, kernel.busybox(), vkagent.build())

    def _log_created(self, instance: Instance, plan: dict[str, Any]) -> None:
        log.info("VM %s: accelerator %s (%s)", instance.name, plan["accel"], plan["accel_reason"])

    @staticmethod
    def _custom_kernel(src: str, dst: str) -> None:
        from virtkit.vm.qemu.vmlinux import extract_vmlinux, is_elf

        with open(src, "rb") as f:
            data = f.read()
        if is_elf(data):
            link_or_copy(src, dst)
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
            kernel_params=tuple(self._boot_params(instance, plan)), net=plan.get("net"),
            agent_socket=self.agent_socket(instance), agent_port=(plan.get("system") or {}).get("agent_port"),
        )
        seed = seed_args(self._file(instance, plan["seed"])) if plan.get("seed") else []
        return build_argv(cfg) + self._disk_args(instance) + seed + self._resume_args(instance) + \
            self._template_args(instance)

    # -- state ----------------------------------------------------------------------------------------
    def _ready(self, instance: Instance) -> bool:
        """QMP answers once QEMU's machine is set up (kernel loaded): before, QEMU may still fail."""
        sock = self.qmp_socket(instance)
        if not os.path.exists(sock):
            return False
        try:
            qmp.query_status(sock)
        except SystemFailure:
            return False
        return True

    def _paused(self, instance: Instance) -> bool:
        if self._held_by_saver(instance):
            return False
        try:
            state = qmp.query_status(self.qmp_socket(instance)).get("status")
        except SystemFailure:
            return False
        return state in ("paused", "suspended")

    def _process_marker(self, instance: Instance) -> bytes:
        return f"virtkit-{instance.id}".encode()      # QEMU's -name

    def _process_exit_status(self, instance: Instance, rec: dict[str, Any], finished: float) -> ExitStatus:
        if rec["code"] == 0 and self.info(instance).get("system") and "terminating on signal" not in \
                self._process_stderr(instance):
            # a system image's VM runs no command: its clean power-off is its normal end
            return ExitStatus(0, self.stop_reason if self._stop_requested(instance) else "guest powered off",
                              finished)
        if rec["code"] != 0:
            return ExitStatus(int(rec["code"]), f"qemu failed (exit status {rec['code']})", finished)
        # QEMU ends cleanly on SIGTERM/SIGINT/SIGHUP, saying so on stderr
        m = re.search(r"terminating on signal (\d+)", self._process_stderr(instance))
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

    # -- stop / pause ---------------------------------------------------------------------------------
    def stop(self, instance: Instance, timeout: float) -> None:
        """ACPI powerdown through QMP (the guest's /init ends its command and powers off), SIGKILL after timeout."""
        pid = self._process_pid(instance)
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
        self._sigkill(instance, pid)

    def stats(self, instance: Instance) -> dict[str, Any]:
        out = super().stats(instance)
        if not out:
            return out
        if boot := self.boot_info(instance):
            out["boot"] = boot          # started from a template or booted, and why
        out.update(self._io_counters(instance))
        return out

    def _io_counters(self, instance: Instance) -> dict[str, Any]:
        """Disks from QEMU (query-blockstats), network from the TAP's counters on the host: what the host side
        sent is what the guest received, so they are given the guest's way round."""
        out: dict[str, Any] = {}
        try:
            blocks = qmp.execute(self.qmp_socket(instance), "query-blockstats") or []
        except Exception:  # noqa: BLE001 - QMP busy or going away: the other figures still stand
            blocks = []
        disks = {}
        for b in blocks:
            name, st = b.get("qdev") or b.get("device") or b.get("node-name") or "?", b.get("stats") or {}
            disks[name.rsplit("/", 2)[-2] if name.endswith("/virtio-backend") else name] = {
                k: int(st.get(k, 0)) for k in ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")}
        if disks:
            out["disks"] = disks
        tap = (self.info(instance).get("net") or {}).get("tap")
        if tap:
            raw = {}
            for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
                try:
                    with open(f"/sys/class/net/{tap}/statistics/{k}") as f:
                        raw[k] = int(f.read())
                except (FileNotFoundError, ValueError):
                    raw = {}
                    break
            if raw:
                out["network"] = {"interface": tap, "rx_bytes": raw["tx_bytes"], "tx_bytes": raw["rx_bytes"],
                                  "rx_packets": raw["tx_packets"], "tx_packets": raw["rx_packets"]}
        return out

    def pause(self, instance: Instance) -> None:
        self._require_running(instance)
        qmp.stop(self.qmp_socket(instance))

    def resume(self, instance: Instance) -> None:
        self._require_running(instance)
        qmp.cont(self.qmp_socket(instance))
