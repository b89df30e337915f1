"""Kernel loading for the native VMM: one call that puts a kernel in guest memory and says how to enter it.

Formats (boot.detect): a Linux bzImage through its 64-bit entry (boot.bzimage), an ELF64 vmlinux through PVH or
its 64-bit entry (boot.elf), raw 64-bit code (boot.flat). Every loader checks everything before it writes guest
memory, so a BootError leaves the memory as it was.
"""

from __future__ import annotations

import importlib

from virtkit.vm.kvm.boot.common import BootPlan
from virtkit.vm.kvm.boot.detect import AUTO, FORMATS, detect_format
from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.memory import GuestMemory

__all__ = ["AUTO", "FORMATS", "BootPlan", "detect_format", "load_kernel"]

# imported on use: a VMM start pays only for the loader of its kernel's format
_LOADERS = {"bzimage": ("virtkit.vm.kvm.boot.bzimage", "load_bzimage"), "elf": ("virtkit.vm.kvm.boot.elf", "load_elf"),
            "flat": ("virtkit.vm.kvm.boot.flat", "load_flat")}


def load_kernel(mem: GuestMemory, image: bytes, fmt: str = AUTO, *, cmdline: str = "", initrd: bytes | None = None,
                load_addr: int | None = None, entry: int | None = None) -> BootPlan:
    """Load `image` (and `initrd`, and `cmdline`) into `mem` by format `fmt`; the plan says how to start the vCPU.

    Then: cpu_setup.write_tables(mem, paging=plan.mode == "long64") and setup_long_mode(rip=plan.entry,
    rsp=plan.stack, rsi=plan.boot_params) or setup_protected_mode(eip=plan.entry, ebx=plan.boot_params).
    """
    for name, value in (("load_addr", load_addr), ("entry", entry)):
        if value is not None and (not isinstance(value, int) or value < 0 or value >= 1 << 32):
            raise BootError(f"{name} must be a guest-physical address below 4 GiB (got {value!r})")
    kind = detect_format(image, fmt)
    module, function = _LOADERS[kind]
    loader = getattr(importlib.import_module(module), function)
    return loader(mem, bytes(image), cmdline=cmdline, initrd=initrd, load_addr=load_addr, entry=entry)
