"""Named volumes: create, list, inspect, remove, and what an instance that uses one needs (the VolumeService).

Policy lives here, files in `storage.volumes`. An ext4 volume is mounted on the host while any instance
that refers to it exists (from that instance's create to its rm): create and rm are explicit daemon
operations, so the count is exact without watching processes exit, and a volume no instance refers to
holds no mount and no loop device. A start re-mounts it if the host lost the mount (a reboot).
A VM takes an ext4 volume as a disk instead (QEMU opens its image file): never mounted on the host
then, and used by no other instance meanwhile.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from virtkit.core.models import Instance, validate_name
from virtkit.core.options import parse_size

if TYPE_CHECKING:
    from virtkit.store.base import Store

EXT4_MIN_SIZE = 2 << 20          # mkfs.ext4 cannot fit a journal below this
EXT4_MAX_SIZE = 16 << 40         # the largest image file an ext4 host filesystem holds
DRIVERS = ("dir", "ext4")


@dataclass
class Volume:
    name: str
    driver: str                  # dir | ext4
    size: int | None             # bytes (ext4); None: no quota (dir)
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_volume_size(value: Any) -> int:
    size = parse_size(value, "size")
    if size < EXT4_MIN_SIZE:
        raise InvalidArgument(f"size: {value!r} is below the smallest ext4 volume (2M)")
    if size > EXT4_MAX_SIZE:
        raise InvalidArgument(f"size: {value!r} is above the largest volume (16T)")
    return (size + 4095) // 4096 * 4096          # whole 4 KiB blocks


def named_volumes(instance: Instance) -> list[str]:
    """Names of the volumes an instance's spec refers to (bind mounts of host dirs are not volumes)."""
    return [v["volume"] for v in instance.spec.get("volumes") or [] if v.get("volume")]


