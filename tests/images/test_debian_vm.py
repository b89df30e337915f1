"""`image build debian --vm`: the VM layer over the plain build's base layer.

Fast tests drive the builder with a fake mmdebstrap and a fake package stage (layer sharing, caching,
reproducibility, labels), and check the initramfs reader, the upper-dir layer writer and the guest network
script on their own. One slow test module fixture builds the real thing once (plain, then --vm over its cached
base) and the slow tests read that image.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from images_helpers import as_root

from virtkit.core.errors import InvalidArgument, SystemFailure
from virtkit.images import _guest_files, debian, debian_vm
from virtkit.images.store import ImageStore

KREL = "6.1.0-99-cloud-amd64"
REQUIRED = {"virtio_blk", "virtio_net", "virtio_mmio", "virtio_pci", "virtio_console", "ext4"}


def cpio(entries: list[tuple[str, bytes]]) -> bytes:
    """A newc archive of regular files."""
    out = io.BytesIO()
    for i, (name, data) in enumerate([*entries, ("TRAILER!!!", b"")]):
        namez = name.encode() + b"\0"
        fields = [i + 1, 0 if name == "TRAILER!!!" else 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                  len(namez), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        out.write(hdr + namez + b"\0" * (-(len(hdr) + len(namez)) % 4) + data + b"\0" * (-len(data) % 4))
    return out.getvalue()


def fake_initrd(release: str = KREL, modules: tuple[str, ...] = ("virtio_blk", "virtio_net", "virtio_mmio",
                                                                   "virtio_pci", "virtio_console")) -> bytes:
    """What mkinitramfs writes: an early uncompressed cpio, then the gzip-compressed main one."""
    early = cpio([("kernel/x86/microcode/AuthenticAMD.bin", b"ucode")])
    mdir = f"usr/lib/modules/{release}"
    main = cpio([(f"{mdir}/kernel/drivers/virtio/{m}.ko", b"\x7fELF") for m in modules]
                + [(f"{mdir}/kernel/drivers/char/hw_random/virtio-rng.ko.xz", b"xz"),
                   (f"{mdir}/modules.builtin", b"kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"),
                   ("init", b"#!/bin/sh\n")])
    return early + b"\0" * 512 + gzip.compress(main, mtime=0)


# -- the initramfs reader ------------------------------------------------------------------------------------

def test_initrd_reader_sees_both_archives_and_builtin_modules(tmp_path: Path) -> None:
    path = tmp_path / "initrd.img"
    path.write_bytes(fake_initrd())
    names = [n for n, _ in debian_vm.initrd_entries(path)]
    assert names[0] == "kernel/x86/microcode/AuthenticAMD.bin" and "init" in names
    mods = debian_vm.initrd_modules(path)
    assert REQUIRED | {"virtio_rng", "crc32c_generic"} <= mods
    path.write_bytes(b"\x89PNG not an initramfs")
    with pytest.raises(SystemFailure, match="not an initramfs"):
        debian_vm.initrd_entries(path)


# -- the build flow, with fakes for mmdebstrap and the package stage -----------------------------------------

def fake_rootfs(root: Path) -> None:
    for d in ("etc", "dev", "var/log/apt", "var/lib/dpkg", "usr/bin", "usr/sbin", "usr/share/doc/bash", "tmp",
              "run", "boot", "proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "var/lib/dpkg/status").write_text("Package: bash\n")
    (root / "usr/bin/bash").write_bytes(b"ELF bash")
    (root / "var/log/dpkg.log").write_text("installed\n")
    doc = root / "usr/share/doc/bash/changelog.Debian.gz"
    doc.write_bytes(b"log")
    os.utime(doc, (1_700_000_000, 1_700_000_000))


def fake_stage(argv: list[str], say: Any) -> None:
    """Stands in for the chroot apt-get stage: writes into the upper dir what the packages would."""
    i = argv.index("virtkit-vm-stage")
    lowers, upper, files = [Path(p) for p in argv[i + 1].split(":")], Path(argv[i + 2]), Path(argv[i + 5])
    say("fake stage over " + ",".join(p.name for p in lowers))
    shutil.copytree(files, upper, dirs_exist_ok=True, symlinks=True)
    boot = upper / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{KREL}").write_bytes(b"MZ bzImage")
    (boot / f"initrd.img-{KREL}").write_bytes(fake_initrd())
    (boot / "vmlinuz").symlink_to(f"vmlinuz-{KREL}")
    (boot / "initrd.img").symlink_to(f"initrd.img-{KREL}")
    (upper / "usr/sbin").mkdir(parents=True, exist_ok=True)
    (upper / "usr/sbin/qemu-ga").write_bytes(b"ELF qemu-ga")
    (upper / "usr/bin").mkdir(parents=True, exist_ok=True)
    (upper / "usr/bin/bash").write_bytes(b"ELF bash")                  # copied up, unchanged: left out
    (upper / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nmessagebus:!:20999::::::\n")
    (upper / "var/log/apt").mkdir(parents=True)
    (upper / "var/log/apt/history.log").write_text("install\n")        # normalised away
    doc = upper / "usr/share/doc/linux-image"
    doc.mkdir(parents=True)
    (doc / "changelog.gz").write_bytes(b"kernel log")
    os.utime(doc / "changelog.gz", (1_750_000_000, 1_750_000_000))


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_mmdebstrap(rootfs: Path, release: str, pkgs: list[str], arch: str, say: Any) -> None:
        calls.append(release)
        fake_rootfs(rootfs)

    monkeypatch.setattr(debian, "_mmdebstrap", fake_mmdebstrap)
    monkeypatch.setattr(debian, "_mmdebstrap_version", lambda: "1.3.5")
    monkeypatch.setattr(debian_vm, "_run_streamed", fake_stage)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return calls


def layer_members(store: ImageStore, name: str, index: int) -> dict[str, tarfile.TarInfo]:
    desc = store.manifest(name)["layers"][index]
    with tarfile.open(store.blobs / desc["digest"].removeprefix("sha256:")) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_vm_build_shares_the_base_layer_in_either_order_and_is_reproducible(tmp_path: Path, fakes: list[str]) -> None:
    store = ImageStore(tmp_path / "images")
    lines: list[str] = []
    plain = debian.build_debian(store, "deb")
    vm = debian.build_debian(store, "deb-vm", vm=True, progress=lines.append)
    assert fakes == ["bookworm"]                                # the --vm build reused the plain build's base
    assert any("using the cached base layers" in ln for ln in lines)
    assert vm.layers[:1] == plain.layers and len(vm.layers) == 2
    assert store.manifest("deb-vm")["layers"][0] == store.manifest("deb")["layers"][0]   # one shared blob
    fresh = debian.build_debian(store, "deb-vm-fresh", vm=True, no_cache=True)  # the base built anew
    assert fakes == ["bookworm"] * 2 and fresh.digest == vm.digest
    lines.clear()
    again = debian.build_debian(store, "deb-vm-again", vm=True, progress=lines.append)
    assert again.digest == vm.digest and fakes == ["bookworm"] * 2 and "cached build" in lines[-1]
    assert "--vm" in lines[-1]

    members = layer_members(store, "deb-vm", 1)
    assert members["boot/vmlinuz"].issym() and members["boot/vmlinuz"].linkname == f"vmlinuz-{KREL}"
    assert members[f"boot/initrd.img-{KREL}"].isreg() and members["usr/sbin/qemu-ga"].isreg()
    assert members["usr/lib/virtkit/guest-net"].mode == 0o755
    assert "usr/bin/bash" not in members and "var/log/apt/history.log" not in members
    # the layer's epoch: the newest packaged doc file of either layer
    assert max(m.mtime for m in members.values()) == 1_750_000_000
    labels = vm.config["config"]["Labels"]
    assert labels["org.virtkit.vm"] == "1" and labels["org.virtkit.vm.kernel"] == f"/boot/vmlinuz-{KREL}"
    assert labels["org.virtkit.vm.initrd"] == f"/boot/initrd.img-{KREL}" and labels["org.virtkit.vm.root"] == "/dev/vda"
    assert vm.config["config"]["Cmd"] == ["bash"] and len(vm.config["history"]) == 2
    assert "Labels" not in plain.config["config"]


def test_vm_build_first_then_plain_still_shares_the_base(tmp_path: Path, fakes: list[str]) -> None:
    store = ImageStore(tmp_path / "images")
    vm = debian.build_debian(store, "deb-vm", vm=True)
    plain = debian.build_debian(store, "deb")
    assert fakes == ["bookworm"] * 2 and vm.layers[0] == plain.layers[0]


def test_a_kernel_without_the_virtio_modules_in_its_initramfs_fails_the_build(tmp_path: Path, fakes: list[str],
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def stage_without_virtio_blk(argv: list[str], say: Any) -> None:
        fake_stage(argv, say)
        upper = Path(argv[argv.index("virtkit-vm-stage") + 2])
        (upper / f"boot/initrd.img-{KREL}").write_bytes(fake_initrd(modules=("virtio_net", "virtio_mmio")))

    monkeypatch.setattr(debian_vm, "_run_streamed", stage_without_virtio_blk)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(SystemFailure, match="initramfs lacks the modules virtio_blk, virtio_console, virtio_pci"):
        debian.build_debian(store, "deb-vm", vm=True)
    assert store.list() == [] and list(store.tmp.iterdir()) == []


def test_vm_with_bad_input_is_a_clear_error_before_anything_runs(tmp_path: Path, fakes: list[str]) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(InvalidArgument, match="release: 'hamm' is not a Debian release"):
        debian.build_debian(store, "deb-vm", release="hamm", vm=True)
    with pytest.raises(InvalidArgument, match="packages: 'Bad Pkg'"):
        debian.build_debian(store, "deb-vm", packages=["Bad Pkg"], vm=True)
    assert fakes == [] and store.list() == [] and not (store.cache / "debian").exists()


def test_the_cache_key_of_plain_builds_is_unchanged_by_vm(tmp_path: Path, fakes: list[str]) -> None:
    store = ImageStore(tmp_path / "images")
    debian.build_debian(store, "deb")
    debian.build_debian(store, "deb-vm", vm=True)
    docs = [json.loads(p.read_text())["inputs"] for p in (store.cache / "debian").iterdir()]
    plain = next(d for d in docs if "vm" not in d)
    assert set(plain) == {"builder", "release", "packages", "arch", "layers", "mmdebstrap", "epoch"}
    assert next(d for d in docs if "vm" in d)["vm"] == debian_vm.vm_inputs()


# -- the upper dir as a layer --------------------------------------------------------------------------------

@as_root
def test_upper_layer_has_whiteouts_needed_opaque_markers_and_no_unchanged_files(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in (lower / "d", lower / "kept", upper / "d", upper / "kept", upper / "new"):
        d.mkdir(parents=True)
    (lower / "d/a").write_text("a")
    (lower / "kept/x").write_text("x")
    (lower / "same").write_text("same")
    (lower / "link").symlink_to("same")
    (upper / "same").write_text("same")                 # copied up, unchanged
    (upper / "link").symlink_to("same")
    (upper / "changed").write_text("new")
    (upper / "link2").symlink_to("changed")
    os.mknod(upper / "d/a", stat.S_IFCHR | 0o600, 0)    # overlayfs whiteout of d/a
    os.setxattr(upper / "kept", "trusted.overlay.opaque", b"y")   # kept/ removed and made again
    os.setxattr(upper / "new", "trusted.overlay.opaque", b"y")    # new dirs get it too: says nothing
    out = tmp_path / "layer.tar"
    debian_vm.write_upper_layer(upper, [lower], out, 1_700_000_000)
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert all(m.mtime <= 1_700_000_000 and m.uname == "" for m in tf.getmembers())
    assert names == ["changed", "d", "d/.wh.a", "kept", "kept/.wh..wh..opq", "link2", "new"]


# -- the guest network script ---------------------------------------------------------------------------------

def run_guest_net(tmp_path: Path, cmdline: str, links: str) -> str:
    """guest-net in new net, uts and mount namespaces, with a fake /proc/cmdline, /etc/hosts and resolv.conf."""
    script = tmp_path / "guest-net"
    script.write_text(_guest_files.guest_files()["usr/lib/virtkit/guest-net"][0])
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    for f in ("hosts", "resolv"):
        (tmp_path / f).write_text("")
    t = str(tmp_path)
    wrapper = f"""set -e
