"""Kernel loading: boot_params and hvm_start_info field by field, every refusal, Debian's kernel parsed, and tiny
bzImage / PVH / ELF / flat kernels run under KVM, printing on COM1 what the loader handed them."""

from __future__ import annotations

import glob
import os
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vm.kvm.guests.boot.harness import build_guests, parse_report, run_guest
from virtkit.vm.kvm.boot import BootPlan, detect_format, load_kernel
from virtkit.vm.kvm.boot.common import BOOT_STACK
from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.layout import CMDLINE_ADDR, PVH_MEMMAP, PVH_START_INFO, ZERO_PAGE
from virtkit.vm.kvm.memory import GuestMemory

MiB = 1 << 20
needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent: no KVM to run guests on")


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(64 * MiB)
    yield m
    m.close()


# -- synthetic images (offsets written out from boot.rst, not taken from the code under test) ------------------
def make_bzimage(*, version: int = 0x020F, xloadflags: int = 1, setup_sects: int = 2, kernel: bytes = b"\x90" * 8192,
                 init_size: int = 0x20000, cmdline_size: int = 2047, initrd_addr_max: int = 0x7FFFFFFF,
                 pref_address: int = 0x1000000, relocatable: int = 1, loadflags: int = 1,
                 syssize: int | None = None) -> bytes:
    setup = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<I", setup, 0x1F4, (len(kernel) + 15) // 16 if syssize is None else syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    struct.pack_into("<B", setup, 0x234, relocatable)
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def make_elf(segments: list[tuple[int, bytes, int]], entry: int, *, pvh: int | None = None, pvh_size: int = 4,
             elf_class: int = 2, machine: int = 62) -> bytes:
    """ELF64 with one PT_LOAD per (paddr, data, memsz) and, with `pvh`, a PT_NOTE holding the Xen PHYS32 entry."""
    note = b""
    if pvh is not None:
        note = struct.pack("<III", 4, pvh_size, 18) + b"Xen\0" + pvh.to_bytes(pvh_size, "little")
    phnum = len(segments) + (1 if note else 0)
    offset = 64 + 56 * phnum
    phdrs, body = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset + len(body), paddr, paddr, len(data), memsz, 0x1000)
        body += data
    if note:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset + len(body), 0, 0, len(note), len(note), 4)
        body += note
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + body


def patch(image: bytes, offset: int, data: bytes) -> bytes:
    return image[:offset] + data + image[offset + len(data):]


def e820_in_zero_page(bp: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(bp[0x1E8])]


# -- format detection --------------------------------------------------------------------------------------------
def test_auto_detects_bzimage_and_elf() -> None:
    assert detect_format(make_bzimage()) == "bzimage"
    assert detect_format(make_elf([(0x100000, b"\xf4", 1)], 0x100000)) == "elf"
    assert detect_format(b"\xf4" * 16, "flat") == "flat"


def test_auto_refuses_unknown_bytes_naming_the_formats() -> None:
    with pytest.raises(BootError, match=r"not a bzImage .* nor an ELF .*pass format 'flat'.*auto, bzimage, elf, flat"):
        detect_format(b"\x90" * 4096)
    with pytest.raises(BootError, match="empty"):
        detect_format(b"")


def test_unknown_format_name(mem: GuestMemory) -> None:
    with pytest.raises(BootError, match=r"kernel format 'pe' is unknown: use one of auto, bzimage, elf, flat"):
        load_kernel(mem, make_bzimage(), "pe")


# -- bzImage -----------------------------------------------------------------------------------------------------
def test_bzimage_boot_params(mem: GuestMemory) -> None:
    image, initrd = make_bzimage(), b"INITRD" * 3000
    plan = load_kernel(mem, image, cmdline="console=ttyS0 root=/dev/vda", initrd=initrd)
    assert plan == BootPlan(mode="long64", entry=0x100200, stack=BOOT_STACK, boot_params=ZERO_PAGE,
                            kernel_range=(0x100000, 0x1000000 + 0x20000), format="bzimage",
                            initrd_range=plan.initrd_range)
    assert mem.read(0x100000, 8192) == image[3 * 512:]
    bp = mem.read(ZERO_PAGE, 4096)
    changed = {0x1FA, 0x1FB, *range(0x210, 0x212), *range(0x214, 0x220), 0x224, 0x225, *range(0x228, 0x22C)}
    assert [i for i in range(0x1F1, 0x26C) if bp[i] != image[i]] == sorted(i for i in changed if bp[i] != image[i])
    assert bp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bp, 0x206)[0] == 0x020F
    assert bp[0x210] == 0xFF                                      # type_of_loader
    assert bp[0x211] == 0x81                                      # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", bp, 0x224)[0] == 0xDE00       # heap_end_ptr
    assert struct.unpack_from("<H", bp, 0x1FA)[0] == 0xFFFF       # vid_mode
    assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR
    assert mem.read(CMDLINE_ADDR, 28) == b"console=ttyS0 root=/dev/vda\0"
    ramdisk, size = struct.unpack_from("<II", bp, 0x218)
    assert size == len(initrd) and ramdisk % 4096 == 0 and 0 <= 64 * MiB - (ramdisk + size) < 4096
    assert plan.initrd_range == (ramdisk, ramdisk + size) and mem.read(ramdisk, size) == initrd
    assert e820_in_zero_page(bp) == mem.e820()


