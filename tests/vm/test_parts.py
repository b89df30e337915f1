"""The QEMU engine's parts without booting: accelerator choice, vmlinux extraction, the initramfs, the command line."""

from __future__ import annotations

import gzip
import io
import os
import struct

import pytest

from virtkit.core.errors import InvalidArgument
from virtkit.vm.qemu import accel, initramfs, vmlinux
from virtkit.vm.qemu.cmdline import VmConfig, build_argv


def _fake_sys(tmp_path: object, *modules: str) -> str:
    root = os.path.join(str(tmp_path), "sys")
    for m in modules:
        os.makedirs(os.path.join(root, "module", m))
    os.makedirs(os.path.join(root, "module"), exist_ok=True)
    return root


def test_pvm_host_gets_tcg_with_the_reason(tmp_path: object) -> None:
    dev = os.path.join(str(tmp_path), "kvm")
    open(dev, "w").close()
    host = accel.probe(_fake_sys(tmp_path, "kvm", "kvm_pvm"), dev)
    assert not host.kvm_usable
    chosen = accel.choose("auto", host)
    assert chosen.name == "tcg"
    assert "PVM" in chosen.reason and "kvm_pvm" in chosen.reason


def test_forcing_kvm_where_it_cannot_work_is_a_clear_error(tmp_path: object) -> None:
    host = accel.probe(_fake_sys(tmp_path, "kvm_pvm"), "/nonexistent/kvm")
    with pytest.raises(InvalidArgument, match=r"accel: kvm cannot work on this host: .*PVM"):
        accel.choose("kvm", host)
    with pytest.raises(InvalidArgument, match="accel: must be one of"):
        accel.choose("hvf", host)


def test_hardware_kvm_is_chosen_where_present(tmp_path: object) -> None:
    dev = os.path.join(str(tmp_path), "kvm")
    open(dev, "w").close()
    host = accel.probe(_fake_sys(tmp_path, "kvm", "kvm_intel"), dev)
    assert accel.choose(None, host).name == "kvm"
    assert accel.choose("tcg", host).name == "tcg"


def test_no_dev_kvm_gets_tcg(tmp_path: object) -> None:
    host = accel.probe(_fake_sys(tmp_path, "kvm_amd"), os.path.join(str(tmp_path), "missing"))
    assert accel.choose("auto", host).name == "tcg"
    assert "/dev/kvm" in host.reason


@pytest.mark.skipif(not os.path.isdir("/sys/module/kvm_pvm"), reason="this host's KVM is not PVM")
def test_this_pvm_host_is_detected() -> None:
    chosen = accel.choose("auto")
    assert chosen.name == "tcg" and "PVM" in chosen.reason
    with pytest.raises(InvalidArgument, match="PVM"):
        accel.choose("kvm")


def _elf_with_pvh_note() -> bytes:
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x1000000)
    phoff, phentsize = 64, 56
    hdr = bytearray(64)
    hdr[:4] = b"\x7fELF"
    hdr[4] = 2
    struct.pack_into("<Q", hdr, 0x20, phoff)
    struct.pack_into("<HH", hdr, 0x36, phentsize, 1)
    ph = struct.pack("<IIQQQQQQ", 4, 4, phoff + phentsize, 0, 0, len(note), len(note), 4)
    return bytes(hdr) + ph + note


def _bzimage(payload: bytes) -> bytes:
    setup = bytearray(5 * 512)                      # boot sector + 4 setup sectors
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0x40, len(payload))
    return bytes(setup) + b"\0" * 0x40 + payload


def test_vmlinux_is_extracted_from_a_bzimage() -> None:
    elf = _elf_with_pvh_note()
    payload = gzip.compress(elf) + struct.pack("<I", len(elf))
    out = vmlinux.extract_vmlinux(_bzimage(payload))
    assert out == elf and vmlinux.has_pvh_note(out)
    with pytest.raises(InvalidArgument, match="not a bzImage"):
        vmlinux.extract_vmlinux(b"hello" * 200)


