"""Container cgroups: version detection and the CgroupManager for v1 and v2 behind one interface."""

from __future__ import annotations

import os

from virtkit.container.cgroups.base import CgroupManager, normalize_path
from virtkit.core.errors import InvalidArgument

_VERSION_CACHE: dict[str, int] = {}


def detect_version(root: str = "/sys/fs/cgroup") -> int:
    """2 when `root` is a unified (cgroup2) tree, else 1; probed once per root.

    A cgroup2 root always has cgroup.controllers; a v1 or hybrid /sys/fs/cgroup is a tmpfs
    of per-controller mounts without it. Checking the file (not statfs) also works on fixtures.
    """
    key = os.path.normpath(root)
    version = _VERSION_CACHE.get(key)
    if version is None:
        version = 2 if os.path.exists(os.path.join(key, "cgroup.controllers")) else 1
        _VERSION_CACHE[key] = version
    return version


def manager_for(path: str, *, root: str = "/sys/fs/cgroup", version: int | None = None,
                controllers: tuple[str, ...] | None = None) -> CgroupManager:
    """The manager for OCI linux.cgroupsPath `path` (absolute or relative to the hierarchy root).

    controllers: on v1, only these hierarchies (default: every one a container joins); v2 has one tree.
    """
    normalize_path(path)
    if version is None:
        version = detect_version(root)
    if version == 1:
        from virtkit.container.cgroups.v1 import V1Manager

        return V1Manager(path, root, controllers)
    if version == 2:
        from virtkit.container.cgroups.v2 import V2Manager

        return V2Manager(path, root)
    raise InvalidArgument(f"cgroup version: must be 1 or 2 (got {version!r})")


__all__ = ["CgroupManager", "detect_version", "manager_for"]
