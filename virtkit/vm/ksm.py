"""Kernel same-page merging (KSM) for VM memory, turned on and off by the user, host-wide.

QEMU marks guest RAM mergeable (its mem-merge machine option, on by default), so once ksmd runs, pages that
are the same in several VMs are kept once: every VM booting the same cached kernel holds that kernel's text
and data in its RAM. Measured here (3 idle busybox VMs under TCG): their QEMUs' PSS went from 187 to 119 MiB per
VM within 10 s (0.63; bench/vm_density.py). ksmd costs CPU while it scans, and merged pages can be a side
channel between VMs (a write to a shared page takes longer), so virtkit never turns it on by itself: Debian
leaves it off, and `virtkit system ksm on` is the user's choice for the whole host.
"""

from __future__ import annotations

import os
from typing import Any

from virtkit.core.errors import InvalidArgument, Unsupported

KSM_DIR = "/sys/kernel/mm/ksm"
# ~50,000 pages (195 MiB) scanned per second: the three VMs above merged within one 5 s look; the kernel's default
# (100 pages every 20 ms) takes ~40 s per pass over them
PAGES_TO_SCAN = 1000
SLEEP_MS = 20
RUN_STOP_AND_UNMERGE = "2"


def _read(name: str, root: str) -> int:
    with open(os.path.join(root, name)) as f:
        return int(f.read().strip())


def _write(name: str, value: str, root: str) -> None:
    with open(os.path.join(root, name), "w") as f:
        f.write(value)


def status(root: str = KSM_DIR) -> dict[str, Any]:
    """Whether the kernel has KSM, whether it runs, and what it saves now."""
    if not os.path.isdir(root):
        return {"available": False, "enabled": False}
    page = os.sysconf("SC_PAGE_SIZE")
    sharing = _read("pages_sharing", root)
    return {"available": True, "enabled": _read("run", root) == 1, "pages_shared": _read("pages_shared", root),
            "pages_sharing": sharing, "saved_mib": round(sharing * page / (1 << 20), 1),
            "pages_to_scan": _read("pages_to_scan", root), "sleep_millisecs": _read("sleep_millisecs", root)}


def set_enabled(enabled: Any, root: str = KSM_DIR) -> dict[str, Any]:
    """On: ksmd scans at virtkit's rate. Off: ksmd stops and unmerges what it merged (memory use as before)."""
    if not isinstance(enabled, bool):
        raise InvalidArgument(f"enabled: must be true or false (got {enabled!r})")
    if not os.path.isdir(root):
        raise Unsupported(f"KSM: {root} is missing (the kernel is built without CONFIG_KSM)")
    try:
        if enabled:
            _write("pages_to_scan", str(PAGES_TO_SCAN), root)
            _write("sleep_millisecs", str(SLEEP_MS), root)
            _write("run", "1", root)
        else:
            _write("run", RUN_STOP_AND_UNMERGE, root)
    except PermissionError as exc:
        raise Unsupported(f"KSM: cannot write {root} ({exc.strerror}): virtkitd must run as root "
                          "with a writable /sys") from exc
    return status(root)