def test_bzimage_setup_sects_zero_means_four(mem: GuestMemory) -> None:
    image = make_bzimage(setup_sects=0, kernel=b"K" * 4096)
    load_kernel(mem, image)
    assert len(image) == 5 * 512 + 4096 and mem.read(0x100000, 4096) == b"K" * 4096


def test_bzimage_initrd_respects_initrd_addr_max(mem: GuestMemory) -> None:
    plan = load_kernel(mem, make_bzimage(initrd_addr_max=0x1FFFFFF), initrd=b"x" * 10000)
    assert plan.initrd_range is not None and plan.initrd_range[1] <= 0x2000000


def test_bzimage_load_addr(mem: GuestMemory) -> None:
    plan = load_kernel(mem, make_bzimage(pref_address=0), load_addr=0x400000)
    assert plan.entry == 0x400200 and plan.kernel_range == (0x400000, 0x400000 + 0x20000)
    assert struct.unpack_from("<I", mem.read(ZERO_PAGE + 0x214, 4))[0] == 0x400000   # code32_start


@pytest.mark.parametrize(("image", "kwargs", "message"), [
    (make_bzimage()[:0x250], {"fmt": "bzimage"}, r"too small for a bzImage: 592 bytes"),
    (b"\0" * 4096, {"fmt": "bzimage"}, r"not a bzImage: no 'HdrS' signature at 0x202"),
    (make_bzimage(version=0x0205), {}, r"boot protocol 2.05 is too old: virtkit needs 2.06"),
    (make_bzimage(version=0x020B), {}, r"2.11 cannot declare a 64-bit entry"),
    (make_bzimage(xloadflags=0), {}, r"no 64-bit entry \(xloadflags XLF_KERNEL_64 is clear\)"),
    (make_bzimage(loadflags=0), {}, r"zImage"),
    (patch(make_bzimage(), 0x1F1, b"\x28"), {}, r"truncated: its setup area is 20992 bytes \(40 setup sectors\)"),
    (make_bzimage(syssize=1000), {}, r"truncated: its header announces a kernel of 16000 bytes"),
    (make_bzimage(init_size=100 * MiB), {}, r"memory 64 MiB is too small for the kernel image of 115 MiB"),
    (make_bzimage(cmdline_size=16), {"cmdline": "x" * 17}, r"cmdline is 17 bytes, longer than .* limit of 16"),
    (make_bzimage(), {"cmdline": "a\0b"}, r"NUL"),
    (make_bzimage(), {"initrd": b"i" * 50 * MiB}, r"initrd of 50 MiB does not fit"),
    (make_bzimage(), {"entry": 0x100000}, r"entry: a bzImage is entered at its 64-bit entry"),
    (make_bzimage(), {"load_addr": -1}, r"load_addr must be a guest-physical address"),
])
def test_bzimage_refusals(mem: GuestMemory, image: bytes, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BootError, match=message):
        load_kernel(mem, image, **kwargs)  # type: ignore[arg-type]
    assert mem.read(0x100000, 64) == bytes(64), "a refused kernel must leave guest memory untouched"


