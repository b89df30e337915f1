"""Capability names as users write them (NET_RAW, cap_net_raw, CAP_NET_RAW, ALL), checked without syscalls."""

from __future__ import annotations

from virtkit.core.errors import InvalidArgument

# Linux capability numbers, include/uapi/linux/capability.h
CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
ALL_CAPS = tuple(f"CAP_{n}" for n in CAP_NAMES)


def normalise_caps(names: list[str], field: str) -> list[str]:
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise InvalidArgument(f"{field}: {raw!r} is not a capability name")
        name = raw.strip().upper()
        if name == "ALL":
            out.append("ALL")
            continue
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in ALL_CAPS:
            raise InvalidArgument(f"{field}: unknown capability {raw!r}")
        out.append(name)
    return out


def effective_set(default: list[str], add: list[str], drop: list[str]) -> list[str]:
    """Docker's rule: start from the default, drop (ALL drops everything), then add (ALL adds everything)."""
    caps = [] if "ALL" in drop else [c for c in default if c not in drop]
    if "ALL" in add:
        return list(ALL_CAPS)
    for c in add:
        if c not in caps:
            caps.append(c)
    return caps
