"""Choosing QEMU's accelerator: KVM where the host has hardware virtualization, TCG elsewhere (PVM included).

A PVM host (module kvm_pvm: KVM done in software inside a VM) has a working /dev/kvm, but a guest that is not
PVM-enabled runs through KVM's instruction emulator at about a million instructions per second: a stock kernel
does not boot in useful time, so TCG (QEMU's own translator) is the faster choice there.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from virtkit.core.errors import InvalidArgument

ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class HostAccel:
    kvm_usable: bool
    reason: str             # why KVM is (not) usable, for the user


@dataclass(frozen=True)
class Accel:
    name: str               # "kvm" | "tcg"
    reason: str             # why this one


@functools.cache
def probe(sys_root: str = "/sys", dev_kvm: str = "/dev/kvm") -> HostAccel:
    """What the host offers; cached per process (modules do not come and go under a running virtkitd)."""
    if os.path.isdir(os.path.join(sys_root, "module", "kvm_pvm")):
        return HostAccel(False, "this host's /dev/kvm is PVM (module kvm_pvm: software nested virtualization); "
                                "a stock kernel runs there through KVM's instruction emulator, far slower than TCG")
    if not os.path.exists(dev_kvm):
        return HostAccel(False, "the host has no /dev/kvm (no hardware virtualization exposed, or kvm not loaded)")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return HostAccel(False, f"{dev_kvm} is not readable and writable by this user")
    if not any(os.path.isdir(os.path.join(sys_root, "module", m)) for m in ("kvm_intel", "kvm_amd")):
        return HostAccel(False, "/dev/kvm is there but neither kvm_intel nor kvm_amd is loaded")
    return HostAccel(True, "hardware KVM (kvm_intel/kvm_amd) is available")


def choose(requested: str | None, host: HostAccel | None = None) -> Accel:
    """The accelerator for a VM: `requested` is the spec's accel ("auto", "kvm", "tcg" or None)."""
    host = host or probe()
    req = requested or "auto"
    if req not in ACCELS:
        raise InvalidArgument(f"accel: must be one of {', '.join(ACCELS)} (got {req!r})")
    if req == "kvm":
        if not host.kvm_usable:
            raise InvalidArgument(f"accel: kvm cannot work on this host: {host.reason}; use accel tcg or auto")
        return Accel("kvm", "requested")
    if req == "tcg":
        return Accel("tcg", "requested")
    if host.kvm_usable:
        return Accel("kvm", host.reason)
    return Accel("tcg", f"TCG emulation chosen because {host.reason}")


def host_tsc_khz() -> int | None:
    """The host TSC frequency: under TCG the guest reads the host's TSC, and microvm (no HPET, PIT calibration
    unreliable under TCG) needs it given as tsc_early_khz= or it may hang while calibrating."""
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None