# -- ELF -------------------------------------------------------------------------------------------------------
def test_elf_pvh_start_info(mem: GuestMemory) -> None:
    code = bytes(range(256)) * 4
    image = make_elf([(0x100000, code, 0x3000), (0x200000, b"D" * 100, 100)], 0x100000, pvh=0x100010)
    mem.write(0x100000 + len(code), b"\xff" * 0x1000)           # stale bytes where .bss goes
    initrd = b"MODULE" * 100
    plan = load_kernel(mem, image, cmdline="earlyprintk=ttyS0", initrd=initrd)
    assert (plan.mode, plan.entry, plan.boot_params, plan.format) == ("prot32", 0x100010, PVH_START_INFO, "elf")
    assert plan.kernel_range == (0x100000, 0x200064)
    assert mem.read(0x100000, len(code)) == code and mem.read(0x100000 + len(code), 0x3000 - len(code)) == bytes(
        0x3000 - len(code)) and mem.read(0x200000, 100) == b"D" * 100
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack(
        "<IIIIQQQQII", mem.read(PVH_START_INFO, 56))
    assert (magic, version, flags, nr_modules, rsdp) == (0x336EC578, 1, 0, 1, 0)
    assert cmdline == CMDLINE_ADDR and mem.read(cmdline, 18) == b"earlyprintk=ttyS0\0"
    assert memmap == PVH_MEMMAP and entries == len(mem.e820())
    assert [struct.unpack_from("<QQI", mem.read(memmap + 24 * i, 24)) for i in range(entries)] == mem.e820()
    paddr, size, mod_cmdline, _ = struct.unpack("<QQQQ", mem.read(modlist, 32))
    assert (size, mod_cmdline, paddr % 4096) == (len(initrd), 0, 0) and mem.read(paddr, size) == initrd
    assert plan.initrd_range == (paddr, paddr + size)


def test_elf_pvh_note_of_8_bytes(mem: GuestMemory) -> None:
    plan = load_kernel(mem, make_elf([(0x1000000, b"\xf4" * 64, 64)], 0x1000000, pvh=0x1000020, pvh_size=8))
    assert (plan.mode, plan.entry) == ("prot32", 0x1000020)


def test_elf_without_note_enters_64_bit_with_zero_page(mem: GuestMemory) -> None:
    plan = load_kernel(mem, make_elf([(0x1000000, b"\xf4" * 64, 64)], 0x1000008), cmdline="quiet")
    assert (plan.mode, plan.entry, plan.boot_params) == ("long64", 0x1000008, ZERO_PAGE)
    bp = mem.read(ZERO_PAGE, 4096)
    assert bp[0x202:0x206] == b"HdrS" and bp[0x210] == 0xFF and struct.unpack_from("<H", bp, 0x1FE)[0] == 0xAA55
    assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR and mem.read(CMDLINE_ADDR, 6) == b"quiet\0"
    assert e820_in_zero_page(bp) == mem.e820()


@pytest.mark.parametrize(("image", "kwargs", "message"), [
    (make_elf([(0x3F00000, b"x", 0x200000)], 0x3F00000), {}, r"memory 64 MiB is too small for the kernel image of 2"),
    (make_elf([(0x8000, b"x", 1)], 0x8000), {}, r"overlaps the boot structures below 0x30000"),
    (make_elf([(0x100000, b"x", 1)], 0x100000, elf_class=1), {}, r"32-bit \(ELFCLASS32\)"),
    (make_elf([(0x100000, b"x", 1)], 0x100000, machine=3), {}, r"for machine 3, not x86-64"),
    (make_elf([(0x100000, b"x", 1)], 0x100000)[:-1], {}, r"segment 0 is truncated"),
    (make_elf([(0x100000, b"x" * 16, 8)], 0x100000), {}, r"more file bytes"),
    (make_elf([(0x100000, b"x", 0x2000), (0x101000, b"y", 1)], 0x100000), {}, r"overlap"),
    (make_elf([], 0x100000), {}, r"no loadable \(PT_LOAD\) segment"),
    (make_elf([(0x100000, b"x", 1)], 0x500000), {}, r"entry point 0x500000 is not inside any loaded segment"),
    (make_elf([(0x100000, b"x", 1)], 0x100000, pvh=0x300000), {}, r"PVH entry 0x300000 is not inside"),
    (make_elf([(0x100000, b"x", 1)], 0x100000), {"load_addr": 0x200000}, r"load_addr/entry: an ELF kernel"),
    (make_elf([(0x100000, b"x", 1)], 0x100000), {"cmdline": "c" * 0x10000}, r"longer than the kernel's limit"),
])
def test_elf_refusals(mem: GuestMemory, image: bytes, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BootError, match=message):
        load_kernel(mem, image, **kwargs)  # type: ignore[arg-type]


# -- mangled images: refused with a BootError, never another exception -----------------------------------------
SEEDS = {"bzimage": make_bzimage(kernel=b"\x90" * 1024),
         "elf": make_elf([(0x100000, b"\x90" * 256, 0x2000), (0x200000, b"d" * 64, 64)], 0x100000, pvh=0x100000)}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SEEDS)), cut=st.integers(0, 0x1000),
       patches=st.lists(st.tuples(st.integers(0, 0x280), st.binary(min_size=1, max_size=8)), max_size=6))
