"""A VM's cloud-init NoCloud seed: meta-data and user-data on an ISO9660 image labelled cidata, made with pycdlib.

Only VMs of system images that say they run cloud-init (label org.virtkit.vm.cloudinit=nocloud) and were given
guest configuration (--user-data, --ssh-key) get one: $VIRTKIT_HOME/vms/<id>/seed.iso, attached read-only as a
virtio-blk disk (microvm has no IDE or AHCI; cloud-init finds the cidata label on any block device). It stays
attached on every start, as on any NoCloud cloud: cloud-init's per-instance work runs once per instance-id.

meta-data: instance-id (the instance's id) and local-hostname. user-data: the user's file as it is, when no
keys are given; keys alone: a #cloud-config giving them to root; both: a MIME multipart of virtkit's
#cloud-config first and the user's part after it (cloud-init tells its type by its first line), so on a
conflict the user's settings win. No network-config: the network is virtkit's, from the kernel command line
(the image's cloud-init has network config disabled).
"""

from __future__ import annotations

import io
import json
import os
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from virtkit.core.errors import InvalidArgument
from virtkit.vm.qemu.imageboot import _write_atomic

LABEL = "cidata"
SEED_FILE = "seed.iso"
SEED_NODE = "vkseed"
SEED_SERIAL = "virtkit-seed"


def meta_data(instance_id: str, hostname: str) -> bytes:
    # JSON is YAML: no YAML library needed, and no quoting to get wrong
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=1).encode() + b"\n"


def user_data(ssh_keys: list[str], user: str | None) -> bytes:
    """The user-data cloud-init reads: see the module docstring."""
    if user is not None and not ssh_keys:
        return user.encode()
    ours = "#cloud-config\n" + json.dumps({"disable_root": False, "ssh_authorized_keys": ssh_keys}, indent=1) + "\n"
    if user is None:
        return ours.encode()
    if user.lstrip().lower().startswith(("content-type:", "mime-version:")):
        raise InvalidArgument("user_data: a MIME multipart user-data cannot be combined with ssh_keys: "
                              "put the keys in it (ssh_authorized_keys)")
    msg = MIMEMultipart()
    msg.attach(MIMEText(ours, "cloud-config", "utf-8"))
    msg.attach(MIMEText(user, "plain", "utf-8"))          # cloud-init types text/plain by its first line
    return msg.as_bytes()


def seed_files(instance_id: str, hostname: str, ssh_keys: list[str], user: str | None) -> dict[str, bytes]:
    """The seed's files by name (meta-data, user-data)."""
    return {"meta-data": meta_data(instance_id, hostname), "user-data": user_data(ssh_keys, user)}


def write_seed(path: str, files: dict[str, bytes]) -> None:
    """The ISO9660 image (Joliet and Rock Ridge names, as cloud-localds makes it) at `path`, read-only."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, sys_ident="LINUX", joliet=3, rock_ridge="1.09")
    for name, data in sorted(files.items()):
        short = name.replace("-", "").upper()[:8]       # the plain ISO9660 name: 8.3, d-characters
        iso.add_fp(io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    _write_atomic(path, out.getvalue(), os.path.dirname(path))


def seed_args(path: str) -> list[str]:
    """The seed as a read-only raw virtio-blk disk (after the root disk: the root stays /dev/vda)."""
    blockdev = {"driver": "raw", "node-name": SEED_NODE, "read-only": True,
                "file": {"driver": "file", "filename": path, "read-only": True}}
    return ["-blockdev", json.dumps(blockdev), "-device", f"virtio-blk-device,drive={SEED_NODE},serial={SEED_SERIAL}"]
