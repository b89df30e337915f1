"""Where a virtkit home keeps things: one object that names every path under $VIRTKIT_HOME."""

from __future__ import annotations

import os

DEFAULT_HOME = "/var/lib/virtkit"


class Home:
    """Immutable; equal when the roots are. (A plain class, not a dataclass: every CLI command imports this,
    and dataclasses costs ~6 ms of its start.)"""

    __slots__ = ("root",)
    root: str

    def __init__(self, root: str) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Home is immutable (tried to set {name})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Home) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Home(root={self.root!r})"

    @classmethod
    def from_env(cls, root: str | None = None) -> Home:
        return cls(os.path.abspath(root or os.environ.get("VIRTKIT_HOME") or DEFAULT_HOME))

    @property
    def id(self) -> str:
        """Short stable id of this home; prefixes every global kernel object (cgroups, links) it makes."""
        import hashlib

        return hashlib.sha256(self.root.encode()).hexdigest()[:8]

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "virtkitd.sock")

    @property
    def db(self) -> str:
        return os.path.join(self.root, "virtkit.db")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def supervisor_socket(self) -> str:
        return os.path.join(self.run_dir, "supervisor.sock")

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def vm_disks(self) -> str:
        """Base disks of VM images, one per image digest (storage/vm_disks.py)."""
        return os.path.join(self.root, "vmdisks")

    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def trash(self) -> str:
        """Removed instances' directories, renamed here and deleted in the background (storage/trash.py)."""
        return os.path.join(self.root, "trash")

    @property
    def runtime_root(self) -> str:
        return os.path.join(self.run_dir, "runtime")

    @property
    def cgroup_parent(self) -> str:
        return f"/virtkit-{self.id}"

    def instance_dir(self, instance_id: str) -> str:
        return os.path.join(self.containers, instance_id)

    def ensure(self) -> None:
        for d in (self.root, self.run_dir, self.images, self.containers, self.runtime_root):
            os.makedirs(d, mode=0o700, exist_ok=True)
