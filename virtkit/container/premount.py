"""Mounts a spare (container/spares.py) makes before it is taken, attached nowhere until its container takes them.

A spare waits in its container's pid, network, uts and ipc namespaces before it knows its container. The file
systems of the usual mounts (runc's and virtkit's defaults, spec.default_spec: /proc, a /dev tmpfs, /dev/pts,
/dev/shm, /dev/mqueue, /sys) depend on nothing else, so the spare makes them then, with the new mount API (fsopen,
fsmount: a mount held by an fd, in no mount namespace; closing the fd unmounts it), /dev with its nodes and links.
A spare that waits in a cgroup of its own (cgroup v1: renamed to its container's when taken) makes its cgroup
namespace then too, and /sys/fs/cgroup with it: a tmpfs holding a cgroupfs per hierarchy, read-only.
When it is taken, each config.json mount that is the template's own, to the letter, is put in place as a new mount
of the premade file system (open_tree's clone, then move_mount: no file system is set up, and for /dev no 6 mknods
and 5 symlinks either; a clone, so that /proc/self/mountinfo lists it in the order a mount(2) at that moment
would). A mount that differs is mounted as always, and what is not taken is let go. What a container sees is the
same either way (tests/container/test_spares.py compares the two to the letter).
"""

from __future__ import annotations

import os

from virtkit.container import rootfs
from virtkit.container import syscalls as sc
from virtkit.container.devices import DEFAULT_DEVICES
from virtkit.core.errors import SystemFailure

# mount(2) flags as a detached mount's attributes; a template mount with any other flag is not made ahead
_ATTRS = {sc.MS_RDONLY: sc.MOUNT_ATTR_RDONLY, sc.MS_NOSUID: sc.MOUNT_ATTR_NOSUID, sc.MS_NODEV: sc.MOUNT_ATTR_NODEV,
          sc.MS_NOEXEC: sc.MOUNT_ATTR_NOEXEC, sc.MS_NOATIME: sc.MOUNT_ATTR_NOATIME,
          sc.MS_STRICTATIME: sc.MOUNT_ATTR_STRICTATIME, sc.MS_NODIRATIME: sc.MOUNT_ATTR_NODIRATIME,
          sc.MS_NOSYMFOLLOW: sc.MOUNT_ATTR_NOSYMFOLLOW, sc.MS_RELATIME: 0}
# the namespace each file system belongs to: made ahead only where the spare has its container's own (a joined
# network namespace has another sysfs); tmpfs and devpts (newinstance) belong to none
_NAMESPACE = {"proc": sc.CLONE_NEWPID, "sysfs": sc.CLONE_NEWNET, "mqueue": sc.CLONE_NEWIPC, "tmpfs": 0, "devpts": 0,
              "cgroup": sc.CLONE_NEWCGROUP}


def _key(m: dict) -> tuple:
    return (os.path.normpath(m["destination"]), m.get("type"), m.get("source"), tuple(m.get("options") or ()))


def _template() -> list[dict]:
    from virtkit.container.spec import default_spec

    return [m for m in default_spec()["mounts"] if m.get("type") in _NAMESPACE]