def test_mangled_images_raise_only_boot_error(mem: GuestMemory, kind: str, cut: int,
                                              patches: list[tuple[int, bytes]]) -> None:
    image = SEEDS[kind]
    for offset, data in patches:
        image = patch(image, offset, data)[:len(image)]
    image = image[:max(len(image) - cut, 1)]
    try:
        plan = load_kernel(mem, image, kind, cmdline="x", initrd=b"i" * 100)
    except BootError:
        return
    assert plan.kernel_range[0] >= 0x30000 and plan.kernel_range[1] <= 64 * MiB


# -- flat ------------------------------------------------------------------------------------------------------
def test_flat_defaults(mem: GuestMemory) -> None:
    code = b"\x90" * 100 + b"\xf4"
    plan = load_kernel(mem, code, "flat", cmdline="hello")
    assert plan == BootPlan(mode="long64", entry=0x100000, stack=0x100000, boot_params=0,
                            kernel_range=(0x100000, 0x100000 + len(code)), format="flat")
    assert mem.read(0x100000, len(code)) == code and mem.read(CMDLINE_ADDR, 6) == b"hello\0"
    assert e820_in_zero_page(mem.read(ZERO_PAGE, 4096)) == mem.e820()


def test_flat_load_addr_and_entry(mem: GuestMemory) -> None:
    plan = load_kernel(mem, b"\x90" * 64, "flat", load_addr=0x80008, entry=0x80010)
    assert (plan.entry, plan.stack, plan.kernel_range) == (0x80010, 0x80000, (0x80008, 0x80048))


@pytest.mark.parametrize(("image", "kwargs", "message"), [
    (b"\xf4", {"load_addr": 0x30000}, r"load_addr 0x30000 is too low for a flat image: below 0x40000"),
    (b"\xf4" * 2 * MiB, {"load_addr": 63 * MiB}, r"memory 64 MiB is too small for the flat image of 2 MiB"),
    (b"\xf4" * 0x2000, {"load_addr": 0x9F000}, r"not inside one stretch of guest RAM"),
    (b"\xf4" * 16, {"entry": 0x100010}, r"entry 0x100010 is outside the flat image loaded at 0x100000..0x100010"),
    (b"", {}, r"flat image is empty"),
])
def test_flat_refusals(mem: GuestMemory, image: bytes, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BootError, match=message):
        load_kernel(mem, image, "flat", **kwargs)  # type: ignore[arg-type]


# -- Debian's kernel, when it is on disk -----------------------------------------------------------------------
def _debian_bzimage() -> bytes | None:
    """/boot/vmlinuz-*, else the vmlinuz inside a linux-image .deb apt already downloaded (no network here)."""
    for path in sorted(glob.glob("/boot/vmlinuz-*")):
        return Path(path).read_bytes()
    for deb in sorted(glob.glob("/var/cache/apt/archives/linux-image-[0-9]*amd64_*.deb")):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name.startswith("./boot/vmlinuz-") and (f := tar.extractfile(member)):
                        return f.read()
        finally:
            proc.stdout.close()
            proc.wait()
    return None


@pytest.fixture(scope="module")
def debian_bzimage() -> bytes:
    image = _debian_bzimage()
    if image is None:
        pytest.skip("no Debian kernel bzImage on this host (/boot/vmlinuz-*, or a linux-image-*.deb in "
                    "/var/cache/apt/archives: apt-get download linux-image-cloud-amd64 puts one there)")
    return image


def test_debian_bzimage_plan(debian_bzimage: bytes) -> None:
    mem = GuestMemory(256 * MiB)
    try:
        plan = load_kernel(mem, debian_bzimage, cmdline="console=ttyS0 panic=-1", initrd=b"\x07" * 100000)
        pref, init_size = struct.unpack_from("<QI", debian_bzimage, 0x258)
        assert (plan.format, plan.mode, plan.entry, plan.boot_params) == ("bzimage", "long64", 0x100200, ZERO_PAGE)
        assert plan.kernel_range == (0x100000, pref + init_size)
        bp = mem.read(ZERO_PAGE, 4096)
        assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR
        assert mem.read(CMDLINE_ADDR, 23) == b"console=ttyS0 panic=-1\0"
        assert bp[0x1E8] == len(mem.e820()) and e820_in_zero_page(bp) == mem.e820()
        assert plan.initrd_range is not None and plan.initrd_range[0] >= plan.kernel_range[1]
        setup = ((debian_bzimage[0x1F1] or 4) + 1) * 512
        assert mem.read(0x100000, 4096) == debian_bzimage[setup:setup + 4096]
    finally:
        mem.close()
    small = GuestMemory(64 * MiB)
    try:
        with pytest.raises(BootError, match=r"memory 64 MiB is too small for the kernel image of \d+ MiB"):
            load_kernel(small, debian_bzimage)
    finally:
        small.close()


