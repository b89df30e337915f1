"""Snapshots of an instance's own changes (create, list, restore, remove) and publishing them as an image.

A running container is frozen for the copy (the driver does it; we mark the freeze as ours so it is not
recorded as a pause). Restore needs a stopped instance: it swaps the writable layer, which a running
container is using; the user stops and starts explicitly, as with `incus restore` of a stopped instance.
Snapshots go with their instance.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import AlreadyExists, InvalidState, NotFound
from virtkit.core.models import Instance, InstanceState, validate_name

if TYPE_CHECKING:
    from virtkit.core.service import InstanceService
    from virtkit.store.base import Store

_RESTORABLE = (InstanceState.CREATED, InstanceState.STOPPED)


@dataclass
class Snapshot:
    instance_id: str
    name: str
    size: int                    # bytes on disk (du-style)
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SnapshotService:
    def __init__(self, store: Store, instances: InstanceService, files: Any, images: Any) -> None:
        self.store = store
        self.instances = instances
        self.files = files            # storage.snapshots.SnapshotFiles
        self.images = images          # images.store.ImageStore
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}     # instance id -> held while its layer is copied

    def _instance_lock(self, instance_id: str) -> threading.Lock:
        with self._lock:
            return self._busy.setdefault(instance_id, threading.Lock())

    @staticmethod
    def describe(inst: Instance, snap: Snapshot) -> dict[str, Any]:
        return {"instance": inst.name, "instance_id": inst.id, "name": snap.name, "size": snap.size,
                "created_at": snap.created_at}

    # -- snapshots ------------------------------------------------------------------------------------
    def create(self, instance: str, name: str) -> dict[str, Any]:
        validate_name(name, "snapshot")
        inst = self.instances.get(instance)
        drv = self.instances.driver(inst)
        with self._instance_lock(inst.id):
            try:
                self.store.get_snapshot(inst.id, name)
                raise AlreadyExists(f"instance '{inst.name}' already has a snapshot named '{name}'")
            except NotFound:
                pass
            temp = self.files.temp_path(inst.id, name)
            try:
                with self.instances.quiescing(inst.id):
                    size = drv.snapshot(inst, temp)
                snap = Snapshot(instance_id=inst.id, name=name, size=size, created_at=time.time())
                self.files.commit(temp, inst.id, name)
                try:
                    self.store.add_snapshot(snap)
                except BaseException:
                    self.files.remove(inst.id, name)
                    raise
            except BaseException:
                self.files.discard(temp)
                raise
        return self.describe(inst, snap)

    def list(self, instance: str) -> list[dict[str, Any]]:
        inst = self.instances.get(instance)
        return [self.describe(inst, s) for s in self.store.list_snapshots(inst.id)]

    def get(self, instance: str, name: str) -> dict[str, Any]:
        inst = self.instances.get(instance)
        return self.describe(inst, self._get(inst, name))

    def _get(self, inst: Instance, name: str) -> Snapshot:
        try:
            return self.store.get_snapshot(inst.id, name)
        except NotFound:
            raise NotFound(f"instance '{inst.name}' has no snapshot named '{name}'") from None

    def restore(self, instance: str, name: str) -> dict[str, Any]:
        inst = self.instances.get(instance)
        snap = self._get(inst, name)
        if InstanceState(inst.state) not in _RESTORABLE:
            raise InvalidState(f"cannot restore instance '{inst.name}': it is {inst.state} (stop it first)")
        with self._instance_lock(inst.id):
            self.instances.driver(inst).restore(inst, self.files.path(inst.id, snap.name))
        return self.describe(inst, snap)

    def remove(self, instance: str, name: str) -> None:
        inst = self.instances.get(instance)
        snap = self._get(inst, name)
        with self._instance_lock(inst.id):
            self.store.delete_snapshot(inst.id, snap.name)
            self.files.remove(inst.id, snap.name)

    def annotate(self, instance: Instance) -> None:
        """Hook, before the instance is stored: record which image (by digest) it is made from. Its name may
        later go to another image; publish must build on the layers the instance really runs on."""
        instance.spec["image_digest"] = self.images.get(instance.image).digest

    def removed(self, instance: Instance) -> None:
        """Hook: the instance is gone; so are its snapshots (their rows went with it: the store's contract)."""
        self.files.remove_all(instance.id)
        with self._lock:
            self._busy.pop(instance.id, None)

    def cleanup(self) -> builtins.list[str]:
        known = {(s.instance_id, s.name) for s in self.store.list_snapshots()}
        return self.files.cleanup(known, {i.id for i in self.store.list_instances()})

    # -- publish --------------------------------------------------------------------------------------
    def publish(self, instance: str, image: str) -> Any:
        """The instance's changes as one new layer on top of its image's layers, stored as image `image`.

        The base layers' blobs are the image's own (same digests, shared on disk, never re-compressed);
        only the changes are new.
        """
        inst = self.instances.get(instance)
        if self.images.exists(image):      # also validates the name
            raise AlreadyExists(f"image '{image}' already exists; remove it first or choose another name")
        base_digest = inst.spec.get("image_digest") or self.images.get(inst.image).digest
        try:
            manifest = json.loads(self.images.read_blob(base_digest))
        except NotFound:
            raise NotFound(f"cannot publish '{inst.name}': its image {inst.image} ({base_digest}) is no longer "
                           "in the image store") from None
        base_config = json.loads(self.images.read_blob(manifest["config"]["digest"]))
        work = self.files.temp_path(inst.id, "publish")
        os.makedirs(work, mode=0o700)
        try:
            changes = os.path.join(work, "changes.tar")
            with self._instance_lock(inst.id), self.instances.quiescing(inst.id):
                self.instances.driver(inst).export_changes(inst, changes)
            for layer in manifest.get("layers", []):
                self.images.verify_blob_file(layer["digest"])     # a corrupt base is not passed on
            return self.images.add_image(image, [changes], self._config(base_config, inst), base=base_digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _config(base: dict[str, Any], inst: Instance) -> dict[str, Any]:
        cfg = json.loads(json.dumps(base))
        cfg.pop("rootfs", None)
        cfg.pop("created", None)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if cfg.get("history"):
            cfg["history"] = list(cfg["history"]) + [{"created": now,
                                                      "created_by": f"virtkit publish {inst.name}"}]
        cfg["created"] = now
        return cfg
