"""Guest kernels and busybox from Debian packages: apt-get download + dpkg-deb -x, cached by version.

Cache layout (shared by every home on the host; entries are immutable and made by rename, so homes side by
side never see half-made ones):  <cache>/kernel/<release>_<version>/{vmlinux, release, modules/...}
                                 <cache>/busybox/<version>/busybox
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from virtkit.core.errors import InvalidArgument, SystemFailure
from virtkit.vm.qemu.vmlinux import extract_vmlinux, has_pvh_note, is_elf

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
DEFAULT_CACHE = "/var/cache/virtkit/vm"
# what the generated initramfs loads: virtio transports and devices, and the ACPI power button (for stop)
WANTED_MODULES = ("virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "button", "evdev")


def cache_dir() -> str:
    return os.environ.get("VIRTKIT_VM_CACHE") or DEFAULT_CACHE


@dataclass(frozen=True)
class Kernel:
    release: str               # uname -r of the guest, e.g. 6.1.0-56-cloud-amd64
    vmlinux: str               # ELF with a PVH entry note
    modules: list[str]         # .ko paths in load order (dependencies first)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    os.makedirs(cache_dir(), mode=0o755, exist_ok=True)
    with open(os.path.join(cache_dir(), f".{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], cwd: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemFailure(f"{argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise SystemFailure(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _candidate_version(package: str) -> tuple[str, str]:
    """(package to download, its version): a metapackage resolves to the package it depends on."""
    out = _run(["apt-cache", "show", "--no-all-versions", package])
    version = re.search(r"^Version: (\S+)", out, re.M)
    depends = re.search(r"^Depends: (.*)$", out, re.M)
    if version is None:
        raise SystemFailure(f"apt-cache knows no version of {package}")
    if package == KERNEL_META_PACKAGE and depends:
        m = re.search(r"(linux-image-[0-9][^\s,(]*)", depends.group(1))
        if m:
            return m.group(1), version.group(1)
    return package, version.group(1)


def _download_extract(package: str, dest: str) -> None:
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        os.chmod(tmp, 0o777)           # apt's _apt user writes the download here
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if len(debs) != 1:
            raise SystemFailure(f"apt-get download {package}: expected one .deb, found {debs}")
        _run(["dpkg-deb", "-x", os.path.join(tmp, debs[0]), dest])


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", s)


def _newest_cached(kind: str) -> str | None:
    root = os.path.join(cache_dir(), kind)
    try:
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    except FileNotFoundError:
        return None
    return os.path.join(root, entries[-1]) if entries else None


_resolved: dict[str, str] = {}
APT_LISTS = "/var/lib/apt/lists"


def _remembered_candidate(kind: str, package: str) -> tuple[str, str]:
    """_candidate_version, remembered in the cache until the package index changes (apt-cache takes ~1 s)."""
    import json

    try:
        stamp = os.stat(APT_LISTS).st_mtime_ns
    except OSError:
        stamp = 0
    memo = os.path.join(cache_dir(), f".{kind}.candidate.json")
    try:
        with open(memo) as f:
            data = json.load(f)
        if data["stamp"] == stamp and data["package"] == package:
            return str(data["real"]), str(data["version"])
    except (OSError, ValueError, KeyError):
        pass
    real, version = _candidate_version(package)
    os.makedirs(cache_dir(), mode=0o755, exist_ok=True)
    tmp = f"{memo}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"stamp": stamp, "package": package, "real": real, "version": version}, f)
    os.rename(tmp, memo)
    return real, version


def _cached_package(kind: str, package: str, build: Callable[[str, str], None]) -> str:
    """The cache entry for the candidate version of `package`, made by build(extracted_root, entry_tmp)."""
    if kind in _resolved and os.path.isdir(_resolved[kind]):
        return _resolved[kind]
    try:
        real, version = _remembered_candidate(kind, package)
    except SystemFailure:
        # no package index (offline): the newest entry already cached will do
        cached = _newest_cached(kind)
        if cached is None:
            raise
        return cached
    entry = os.path.join(cache_dir(), kind, _safe(f"{real}_{version}"))
    with _locked(kind):
        if not os.path.isdir(entry):
            os.makedirs(os.path.dirname(entry), mode=0o755, exist_ok=True)
            work = tempfile.mkdtemp(dir=os.path.dirname(entry), prefix=".new-")
            try:
                root = os.path.join(work, "deb")
                _download_extract(real, root)
                out = os.path.join(work, "entry")
                os.makedirs(out)
                build(root, out)
                shutil.rmtree(root)
                os.rename(out, entry)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    _resolved[kind] = entry
    return entry


def _build_kernel(root: str, out: str) -> None:
    boot = os.path.join(root, "boot")
    images = [f for f in os.listdir(boot) if f.startswith("vmlinuz-")]
    if len(images) != 1:
        raise SystemFailure(f"kernel package: expected one vmlinuz, found {images}")
    release = images[0][len("vmlinuz-"):]
    with open(os.path.join(boot, images[0]), "rb") as src:
        elf = extract_vmlinux(src.read())
    with open(os.path.join(out, "vmlinux"), "wb") as dst:
        dst.write(elf)
    with open(os.path.join(out, "release"), "w") as rel:
        rel.write(release + "\n")
    mods = module_closure(os.path.join(root, "lib", "modules", release), WANTED_MODULES)
    os.makedirs(os.path.join(out, "modules"))
    with open(os.path.join(out, "modules", "order"), "w") as order:
        for path in mods:
            shutil.copyfile(path, os.path.join(out, "modules", os.path.basename(path)))
            order.write(os.path.basename(path) + "\n")


def _build_busybox(root: str, out: str) -> None:
    src = os.path.join(root, "bin", "busybox")
    shutil.copyfile(src, os.path.join(out, "busybox"))
    os.chmod(os.path.join(out, "busybox"), 0o755)


def default_kernel() -> Kernel:
    """Debian's cloud kernel, fetched and prepared once per version."""
    entry = _cached_package("kernel", KERNEL_META_PACKAGE, _build_kernel)
    with open(os.path.join(entry, "release")) as f:
        release = f.read().strip()
    with open(os.path.join(entry, "modules", "order")) as f:
        mods = [os.path.join(entry, "modules", line.strip()) for line in f if line.strip()]
    return Kernel(release=release, vmlinux=os.path.join(entry, "vmlinux"), modules=mods)