def test_debian_vmlinux_pvh_plan() -> None:
    from virtkit.vm.qemu.kernel import cache_dir
    found = sorted(glob.glob(os.path.join(cache_dir(), "kernel", "*", "vmlinux")))
    if not found:
        pytest.skip(f"no extracted Debian vmlinux in {cache_dir()}/kernel (the qemu engine's kernel cache)")
    image = Path(found[-1]).read_bytes()
    mem = GuestMemory(256 * MiB)
    try:
        plan = load_kernel(mem, image, cmdline="console=hvc0")
        assert (plan.format, plan.mode, plan.boot_params) == ("elf", "prot32", PVH_START_INFO)
        assert plan.kernel_range[0] <= plan.entry < plan.kernel_range[1]
        assert struct.unpack_from("<I", mem.read(PVH_START_INFO, 4))[0] == 0x336EC578
    finally:
        mem.close()


# -- under KVM: the guests print what they were handed ---------------------------------------------------------
@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_guests(tmp_path_factory.mktemp("boot-guests"))


def _expect_e820(report: dict[str, list[str]], key: str, e820: list[tuple[int, int, int]]) -> None:
    assert report[key] == [f"{a:#x},{s:#x},{t:#x}" for a, s, t in e820]


@needs_kvm
def test_kvm_bzimage_guest(guests: dict[str, bytes]) -> None:
    run = run_guest(guests["bzImage"], cmdline="console=ttyS0 virtkit.test=bz", initrd=b"hello-initrd")
    report = parse_report(run.serial)
    assert run.status == 0x42, run.serial
    assert report["boot_params"] == [hex(ZERO_PAGE)] and report["cmdline"] == ["console=ttyS0 virtkit.test=bz"]
    assert report["loader"] == ["0xff"] and report["loadflags"] == ["0x81"] and report["version"] == ["0x20f"]
    assert report["e820"] == [hex(len(run.e820))]
    _expect_e820(report, "e820_entry", run.e820)
    assert report["initrd_size"] == ["0xc"] and report["initrd"] == ["hello-initrd"]


@needs_kvm
def test_kvm_pvh_guest(guests: dict[str, bytes]) -> None:
    run = run_guest(guests["pvh.elf"], cmdline="console=hvc0 virtkit.test=pvh", initrd=b"pvh-module")
    report = parse_report(run.serial)
    assert run.plan.mode == "prot32" and run.status == 0x42, run.serial
    assert report["start_info"] == [hex(PVH_START_INFO)] and report["magic"] == ["0x336ec578"]
    assert report["version"] == ["0x1"] and report["rsdp"] == ["0x0"]
    assert report["cmdline"] == ["console=hvc0 virtkit.test=pvh"]
    assert report["memmap"] == [hex(len(run.e820))]
    _expect_e820(report, "memmap_entry", run.e820)
    assert report["modules"] == ["0x1"] and report["initrd"] == ["pvh-module"]


@needs_kvm
def test_kvm_elf_without_note_guest(guests: dict[str, bytes]) -> None:
    run = run_guest(guests["linux64.elf"], cmdline="virtkit.test=elf64")
    report = parse_report(run.serial)
    assert run.plan.mode == "long64" and run.status == 0x42, run.serial
    assert report["cmdline"] == ["virtkit.test=elf64"] and report["initrd_size"] == ["0x0"]
    _expect_e820(report, "e820_entry", run.e820)


@needs_kvm
def test_kvm_flat_guest() -> None:
    # entered at its load address in long mode: mov dx,0x3f8; mov al,'o'; out dx,al; mov al,'k'; out dx,al;
    # mov al,0x42; out 0xf4,al; hlt
    code = bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, ord("o"), 0xEE, 0xB0, ord("k"), 0xEE, 0xB0, 0x42, 0xE6, 0xF4, 0xF4])
    run = run_guest(code, "flat", load_addr=0x200000)
    assert (run.status, run.serial, run.plan.entry) == (0x42, b"ok", 0x200000)
