"""Guest configuration of system-image VMs, the parts that need no QEMU run: the NoCloud seed ISO (read back
with pycdlib), what user-data cloud-init gets, the --user-data/--ssh-key checks, and where they are refused."""

from __future__ import annotations

import email
import io
import json
import os
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from virtkit.config import Home
from virtkit.core.errors import InvalidArgument
from virtkit.core.models import Instance
from virtkit.core.options import MAX_GUEST_FILE, validate_create
from virtkit.vm.qemu import seed
from virtkit.vm.qemu.driver import QemuDriver
from virtkit.vm.qemu.imageboot import image_boot

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0fOdJKZPu6PhqAhKRUsB7u2VDdVGqYdWlCyHY1kvYq me@host"
CLOUD_CONFIG = "#cloud-config\nwrite_files:\n - path: /root/hello\n   content: hi\n"


def read_iso(path: str) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """(volume label, files by Rock Ridge name, files by Joliet name)."""
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        rr: dict[str, bytes] = {}
        joliet: dict[str, bytes] = {}
        for facade, names, joliet_names in ((iso.get_rock_ridge_facade(), rr, False),
                                            (iso.get_joliet_facade(), joliet, True)):
            for child in facade.list_children("/"):
                if child.is_dot() or child.is_dotdot():
                    continue
                name = child.file_identifier().decode("utf-16_be") if joliet_names else \
                    child.rock_ridge.name().decode()
                out = io.BytesIO()
                facade.get_file_from_iso_fp(out, f"/{name}")
                names[name] = out.getvalue()
        return label, rr, joliet
    finally:
        iso.close()


def test_the_seed_is_an_iso_labelled_cidata_with_meta_data_and_user_data(tmp_path: Path) -> None:
    path = str(tmp_path / "seed.iso")
    seed.write_seed(path, seed.seed_files("c" * 32, "vm1", [KEY], CLOUD_CONFIG))
    label, rr, joliet = read_iso(path)
    assert label == "cidata"
    assert sorted(rr) == sorted(joliet) == ["meta-data", "user-data"] and rr == joliet
    assert json.loads(rr["meta-data"]) == {"instance-id": "c" * 32, "local-hostname": "vm1"}
    assert os.stat(path).st_mode & 0o777 == 0o444 and os.listdir(tmp_path) == ["seed.iso"]


def parts(user_data: bytes) -> list[tuple[str, str]]:
    msg = email.message_from_bytes(user_data)
    return [(p.get_content_type(), p.get_payload(decode=True).decode()) for p in msg.walk()
            if not p.is_multipart()]


def test_user_data_is_the_users_as_is_or_with_the_keys_for_root_before_it() -> None:
    script = "#!/bin/sh\necho hi > /root/x\n"
    assert seed.user_data([], script) == script.encode()            # no keys: passed as is
    ours = seed.user_data([KEY], None).decode()
    assert ours.startswith("#cloud-config\n")
    assert json.loads(ours.partition("\n")[2]) == {"disable_root": False, "ssh_authorized_keys": [KEY]}
    both = parts(seed.user_data([KEY], script))
    assert [t for t, _ in both] == ["text/cloud-config", "text/plain"]
    assert both[0][1] == ours and both[1][1] == script            # the user's part last: it wins a conflict
    with pytest.raises(InvalidArgument, match="MIME multipart user-data cannot be combined with ssh_keys"):
        seed.user_data([KEY], "Content-Type: multipart/mixed; boundary=x\n\n--x--\n")


def test_the_seed_disk_is_read_only_virtio_blk() -> None:
    args = seed.seed_args("/v/seed.iso")
    blockdev = json.loads(args[1])
    assert blockdev["read-only"] is True and blockdev["file"] == {"driver": "file", "filename": "/v/seed.iso",
                                                                    "read-only": True}
    assert args[2:] == ["-device", "virtio-blk-device,drive=vkseed,serial=virtkit-seed"]


# -- options ------------------------------------------------------------------------------------------------

def vm_req(**over: Any) -> dict[str, Any]:
    return {"image": "deb-vm", "type": "vm", **over}