class Premade:
    """The detached mounts of a spare, by their config.json entry."""

    def __init__(self) -> None:
        self.fds: dict[tuple, int] = {}

    @classmethod
    def make(cls, ns_flags: int) -> Premade:
        """The template's mounts that fit a spare with these namespaces (all or none: an error lets go of them)."""
        pm = cls()
        try:
            template = _template()
            for m in template:
                if _NAMESPACE[m["type"]] & ~ns_flags:
                    continue
                if m["type"] == "cgroup":
                    try:
                        fd = _cgroup_tree(m)
                    except SystemFailure:   # an older kernel mounts nothing on a detached tree: made at take
                        fd = None
                    if fd is not None:
                        pm.fds[_key(m)] = fd
                    continue
                fd = pm.fds[_key(m)] = _fsmount(m)
                if m["type"] == "tmpfs" and os.path.normpath(m["destination"]) == "/dev":
                    _fill_dev(fd, [os.path.basename(t["destination"]) for t in template
                                   if os.path.dirname(os.path.normpath(t["destination"])) == "/dev"])
        except BaseException:
            pm.close()
            raise
        return pm

    def drop(self, fstype: str) -> None:
        """Let go of the mounts of this type (sysfs, when the container joins another network namespace)."""
        for key in [k for k in self.fds if k[1] == fstype]:
            os.close(self.fds.pop(key))

    def place(self, root_fd: int, m: dict) -> bool:
        """The premade mount that is config.json's `m`, onto its destination in root_fd; False when none is."""
        fd = self.fds.pop(_key(m), None)
        if fd is None:
            return False
        try:
            target = rootfs.open_in_root(root_fd, m["destination"], create="dir")
            try:
                sc.place_mount(fd, target, label=m["destination"], recursive=m["type"] == "cgroup")
            finally:
                os.close(target)
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        """Let go of what was not taken."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _fsmount(m: dict) -> int:
    """`m` made as mount(2) would, attached nowhere: superblock options (and "ro") by fsconfig, the rest as the
    mount's attributes."""
    flags, prop, data = rootfs.parse_options(list(m.get("options") or []))
    if prop:
        raise ValueError(f"mount {m['destination']}: options {m.get('options')} cannot be made ahead")
    attrs = _attrs(flags, m)
    params = [("source", m.get("source") or m["type"]), *_fs_params(data)]
    if attrs & sc.MOUNT_ATTR_RDONLY:
        params.append(("ro", None))     # mount(2)'s MS_RDONLY makes a new superblock read-only too
    return sc.fsmount(m["type"], params, attrs, label=m["destination"])


def _cgroup_tree(m: dict) -> int | None:
    """/sys/fs/cgroup as rootfs._mount_cgroup makes it in a cgroup namespace on a host with cgroup v1 hierarchies:
    a tmpfs holding a fresh cgroupfs of each (made in the spare's cgroup namespace, rooted at its own cgroup: the
    container's once taken), read-only; None on a host with only the unified hierarchy (its spares have no cgroup
    of their own to wait in)."""
    hier = rootfs.cgroup_hierarchies()
    if not hier or len(hier) == 1 and hier[0][1] == "cgroup2":
        return None
    flags, _prop, _data = rootfs.parse_options(list(m.get("options") or []))
    attrs = _attrs(flags | sc.MS_RDONLY, m)
    tmp = sc.fsmount("tmpfs", [("source", "tmpfs"), ("mode", "755")],
                     sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC, label=m["destination"])
    try:
        for mnt, fstype, opts in hier:
            name = os.path.basename(mnt)
            os.mkdir(name, 0o755, dir_fd=tmp)
            params = [("source", "cgroup"), *_fs_params(opts)]
            # a hierarchy's superblock is the host's: read-only is the mount's alone, as a mount(2) would leave it
            fd = sc.fsmount(fstype, params, attrs, label=f"{m['destination']}/{name}")
            try:
                target = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp)
                try:
                    sc.place_mount(fd, target, label=f"{m['destination']}/{name}")
                finally:
                    os.close(target)
            finally:
                os.close(fd)
        sc.set_mount_attrs(tmp, sc.MOUNT_ATTR_RDONLY, label=m["destination"])
    except BaseException:
        os.close(tmp)
        raise
    return tmp


def _fs_params(data: str) -> list[tuple[str, str | None]]:
    """mount(2)'s data string ("mode=755,newinstance") as fsconfig's parameters (None: a flag)."""
    out: list[tuple[str, str | None]] = []
    for opt in filter(None, data.split(",")):
        k, eq, v = opt.partition("=")
        out.append((k, v if eq else None))
    return out


def _attrs(flags: int, m: dict) -> int:
    """mount(2) flags as a detached mount's attributes (ValueError for one that has none)."""
    attrs = 0
    for bit, attr in _ATTRS.items():
        if flags & bit:
            attrs |= attr
            flags &= ~bit
    if flags:
        raise ValueError(f"mount {m['destination']}: options {m.get('options')} cannot be made ahead")
    return attrs


def _fill_dev(dev_fd: int, mount_points: list[str]) -> None:
    """A new /dev's default nodes and links, and the directories its other mounts go on (as mount_all makes them)."""
    for d in DEFAULT_DEVICES:
        rootfs.make_node(dev_fd, os.path.basename(d["path"]), d, userns=False)
    for name in mount_points:
        os.mkdir(name, 0o755, dir_fd=dev_fd)
    rootfs.dev_links(dev_fd)
