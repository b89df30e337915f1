"""The QEMU command line of a VM: microvm, the PVH vmlinux, serial console to a file, QMP on a unix socket.

Measured here under TCG (issue 5): microvm + the ELF vmlinux (PVH entry, no decompression) + tsc_early_khz +
cryptomgr.notests + an uncompressed initramfs boots a busybox guest to power-off in ~2-3 s; `-M pc` + bzImage 4.5 s.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from virtkit.core.errors import SystemFailure
from virtkit.vm.qemu.accel import Accel, host_tsc_khz

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class VmConfig:
    name: str
    vcpus: int
    memory_mib: int
    accel: Accel
    vmlinux: str
    initramfs: str
    console_log: str
    qmp_socket: str
    kernel_params: tuple[str, ...] = ()
    net: dict[str, str] | None = None          # {"tap": NAME, "mac": MAC} on a virtkit network
    agent_socket: str | None = None            # the guest agent's virtio-serial port, as a unix socket server
    agent_port: str | None = None              # the port's name (default AGENT_PORT_NAME)


def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise SystemFailure(f"{QEMU_BINARY} not found: install Debian's qemu-system-x86 package")
    return path


# the busybox guest's kernel parameters on every engine: output on COM1, no boot chatter, a panic ends the VM
KERNEL_PARAMS = ("console=ttyS0", "quiet", "panic=-1", "cryptomgr.notests", "8250.nr_uarts=1")


def kernel_append(cfg: VmConfig) -> str:
    params = list(KERNEL_PARAMS)
    if cfg.accel.name == "tcg":
        khz = host_tsc_khz()
        if khz:
            params.append(f"tsc_early_khz={khz}")
    return " ".join([*params, *cfg.kernel_params])


def build_argv(cfg: VmConfig, binary: str | None = None) -> list[str]:
    accel = ["-accel", "kvm", "-cpu", "host"] if cfg.accel.name == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        binary or qemu_binary(),
        "-name", cfg.name,
        "-M", "microvm",
        *accel,
        "-smp", str(cfg.vcpus),
        "-m", f"{cfg.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",                                   # a guest reboot (or panic) ends QEMU: the VM stopped
        "-kernel", cfg.vmlinux,
        "-initrd", cfg.initramfs,
        "-append", kernel_append(cfg),
        "-chardev", f"file,id=ser0,path={cfg.console_log},append=on",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{cfg.qmp_socket},server=on,wait=off",
        *net_args(cfg.net, vhost=cfg.accel.name == "kvm" and os.path.exists(VHOST_NET)),
        *agent_args(cfg.agent_socket, cfg.agent_port or AGENT_PORT_NAME),
    ]


VHOST_NET = "/dev/vhost-net"


def net_args(net: dict[str, str] | None, vhost: bool = False) -> list[str]:
    """virtio-net (over virtio-mmio on microvm) on the network's TAP; with `vhost` (KVM and /dev/vhost-net there:
    QEMU 7.2 aborts on vhost=on without the device, and TCG cannot use it) the kernel moves the packets."""
    if not net:
        return []
    return ["-netdev", f"tap,id=net0,ifname={net['tap']},script=no,downscript=no{',vhost=on' if vhost else ''}",
            "-device", f"virtio-net-device,netdev=net0,mac={net['mac']}"]


# the name qemu-guest-agent looks for; vkagent looks for it too
AGENT_PORT_NAME = "org.qemu.guest_agent.0"


def agent_args(socket_path: str | None, port_name: str = AGENT_PORT_NAME) -> list[str]:
    """A virtio-serial device (virtio-mmio on microvm) with the agent's port on a unix socket chardev.

    wait=off: QEMU starts without a client; the host side connects per transaction (vm/qemu/agent.py)."""
    if not socket_path:
        return []
    return ["-device", "virtio-serial-device,id=vser0",
            "-chardev", f"socket,id=qga0,path={socket_path},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={port_name}"]