class VolumeService:
    def __init__(self, store: Store, files: Any) -> None:
        self.store = store
        self.files = files            # storage.volumes.VolumeFiles: the side effects
        self._lock = threading.RLock()

    # -- queries --------------------------------------------------------------------------------------
    def users(self, name: str, *, exclude: str | None = None) -> list[Instance]:
        return [i for i in self.store.list_instances() if name in named_volumes(i) and i.id != exclude]

    def describe(self, vol: Volume) -> dict[str, Any]:
        d = vol.to_dict()
        d["path"] = self.files.data_path(vol.name)
        d["image"] = self.files.image_path(vol.name) if vol.driver == "ext4" else None
        d["mounted"] = self.files.is_mounted(vol.name) if vol.driver == "ext4" else None
        d["used_by"] = [i.name for i in self.users(vol.name)]
        return d

    def get(self, name: str) -> Volume:
        return self.store.get_volume(name)

    def inspect(self, name: str) -> dict[str, Any]:
        vol = self.get(name)
        d = self.describe(vol)
        d["usage"] = self.files.usage(vol.name, vol.driver)
        return d

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(v) for v in self.store.list_volumes()]

    # -- create / remove ------------------------------------------------------------------------------
    def create(self, req: dict[str, Any]) -> Volume:
        name = req.get("name")
        validate_name(name, "name")          # type: ignore[arg-type]
        size = req.get("size")
        driver = req.get("driver") or ("ext4" if size is not None else "dir")
        if driver not in DRIVERS:
            raise InvalidArgument(f"driver: unknown volume driver {driver!r} (known: {', '.join(DRIVERS)})")
        if driver == "dir" and size is not None:
            raise InvalidArgument("size: a dir volume has no size limit; a size makes an ext4 volume")
        if driver == "ext4":
            if size is None:
                raise InvalidArgument("size: an ext4 volume needs a size, e.g. --size 1G")
            size = validate_volume_size(size)
        with self._lock:
            return self._create(name, driver, size)  # type: ignore[arg-type]

    def _create(self, name: str, driver: str, size: int | None) -> Volume:
        try:
            self.store.get_volume(name)
            raise AlreadyExists(f"a volume named '{name}' already exists")
        except NotFound:
            pass
        vol = Volume(name=name, driver=driver, size=size, created_at=time.time())
        self.files.create(name, driver, size)
        try:
            self.store.add_volume(vol)
        except BaseException:
            self.files.remove(name)
            raise
        return vol

    def remove(self, name: str) -> None:
        with self._lock:
            vol = self.get(name)
            users = self.users(vol.name)
            if users:
                raise InUse(f"volume '{vol.name}' is in use by instance(s) {', '.join(i.name for i in users)};"
                            " remove them first")
            self.files.unmount(vol.name)       # fails loudly before the record goes
            self.store.delete_volume(vol.name)
            self.files.remove(vol.name)

    def cleanup(self) -> tuple[builtins.list[str], builtins.list[str]]:
        """At daemon start: drop leftovers of interrupted creates and removes, unmount volumes nobody refers
        to. Returns (removed, unknown): unknown volume dirs are kept and reported, never deleted."""
        with self._lock:
            vols = self.store.list_volumes()
            removed, unknown = self.files.cleanup({v.name for v in vols})
            for v in vols:
                if v.driver == "ext4" and not self.users(v.name):
                    self.files.unmount(v.name)
            return removed, unknown

    # -- instance hooks (called by InstanceService) ---------------------------------------------------
    def prepare(self, instance: Instance) -> Callable[[], None] | None:
        """Resolve the instance's named volumes to host paths, creating missing ones (as `docker run` does)
        and mounting ext4 ones. Returns the undo for a create that fails later."""
        names = named_volumes(instance)
        if not names:
            return None
        created: builtins.list[str] = []
        with self._lock:
            try:
                for vol_spec in instance.spec["volumes"]:
                    name = vol_spec.get("volume")
                    if not name:
                        continue
                    if instance.type == "vm":
                        vol_spec.update(self._as_disk(instance, name))
                        continue
                    self._refuse_vm_users(name)
                    try:
                        vol = self.store.get_volume(name)
                    except NotFound:
                        vol = self._create(name, "dir", None)
                        created.append(name)
                    vol_spec["source"] = self.files.data_path(vol.name)
                    if vol.driver == "ext4":
                        self.files.mount(vol.name)
            except BaseException:
                self._undo(instance, created)
                raise
        return lambda: self._undo(instance, created)

    def _as_disk(self, instance: Instance, name: str) -> dict[str, Any]:
        """A VM takes an ext4 volume as a disk: its image file, used by nothing else meanwhile (two kernels
        writing one ext4 corrupt it), so it is neither mounted on the host nor shared with other instances."""
        try:
            vol = self.store.get_volume(name)
        except NotFound:
            raise NotFound(f"volume '{name}' does not exist; a VM takes an ext4 volume as a disk: "
                           f"virtkit volume create {name} --size 1G") from None
        if vol.driver != "ext4":
            raise InvalidArgument(f"volume: '{name}' is a directory volume; a VM takes ext4 volumes only, as "
                                  "disks (virtkit volume create NAME --size 1G)")
        users = self.users(name, exclude=instance.id)
        if users:
            raise InUse(f"volume '{name}' is in use by instance(s) {', '.join(i.name for i in users)}; "
                        "a VM needs the volume to itself")
        self.files.unmount(name)
        return {"image": self.files.image_path(name), "source": None}

    def _refuse_vm_users(self, name: str) -> None:
        vms = [i.name for i in self.users(name) if i.type == "vm"]
        if vms:
            raise InUse(f"volume '{name}' is a disk of VM(s) {', '.join(vms)}; a VM has its volumes to itself")

    def _undo(self, instance: Instance, created: builtins.list[str]) -> None:
        with self._lock:
            self.release(instance)
            for name in created:
                if not self.users(name, exclude=instance.id):
                    self.store.delete_volume(name)
                    self.files.remove(name)

    def starting(self, instance: Instance) -> None:
        if instance.type == "vm":
            return                  # its volumes are its disks: QEMU opens their files
        with self._lock:
            for name in named_volumes(instance):
                vol = self.store.get_volume(name)
                if vol.driver == "ext4":
                    self.files.mount(vol.name)

    def release(self, instance: Instance) -> None:
        """The instance is gone (or its create failed): unmount its ext4 volumes no other instance uses."""
        with self._lock:
            for name in set(named_volumes(instance)):
                try:
                    vol = self.store.get_volume(name)
                except NotFound:
                    continue
                if vol.driver == "ext4" and not self.users(name, exclude=instance.id):
                    self.files.unmount(name)

    removed = release
