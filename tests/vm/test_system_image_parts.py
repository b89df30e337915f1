"""System images' boot files and VM templates, the parts that need no QEMU run: labels, the initramfs
decompression, the plan's template choice and why, and a template's checks (damaged or foreign: removed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.vm.conftest import needs_qemu
from virtkit.config import Home
from virtkit.core.errors import InvalidArgument
from virtkit.core.models import Instance
from virtkit.core.options import validate_create
from virtkit.images.debian_vm import initrd_entries
from virtkit.vm.qemu import template as tpl
from virtkit.vm.qemu.driver import QemuDriver
from virtkit.vm.qemu.imageboot import boot_files, image_boot, plain_initrd
from virtkit.vm.qemu.initramfs import Cpio

LABELS = {"org.virtkit.vm": "1", "org.virtkit.vm.kernel": "/boot/vmlinuz-6.1", "org.virtkit.vm.initrd":
          "/boot/initrd.img-6.1", "org.virtkit.vm.cmdline": "root=/dev/vda rw console=ttyS0",
          "org.virtkit.vm.agent": "org.qemu.guest_agent.0", "org.virtkit.vm.params": "virtkit.ip virtkit.mac"}


def config(labels: dict[str, str]) -> dict[str, Any]:
    return {"config": {"Labels": labels}}


def cpio(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    c = Cpio(out)
    for name, data in files.items():
        c.file(name, data)
    c.close()
    return out.getvalue()


def test_image_labels_say_what_a_system_image_boots() -> None:
    boot = image_boot(config(LABELS))
    assert boot is not None and boot.kernel == "/boot/vmlinuz-6.1" and boot.initrd == "/boot/initrd.img-6.1"
    assert boot.cmdline == ("root=/dev/vda", "rw", "console=ttyS0") and boot.agent_port == "org.qemu.guest_agent.0"
    assert image_boot(config({})) is None and image_boot({}) is None          # busybox, plain debian
    with pytest.raises(InvalidArgument, match="names no org.virtkit.vm.initrd"):
        image_boot(config({k: v for k, v in LABELS.items() if k != "org.virtkit.vm.initrd"}))
    with pytest.raises(InvalidArgument, match="not an absolute path inside the image"):
        image_boot(config({**LABELS, "org.virtkit.vm.kernel": "/boot/../../etc/shadow"}))


def test_the_initramfs_is_stored_plain_with_the_same_files(tmp_path: Path) -> None:
    early = cpio({"kernel/x86/microcode/AuthenticAMD.bin": b"ucode \x1f\x8b not gzip"})
    main = {"init": b"#!/bin/sh\n", "usr/lib/modules/6.1/virtio_mmio.ko": os.urandom(5000)}
    src = early + gzip.compress(cpio(main))
    plain = plain_initrd(src)
    assert b"\x1f\x8b\x08" not in plain[len(early):] and len(plain) > len(src)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(src)
    b.write_bytes(plain)
    assert initrd_entries(b) == initrd_entries(a)
    assert [n for n, _ in initrd_entries(b)] == ["kernel/x86/microcode/AuthenticAMD.bin", *main]


def test_boot_files_need_the_kernel_in_the_image_and_a_pvh_entry(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "boot").mkdir(parents=True)
    boot = image_boot(config(LABELS))
    assert boot is not None
    with pytest.raises(InvalidArgument, match="/boot/vmlinuz-6.1 is not in the image"):
        boot_files(str(tmp_path / "cache"), "sha256:" + "a" * 64, [layer], boot)
    (layer / "boot/vmlinuz-6.1").write_bytes(b"\x7fELF" + b"\0" * 200)      # an ELF without the PVH note
    (layer / "boot/initrd.img-6.1").write_bytes(cpio({"init": b"x"}))
    with pytest.raises(InvalidArgument, match="has no PVH entry"):
        boot_files(str(tmp_path / "cache"), "sha256:" + "a" * 64, [layer], boot)
    assert [p for p in os.listdir(tmp_path / "cache") if not p.startswith(".")] == []    # nothing half made


# -- templates ------------------------------------------------------------------------------------------------

def plan(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"memory_mib": 1024, "vcpus": 1, "accel": "tcg", "net": {"tap": "t", "mac": "m"},
                         "kernel": None, "disk": {"image_digest": "sha256:" + "b" * 64, "size": 1 << 30,
                                                  "base_size": 1 << 30}}
    p.update(over)
    return p


def vm(spec: dict[str, Any] | None = None) -> Instance:
    return Instance(id="c" * 32, name="v1", type="vm", state="created", image="deb-vm", spec=spec or {})


@pytest.fixture
def drv(tmp_path: Path) -> QemuDriver:
    h = Home(str(tmp_path / "vkhome"))
    h.ensure()
    return QemuDriver(h, None)


def test_the_plan_says_why_a_vm_boots_rather_than_starts_from_a_template(drv: QemuDriver) -> None:
    assert drv._plan_template(vm({"template": False}), plan())["template"] == {"use": False,
                                                                              "why": "--no-template given"}
    assert "--kernel" in drv._plan_template(vm(), plan(kernel="/k"))["template"]["why"]
    big = plan(disk={"image_digest": "sha256:x", "size": 2 << 30, "base_size": 1 << 30})
    assert "--disk-size" in drv._plan_template(vm(), big)["template"]["why"]


def make_template(drv: QemuDriver, doc: dict[str, Any]) -> tuple[str, str]:
    key = tpl._key(doc)
    d = Path(drv._template_dir(key))
    d.mkdir(parents=True)
    state = os.urandom(4096)
    (d / "memory.state.zst").write_bytes(state)
    (d / "disk.qcow2").write_bytes(b"QFI\xfb")
    (d / "base.raw").write_bytes(b"")
    (d / "template.json").write_text(json.dumps({
        "doc": doc, "params": ["virtkit.hostname=v0"], "mac": "02:42:00:00:00:01", "state": "memory.state.zst",
        "state_size": len(state), "state_sha256": hashlib.sha256(state).hexdigest()}))
    return key, str(d)


@needs_qemu
def test_a_template_is_used_only_whole_and_of_the_same_configuration(drv: QemuDriver) -> None:
    first = drv._plan_template(vm(), plan())["template"]
    assert first["use"] is False and "no template of this image and machine yet" in first["why"]
    doc = first["doc"]
    assert doc["qemu"].startswith("QEMU emulator version") and doc["memory_mib"] == 1024 and doc["net"] is True
    key, d = make_template(drv, doc)
    assert key == first["key"]
    t = drv._plan_template(vm(), plan())["template"]
    assert t["use"] is True and t["params"] == ["virtkit.hostname=v0"] and t["mac"] == "02:42:00:00:00:01"
    # another configuration has another key: this one is not touched
    assert drv._plan_template(vm(), plan(memory_mib=512))["template"]["use"] is False and os.path.isdir(d)
    # a flipped byte in the saved memory: the template goes
    with open(os.path.join(d, "memory.state.zst"), "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    os.utime(os.path.join(d, "memory.state.zst"), ns=(1, 1))       # a new mtime, as any write gives
    assert drv._plan_template(vm(), plan())["template"]["use"] is False and not os.path.exists(d)
    # a template made for another configuration (e.g. another QEMU) under this key: removed, not used
    key, d = make_template(drv, {**doc, "qemu": "QEMU emulator version 1.0"})
    os.rename(d, drv._template_dir(first["key"]))
    assert drv._plan_template(vm(), plan())["template"]["use"] is False
    assert os.listdir(drv.templates_root()) == []
    # a missing disk file
    key, d = make_template(drv, doc)
    os.unlink(os.path.join(d, "disk.qcow2"))
    assert drv._plan_template(vm(), plan())["template"]["use"] is False and not os.path.exists(d)


def test_no_template_is_a_vm_option_of_the_qemu_engine() -> None:
    assert validate_create({"image": "x", "type": "vm", "template": False})["template"] is False
    assert "template" not in validate_create({"image": "x", "type": "vm"})
    with pytest.raises(InvalidArgument, match="template: only for VMs"):
        validate_create({"image": "x", "template": False})


def test_guest_params_are_read_from_the_command_line() -> None:
    assert tpl._guest_params(["root=/dev/vda", "virtkit.hostname=a", "virtkit.ip=10.0.0.2/24", "quiet"]) == \
        {"hostname": "a", "ip": "10.0.0.2/24"}


def test_templates_go_with_their_image_and_leftovers_of_a_killed_saver(drv: QemuDriver) -> None:
    root = drv.templates_root()
    kept, _ = make_template(drv, {"image": "sha256:kept"})
    gone, _ = make_template(drv, {"image": "sha256:gone"})
    os.makedirs(os.path.join(root, ".tmp-999999999-x"))          # no such pid: a saver that was killed
    os.makedirs(os.path.join(root, f".tmp-{os.getpid()}-y"))      # one at work
    os.makedirs(os.path.join(root, ".gone-abc"))
    assert tpl.collect_templates(root, {"sha256:kept"}) == [gone]
    assert sorted(os.listdir(root)) == sorted([kept, f".tmp-{os.getpid()}-y"])
    assert tpl.collect_templates(os.path.join(root, "nothing"), set()) == []


def test_a_restore_replaces_what_the_template_would_have_given_the_first_start(drv: QemuDriver,
                                                                                tmp_path: Path) -> None:
    inst = vm()
    os.makedirs(drv.vm_dir(inst))
    state = Path(drv._file(inst, tpl.VM_STATE + tpl.ZST))
    state.write_bytes(b"saved guest")
    assert drv._template_args(inst)[0] == "-incoming"
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "vm-snapshot.json").write_text(json.dumps({"memory": False, "disk": False}))
    drv.restore(inst, str(snap))
    assert not state.exists() and drv._template_args(inst) == []
