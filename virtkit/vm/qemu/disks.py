"""A QEMU VM's disks: its root disk (a qcow2 overlay on its image's base disk) and its volume disks.

Files under $VIRTKIT_HOME/vms/<id>/: base.raw (a hard link to the image's base disk in $VIRTKIT_HOME/vmdisks/,
see storage/vm_disks.py) and disk.qcow2 (the VM's overlay, backing file "base.raw" named relative to it, so
the pair can be copied or moved together). Writes go to the overlay only; the base is never opened for
writing. Both go with the VM's directory on rm.

Instance spec keys read: disk_size (bytes: the overlay's virtual size and the root filesystem's size, at least
the image's base disk; default that size) and volumes (named ext4 volumes, each attached as a raw virtio-blk
disk; the volume service fills in "image", the volume's ext4 file, for VMs instead of mounting it on the host).
A VM created without an image store (tests of the engine alone) has no disk: its command runs in the initramfs.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import InvalidArgument
from virtkit.core.models import Instance
from virtkit.storage import vm_disks
from virtkit.vm.qemu import guestroot

if TYPE_CHECKING:
    from virtkit.vm.process import VmProcessDriver as _Base
else:
    _Base = object

DISK_FILE = "disk.qcow2"
BASE_LINK = "base.raw"
ROOT_NODE = "vkroot"
MAX_VOLUMES = 8
MAX_VOLUMES_PARAM = 400          # bytes of the kernel command line the volume list may take (2048 in all)


def _size_str(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


class VmDisks(_Base):
    def base_disks(self) -> vm_disks.BaseDisks:
        return vm_disks.BaseDisks(self.home.vm_disks)

    def disk_path(self, instance: Instance) -> str:
        return self._file(instance, DISK_FILE)

    # -- create ---------------------------------------------------------------------------------------
    def _plan_disks(self, instance: Instance, plan: dict[str, Any]) -> dict[str, Any]:
        """The disks of the plan: checks the user's input, and makes (or finds) the image's base disk, a
        cache shared by every VM of that image, before anything of this VM is made."""
        spec = instance.spec or {}
        volumes = self._plan_volumes(spec.get("volumes") or [])
        if self.images is None or not instance.image:
            if spec.get("disk_size") is not None or volumes:
                field = "volumes" if volumes else "disk_size"
                raise InvalidArgument(f"{field}: this VM has no image, so no disk to size or attach volumes beside")
            return {}
        info = self.images.get(instance.image)
        disks = self.base_disks()
        base = disks.cached(info.digest)
        if base is None:
            layers = [str(p) for p in self.images.layer_paths(instance.image)]
            base = disks.get(info.digest, layers)
        size = spec.get("disk_size")
        if size is None:
            size = base.size
        elif size < base.size:
            raise InvalidArgument(f"disk_size: {_size_str(size)} is too small: the disk of image "
                                  f"'{instance.image}' needs at least {_size_str(base.size)}")
        serials = [(guestroot.VOLUME_SERIAL % i, v["target"], v["readonly"]) for i, v in enumerate(volumes)]
        params = guestroot.kernel_params(serials)
        if sum(len(p) for p in params[1:]) > MAX_VOLUMES_PARAM:
            raise InvalidArgument("volumes: their guest paths are too long for the kernel command line "
                                  f"(at most {MAX_VOLUMES_PARAM} bytes encoded)")
        return {"params": [*plan["params"], *params],
                "disk": {"image_digest": info.digest, "base": base.path, "base_size": base.size, "size": size},
                "volumes": volumes}

    @staticmethod
    def _plan_volumes(volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(volumes) > MAX_VOLUMES:
            raise InvalidArgument(f"volumes: a VM takes at most {MAX_VOLUMES} volumes (got {len(volumes)})")
        out: list[dict[str, Any]] = []
        for v in volumes:
            if not v.get("volume") or not v.get("image"):
                raise InvalidArgument(f"volume: {v.get('source') or v.get('volume')!r}: a VM takes named ext4 "
                                      "volumes only (virtkit volume create NAME --size 1G), as disks")
            if any(o["volume"] == v["volume"] for o in out):
                raise InvalidArgument(f"volume: '{v['volume']}' is given twice (a disk is attached once)")
            out.append({"volume": v["volume"], "image": v["image"], "target": v["target"],
                        "readonly": bool(v.get("readonly"))})
        return out

    def _install_disks(self, plan: dict[str, Any], vdir: str) -> None:
        """The VM's overlay on its own link to the base disk; its filesystem grown to the size asked for."""
        disk = plan.get("disk")
        if not disk:
            return
        from virtkit.vm.process import link_or_copy

        link_or_copy(disk["base"], os.path.join(vdir, BASE_LINK))
        if (plan.get("template") or {}).get("use") and self._install_from_template(plan, vdir):
            return
        overlay = os.path.join(vdir, DISK_FILE)
        vm_disks.create_overlay(overlay, BASE_LINK, disk["size"])
        if disk["size"] > disk["base_size"]:
            vm_disks.grow_filesystem(overlay, disk["size"])

    def _install_from_template(self, plan: dict[str, Any], vdir: str) -> bool:
        """The overlay on a VM template's disk instead (vm/qemu/template.py); False: not made."""
        return False

    # -- start ----------------------------------------------------------------------------------------
    def _disk_args(self, instance: Instance) -> list[str]:
        """QEMU's -blockdev/-device pairs: virtio-blk over virtio-mmio (microvm), found in the guest by serial."""
        plan = self.info(instance)
        if not plan.get("disk"):
            return []
        root = {"driver": "qcow2", "node-name": ROOT_NODE, "discard": "unmap",
                "file": {"driver": "file", "filename": self.disk_path(instance)}}
        args = ["-blockdev", json.dumps(root),
                "-device", f"virtio-blk-device,drive={ROOT_NODE},serial={guestroot.ROOT_SERIAL}"]
        for i, vol in enumerate(plan.get("volumes") or []):
            node = f"vkvol{i}"
            blockdev = {"driver": "raw", "node-name": node, "read-only": vol["readonly"],
                        "file": {"driver": "file", "filename": vol["image"]}}
            args += ["-blockdev", json.dumps(blockdev),
                     "-device", f"virtio-blk-device,drive={node},serial={guestroot.VOLUME_SERIAL % i}"]
        return args