def busybox() -> str:
    """A static busybox from Debian's busybox-static (the host's own copy is not relied on)."""
    return os.path.join(_cached_package("busybox", "busybox-static", _build_busybox), "busybox")


def check_kernel_file(path: str) -> None:
    """A user's kernel override must be an ELF vmlinux with a PVH note (microvm boots nothing else)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidArgument(f"kernel: must be an absolute path (got {path!r})")
    try:
        with open(path, "rb") as f:
            head = f.read()
    except FileNotFoundError as exc:
        raise InvalidArgument(f"kernel: no such file: {path}") from exc
    except OSError as exc:
        raise InvalidArgument(f"kernel: cannot read {path}: {exc.strerror}") from exc
    if not is_elf(head):
        head = extract_vmlinux(head)         # InvalidArgument when it is not a bzImage either
    if not has_pvh_note(head):
        raise InvalidArgument(f"kernel: {path} has no PVH entry (needs CONFIG_PVH=y)")


# -- modules --------------------------------------------------------------------------------------------
def modinfo(path: str) -> dict[str, str]:
    """Fields of a .ko's .modinfo section (no modules.dep in the package: depmod runs at install time)."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _fl, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _n, stroff, _s = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            fields: dict[str, str] = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    fields.setdefault(k, v)
            return fields
    return {}


def module_closure(moddir: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths of `wanted` modules and what they depend on, dependencies first; built-ins are skipped."""
    by_name: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            if f.endswith(".ko"):
                by_name[f[:-3].replace("-", "_")] = os.path.join(dirpath, f)
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name not in by_name:       # not a module file: built into the kernel
            return
        seen.add(name)
        for dep in filter(None, modinfo(by_name[name]).get("depends", "").split(",")):
            visit(dep)
        order.append(by_name[name])

    for w in wanted:
        visit(w)
    return order