def test_lz4_legacy_stream_with_literals_and_overlapping_matches() -> None:
    # one block: literals "abc", then a match of 9 bytes at offset 3 (overlapping), then literals "xyz"
    block = bytes([0x35]) + b"abc" + struct.pack("<H", 3) + bytes([0x30]) + b"xyz"
    expected = b"abc" + b"abcabcabc" + b"xyz"
    stream = struct.pack("<I", vmlinux.LZ4_LEGACY_MAGIC) + struct.pack("<I", len(block)) + block
    assert vmlinux.lz4_legacy(stream + struct.pack("<I", len(expected)), len(expected)) == expected


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    entries: dict[str, tuple[int, bytes]] = {}
    f = io.BytesIO(data)
    while True:
        hdr = f.read(110)
        assert hdr[:6] == b"070701"
        fields = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = f.read(namesize)[:-1].decode()
        f.read(-(110 + namesize) % 4)
        body = f.read(size)
        f.read(-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body)


def test_cpio_writer_makes_a_newc_archive() -> None:
    buf = io.BytesIO()
    c = initramfs.Cpio(buf)
    c.dir("bin")
    c.file("bin/hello", b"12345", 0o755)
    c.symlink("bin/sh", "busybox")
    c.chardev("dev/console", 5, 1)
    c.close()
    assert len(buf.getvalue()) % 4 == 0
    entries = _read_newc(buf.getvalue())
    assert entries["bin/hello"] == (0o100755, b"12345")
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["bin"][0] == 0o040755


def test_command_goes_on_the_kernel_command_line_without_spaces() -> None:
    import base64
    import shlex

    param = initramfs.command_param(["sh", "-c", "echo 'a b'; exit 3"])
    assert " " not in param
    decoded = base64.b64decode(param.split("=", 1)[1]).decode()
    assert shlex.split(decoded) == ["sh", "-c", "echo 'a b'; exit 3"]


def test_command_line_is_microvm_with_pvh_kernel_and_qmp() -> None:
    cfg = VmConfig(name="virtkit-x", vcpus=2, memory_mib=256, accel=accel.Accel("tcg", "test"),
                   vmlinux="/k/vmlinux", initramfs="/k/initrd", console_log="/v/console.log",
                   qmp_socket="/r/qmp.sock", kernel_params=("virtkit.cmd=eA==",))
    argv = build_argv(cfg, binary="/usr/bin/qemu-system-x86_64")
    joined = " ".join(argv)
    for part in ("-M microvm", "-accel tcg", "-smp 2", "-m 256M", "-nodefaults", "-no-user-config",
                 "-kernel /k/vmlinux", "-initrd /k/initrd", "-qmp unix:/r/qmp.sock,server=on,wait=off",
                 "path=/v/console.log"):
        assert part in joined
    append = argv[argv.index("-append") + 1]
    assert "cryptomgr.notests" in append and "virtkit.cmd=eA==" in append
    if accel.host_tsc_khz():
        assert "tsc_early_khz=" in append


def test_vhost_net_only_with_kvm_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.vm.qemu import cmdline

    net = {"tap": "vkt0", "mac": "02:00:00:00:00:01"}
    assert "vhost=on" not in " ".join(cmdline.net_args(net))
    assert ",vhost=on" in cmdline.net_args(net, vhost=True)[1]
    cfg = dict(name="virtkit-x", vcpus=1, memory_mib=256, vmlinux="/k/vmlinux", initramfs="/k/initrd",
               console_log="/v/console.log", qmp_socket="/r/qmp.sock", net=net)
    for name, device_there, expected in (("kvm", True, True), ("kvm", False, False), ("tcg", True, False)):
        monkeypatch.setattr(cmdline.os.path, "exists", lambda p, there=device_there: there and p == cmdline.VHOST_NET)
        argv = build_argv(VmConfig(accel=accel.Accel(name, "test"), **cfg), binary="/usr/bin/qemu-system-x86_64")
        assert ("vhost=on" in " ".join(argv)) is expected, (name, device_there)
