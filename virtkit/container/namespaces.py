"""Namespaces: OCI type names to clone flags, joining by path, and writing user namespace id maps."""

from __future__ import annotations

import errno
import os

from virtkit.container import syscalls as sc
from virtkit.core.errors import InvalidArgument, SystemFailure

FLAGS: dict[str, int] = {
    "user": sc.CLONE_NEWUSER, "pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET, "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS, "cgroup": sc.CLONE_NEWCGROUP, "time": sc.CLONE_NEWTIME,
}
# names under /proc/PID/ns; setns order for exec: user first (it grants the rights for the rest), mnt last
PROC_NAMES: dict[str, str] = {
    "user": "user", "ipc": "ipc", "uts": "uts", "network": "net", "pid": "pid", "cgroup": "cgroup",
    "time": "time", "mount": "mnt",
}


def plan(spec: dict) -> tuple[int, list[tuple[str, int]]]:
    """(flags to unshare, [(type, fd) to join]) in join order; fds are opened here, on the host."""
    flags = 0
    join: list[tuple[str, int]] = []
    nss = spec.get("linux", {}).get("namespaces") or []
    try:
        for ns in sorted(nss, key=lambda n: list(PROC_NAMES).index(n["type"])):
            if ns.get("path"):
                try:
                    fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise InvalidArgument(f"linux.namespaces: {ns['type']} path {ns['path']!r}: "
                                          f"{exc.strerror}") from exc
                join.append((ns["type"], fd))
            else:
                flags |= FLAGS[ns["type"]]
    except BaseException:
        for _, fd in join:
            os.close(fd)
        raise
    return flags, join


def join(entries: list[tuple[str, int]]) -> None:
    for typ, fd in entries:
        sc.setns(fd, FLAGS[typ], label=f"{typ} namespace")
        os.close(fd)


def fork_pid1(own_pid_ns: int) -> int:
    """os.fork() whose child is PID 1 of a new pid namespace, with no process between: unshare(CLONE_NEWPID)
    changes only where this process's next child goes, and `own_pid_ns` (an fd of /proc/self/ns/pid) is set
    back in the parent at once for its later children. The child must not return to the caller's cleanup (a
    process cannot enter an ancestor pid namespace): it goes on as PID 1 or exits."""
    sc.unshare(sc.CLONE_NEWPID)
    try:
        pid = os.fork()
    except BaseException:
        sc.setns(own_pid_ns, sc.CLONE_NEWPID, label="this process's own pid namespace")
        raise
    if pid:
        sc.setns(own_pid_ns, sc.CLONE_NEWPID, label="this process's own pid namespace")
    return pid


def write_id_maps(pid: int, linux: dict) -> None:
    """Write /proc/PID/{uid_map,gid_map}; setgroups is denied only when the kernel demands it."""
    def fmt(maps: list[dict]) -> bytes:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps).encode()

    _write(f"/proc/{pid}/uid_map", fmt(linux["uidMappings"]), "linux.uidMappings")
    data = fmt(linux["gidMappings"])
    try:
        _write(f"/proc/{pid}/gid_map", data, "linux.gidMappings")
    except PermissionError:
        _write(f"/proc/{pid}/setgroups", b"deny", "setgroups")
        _write(f"/proc/{pid}/gid_map", data, "linux.gidMappings")


def _write(path: str, data: bytes, field: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EPERM and field == "linux.gidMappings":
            raise PermissionError(exc.errno, exc.strerror) from exc
        raise SystemFailure(f"{field}: writing {path} failed: {exc.strerror}") from exc


def host_differs(pid: int, typ: str) -> bool:
    """Whether the process's namespace of this type differs from ours (only then does exec join it)."""
    name = PROC_NAMES[typ]
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino
    except FileNotFoundError:
        return False