mount -t sysfs sysfs /sys
mount --bind {t}/cmdline /proc/cmdline
mount --bind {t}/hosts /etc/hosts
mount --bind {t}/resolv /etc/resolv.conf
{links}
sh {t}/guest-net
echo "host=$(hostname)"
ip -o -4 addr show | grep -v ' lo ' || true
ip route show default
echo "hosts:"; cat /etc/hosts; echo "resolv:"; cat /etc/resolv.conf
"""
    r = subprocess.run(["unshare", "--net", "--uts", "--mount", "sh", "-c", wrapper], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@as_root
def test_guest_net_applies_the_kernel_parameters(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip")
    links = ("ip link add eth0 address 52:54:00:00:00:01 type veth peer name zpeer0\n"
             "ip link add eth1 address 52:54:00:00:00:02 type veth peer name zpeer1")
    out = run_guest_net(tmp_path, "console=ttyS0 virtkit.hostname=vm1 virtkit.ip=10.9.0.5/24 virtkit.gw=10.9.0.1 "
                        "virtkit.dns=10.9.0.1 virtkit.mac=52:54:00:00:00:02 quiet", links)
    assert "host=vm1" in out
    assert "eth1    inet 10.9.0.5/24" in out and "eth0 " not in out      # chosen by its MAC
    assert "default via 10.9.0.1 dev eth1" in out
    assert "10.9.0.5\tvm1" in out and "resolv:\nnameserver 10.9.0.1" in out
    # no MAC: the first Ethernet interface by name
    out = run_guest_net(tmp_path, "virtkit.ip=10.9.0.7/16", links)
    assert "eth0    inet 10.9.0.7/16" in out and "eth1 " not in out and "default" not in out
    # no address given: the hostname only, and no interface touched
    out = run_guest_net(tmp_path, "virtkit.hostname=vm2", "ip link add eth0 type veth peer name zpeer0")
    assert "host=vm2" in out and "inet " not in out and "127.0.1.1\tvm2" in out


# -- the real build, once -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The build shared with the VM boot tests (tests/vm/debian_vm_image.py): the suite builds it once."""
    from tests.vm.debian_vm_image import shared_build

    return shared_build()