def test_user_data_and_keys_are_read_into_the_spec(tmp_path: Path) -> None:
    ud, key = tmp_path / "ud", tmp_path / "k.pub"
    ud.write_text(CLOUD_CONFIG)
    key.write_text(f"# mine\n{KEY}\n\n")
    spec = validate_create(vm_req(user_data=str(ud), ssh_keys=[str(key), str(key)]))
    assert spec["cloud_init"] == {"user_data": CLOUD_CONFIG, "ssh_keys": [KEY, KEY]}
    assert validate_create(vm_req(ssh_keys=[str(key)]))["cloud_init"] == {"user_data": None, "ssh_keys": [KEY]}
    assert "cloud_init" not in validate_create(vm_req())


def test_bad_guest_configuration_files_are_clear_errors(tmp_path: Path) -> None:
    big, private, nokey, binary = (tmp_path / n for n in ("big", "id_ed25519", "notes", "ud.gz"))
    big.write_bytes(b"#" * (MAX_GUEST_FILE + 1))
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n")
    nokey.write_text("hello\n")
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    cases = [
        (vm_req(user_data=str(tmp_path / "missing")), r"user_data: .*/missing: no such file"),
        (vm_req(user_data="rel/ud"), "user_data: must be an absolute path"),
        (vm_req(user_data=str(tmp_path)), "is not a regular file"),
        (vm_req(user_data=str(big)), "user_data: .*/big is larger than 1 MiB"),
        (vm_req(user_data=str(binary)), "is not UTF-8 text"),
        (vm_req(ssh_keys=[str(private)]), "is a private key: give its public key"),
        (vm_req(ssh_keys=[str(nokey)]), "is not an OpenSSH public key file"),
        (vm_req(ssh_keys=str(nokey)), "ssh_keys: must be a list of files"),
        (vm_req(ssh_keys=[str(nokey)], engine="native"), "ssh_keys: only for the qemu engine"),
        ({"image": "debian", "user_data": str(big)}, "user_data: only for VMs"),
        ({"image": "debian", "ssh_keys": [str(nokey)]}, "ssh_keys: only for VMs"),
    ]
    for req, msg in cases:
        with pytest.raises(InvalidArgument, match=msg):
            validate_create(req)
    if os.geteuid() == 0:
        return                                 # root reads a mode-0 file
    unreadable = tmp_path / "unreadable"
    unreadable.write_text(CLOUD_CONFIG)
    unreadable.chmod(0)
    with pytest.raises(InvalidArgument, match="cannot be read: Permission denied"):
        validate_create(vm_req(user_data=str(unreadable)))


LABELS = {"org.virtkit.vm": "1", "org.virtkit.vm.kernel": "/boot/vmlinuz-6.1",
          "org.virtkit.vm.initrd": "/boot/initrd.img-6.1"}


def test_guest_configuration_is_for_system_images_that_run_cloud_init(tmp_path: Path) -> None:
    h = Home(str(tmp_path / "vkhome"))
    h.ensure()
    drv = QemuDriver(h, None)
    cfg = {"cloud_init": {"user_data": CLOUD_CONFIG, "ssh_keys": []}}
    busybox = Instance(id="d" * 32, name="b1", type="vm", state="created", image="busybox", spec=cfg)
    with pytest.raises(InvalidArgument, match="user_data: image 'busybox' takes no cloud-init: a minimal VM is "
                                              "configured by its kernel command line"):
        drv._check_guest_config(busybox, None)
    old = image_boot({"config": {"Labels": LABELS}})
    new = image_boot({"config": {"Labels": {**LABELS, "org.virtkit.vm.cloudinit": "nocloud"}}})
    assert old is not None and not old.cloud_init and new is not None and new.cloud_init
    inst = Instance(id="d" * 32, name="v1", type="vm", state="created", image="deb-vm",
                    spec={"cloud_init": {"user_data": None, "ssh_keys": [KEY]}})
    with pytest.raises(InvalidArgument, match="ssh_keys: image 'deb-vm' has no cloud-init to read it"):
        drv._check_guest_config(inst, old)
    drv._check_guest_config(inst, new)
    # a VM given guest configuration boots: a template's clone would resume after cloud-init ran
    plan = {"memory_mib": 1024, "vcpus": 1, "accel": "tcg", "kernel": None,
            "disk": {"image_digest": "sha256:" + "b" * 64, "size": 1 << 30, "base_size": 1 << 30}}
    assert drv._plan_template(inst, plan)["template"] == {
        "use": False, "why": "guest configuration given (--user-data, --ssh-key): cloud-init applies it at the "
                             "first boot"}
