"""Linux capabilities of the container process: names, defaults, bounding-set drop and capset."""

from __future__ import annotations

from virtkit.container import syscalls as sc
from virtkit.core.capabilities import CAP_NAMES as _NAMES
from virtkit.core.errors import InvalidArgument

# Numbers as in include/uapi/linux/capability.h.
CAPS: dict[str, int] = {f"CAP_{name}": number for number, name in enumerate(_NAMES)}

# Docker's default set.
DEFAULT_CAPS: list[str] = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
# virtkit's default: no raw sockets and no device nodes unless asked (--cap-add NET_RAW / MKNOD).
VIRTKIT_DEFAULT_CAPS: list[str] = [c for c in DEFAULT_CAPS if c not in ("CAP_NET_RAW", "CAP_MKNOD")]

SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    sc.prctl(option, arg2, arg3, label=f"capabilities: prctl({option}, {arg2}) failed")


_LAST_CAP: list[int] = []


def last_cap() -> int:
    """The highest capability this kernel knows; newer names above it are skipped, not failed. Read once per
    process (it is the running kernel's: it cannot change), so a container's init, forked from a process that
    read it, does not read it again after pivot_root."""
    if not _LAST_CAP:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _LAST_CAP.append(int(f.read()))
        except (OSError, ValueError):
            return max(CAPS.values())   # not kept: a container without /proc reads the real one once it has it
    return _LAST_CAP[0]


def validate(capabilities: dict | None) -> None:
    if capabilities is None:
        return
    if not isinstance(capabilities, dict):
        raise InvalidArgument("process.capabilities: must be an object")
    for key, names in capabilities.items():
        if key not in SETS:
            raise InvalidArgument(f"process.capabilities.{key}: unknown set (expected one of {', '.join(SETS)})")
        if names is None:
            continue
        if not isinstance(names, list):
            raise InvalidArgument(f"process.capabilities.{key}: must be a list of names")
        for name in names:
            if not isinstance(name, str) or name not in CAPS:
                raise InvalidArgument(f"process.capabilities.{key}: unknown capability {name!r}")


def _mask(names: list[str] | None, top: int) -> int:
    mask = 0
    for name in names or []:
        number = CAPS[name]
        if number <= top:
            mask |= 1 << number
    return mask


def drop_bounding(capabilities: dict | None) -> None:
    """Drop from the bounding set every capability not listed in `bounding`.

    Needs CAP_SETPCAP in the effective set, so call it before apply().
    """
    if capabilities is None:
        return
    validate(capabilities)
    keep = _mask(capabilities.get("bounding"), last_cap())
    for number in range(last_cap() + 1):
        if not keep & (1 << number):
            _prctl(PR_CAPBSET_DROP, number)


def apply(capabilities: dict | None) -> None:
    """Set effective/permitted/inheritable with capset(2), then the ambient set.

    Runs after the uid switch (the caller kept capabilities with PR_SET_KEEPCAPS).
    """
    if capabilities is None:
        return
    validate(capabilities)
    top = last_cap()
    masks = {key: _mask(capabilities.get(key), top) for key in ("effective", "permitted", "inheritable")}
    for name in capabilities.get("ambient") or []:
        # The kernel requires an ambient cap to be both permitted and inheritable: say which.
        if CAPS[name] <= top and not (masks["permitted"] & masks["inheritable"]) >> CAPS[name] & 1:
            raise InvalidArgument(
                f"process.capabilities.ambient: {name} must also be in permitted and inheritable")
    sc.capset(masks["effective"], masks["permitted"], masks["inheritable"])
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for name in capabilities.get("ambient") or []:
        number = CAPS[name]
        if number <= top:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)


def current() -> dict[str, int]:
    """This process's capability sets from /proc/self/status (CapInh, CapPrm, CapEff, CapBnd, CapAmb)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                out[key] = int(value.strip(), 16)
    return out


def names(mask: int) -> list[str]:
    """The capability names set in `mask` (for messages and tests)."""
    return [name for name, number in CAPS.items() if mask >> number & 1]