@pytest.mark.slow
@pytest.mark.root
def test_real_vm_image_shares_the_plain_base_blob(built: dict[str, Any]) -> None:
    store: ImageStore = built["store"]
    # once (none where VIRTKIT_TEST_DEBIAN_VM_HOME kept an earlier run's cached build)
    assert sum("running mmdebstrap" in ln for ln in built["lines"]) <= 1
    plain, vm = store.manifest("deb")["layers"], store.manifest("deb-vm")["layers"]
    assert len(vm) == len(plain) + 1 and vm[:-1] == plain
    assert built["vm"].layers[:-1] == built["plain"].layers


@pytest.mark.slow
@pytest.mark.root
def test_real_vm_layer_holds_kernel_initrd_agent_console_and_network(built: dict[str, Any]) -> None:
    store: ImageStore = built["store"]
    labels = built["vm"].config["config"]["Labels"]
    kernel, initrd = labels["org.virtkit.vm.kernel"], labels["org.virtkit.vm.initrd"]
    release = labels["org.virtkit.vm.kernel.release"]
    assert kernel == f"/boot/vmlinuz-{release}" and initrd == f"/boot/initrd.img-{release}"
    assert release.endswith("-cloud-amd64") and labels["org.virtkit.vm"] == "1"
    assert labels["org.virtkit.vm.root"] == "/dev/vda" and labels["org.virtkit.vm.agent"] == "org.qemu.guest_agent.0"
    desc = store.manifest("deb-vm")["layers"][-1]
    with tarfile.open(store.blobs / desc["digest"].removeprefix("sha256:")) as tf:
        m = {x.name: x for x in tf.getmembers()}
        assert m[kernel[1:]].isreg() and m[kernel[1:]].size > 1 << 20
        assert m["boot/vmlinuz"].linkname == kernel.rpartition("/")[2]
        assert m["boot/initrd.img"].linkname == initrd.rpartition("/")[2]
        initrd_path = built["dir"] / "initrd.img"
        initrd_path.write_bytes(tf.extractfile(m[initrd[1:]]).read())  # type: ignore[union-attr]
        assert REQUIRED <= debian_vm.initrd_modules(initrd_path)
        assert m["usr/sbin/qemu-ga"].isreg()
        rule = tf.extractfile(m["usr/lib/udev/rules.d/60-qemu-guest-agent.rules"]).read()  # type: ignore[union-attr]
        assert b"org.qemu.guest_agent.0" in rule and b"qemu-guest-agent.service" in rule
        assert m["usr/lib/systemd/system/qemu-guest-agent.service"].isreg()
        wants = m["etc/systemd/system/multi-user.target.wants/virtkit-guest-net.service"]
        assert wants.issym() and wants.linkname == "/etc/systemd/system/virtkit-guest-net.service"
        assert m["usr/lib/virtkit/guest-net"].mode == 0o755
        assert m["etc/systemd/system/systemd-firstboot.service"].linkname == "/dev/null"
        assert m["etc/systemd/system/serial-getty@.service.d/virtkit-autologin.conf"].isreg()
        assert m["usr/sbin/init"].issym() and m["usr/bin/ip"].isreg()      # systemd-sysv, iproute2
        assert b"/dev/vda\t/\text4" in tf.extractfile(m["etc/fstab"]).read()  # type: ignore[union-attr]
        assert not [n for n in m if n.startswith(("var/log/", "var/cache/apt/", "var/lib/apt/lists/"))
                    and m[n].isreg()]


@pytest.mark.slow
@pytest.mark.root
def test_real_vm_image_unpacks_and_a_rebuild_is_cached(built: dict[str, Any]) -> None:
    store: ImageStore = built["store"]
    top = store.layer_paths("deb-vm")[-1]
    assert (top / "boot/vmlinuz").resolve().name == built["vm"].config["config"]["Labels"][
        "org.virtkit.vm.kernel"].rpartition("/")[2]
    lines: list[str] = []
    again = debian.build_debian(store, "deb-vm2", vm=True, progress=lines.append)
    assert again.digest == built["vm"].digest and "cached build" in lines[-1]
