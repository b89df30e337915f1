"""The guest build helper: images cached by what went into them, flat images entered at byte 0, PVH notes."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from tests.vm.kvm.guests.build import GUESTS_DIR, TARGETS, BuildError, build, symbol_address

XEN_ELFNOTE_PHYS32_ENTRY = 18


def test_same_inputs_same_image_other_defines_other_image(tmp_path):
    first = build("timer", defines={"MODE": 2}, cache_dir=tmp_path)
    assert build("timer", defines={"MODE": 2}, cache_dir=tmp_path) == first
    other = build("timer", defines={"MODE": 3}, cache_dir=tmp_path)
    assert other != first and other.read_bytes() != first.read_bytes()


def test_flat_image_starts_with_the_entry_code(tmp_path):
    image = build("hello", cache_dir=tmp_path)
    assert image.read_bytes()[0] == 0xFA  # cli: _start sits at the load address, where the VMM enters
    assert symbol_address(image, "_start") == 0x100000


def pvh_entry(elf: bytes) -> int:
    """The PHYS32_ENTRY address from the ELF64's PT_NOTE segment."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        namesz, descsz, kind = struct.unpack_from("<III", elf, offset)
        if kind == XEN_ELFNOTE_PHYS32_ENTRY and elf[offset + 12:offset + 15] == b"Xen":
            return struct.unpack_from("<Q" if descsz == 8 else "<I", elf, offset + 12 + (namesz + 3) // 4 * 4)[0]
    raise AssertionError("no Xen PHYS32_ENTRY note in a PT_NOTE segment")


@pytest.mark.parametrize("name", ["bench_first_byte", "bench_exit_loop"])
def test_pvh_elf_names_its_32_bit_entry(tmp_path, name):
    elf = build(name, fmt="pvh", cache_dir=tmp_path)
    assert pvh_entry(elf.read_bytes()) == symbol_address(elf, "_start") == 0x100000


def test_unknown_guest_and_format_are_refused(tmp_path):
    with pytest.raises(BuildError, match="unknown guest"):
        build("nope", cache_dir=tmp_path)
    with pytest.raises(BuildError, match="pvh"):
        build("hello", fmt="pvh", cache_dir=tmp_path)


def test_compiler_errors_are_reported(tmp_path):
    with pytest.raises(BuildError, match="INVERTED_OWN"):
        build("isolation", cache_dir=tmp_path)


def test_every_target_builds(tmp_path):
    extra = {"isolation": {"INVERTED_OWN": "0x1", "INVERTED_OTHER": "0x2"}}
    for name, target in TARGETS.items():
        for fmt in target.formats:
            path = build(name, fmt=fmt, defines=extra.get(name), cache_dir=tmp_path)
            assert path.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a build left its work directory behind"


def test_command_line_prints_the_image_path(tmp_path):
    done = subprocess.run([sys.executable, str(GUESTS_DIR / "build.py"), "bench_first_byte", "--format", "pvh",
                           "-o", str(tmp_path / "fb.elf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "fb.elf")
    assert (tmp_path / "fb.elf").read_bytes()[:4] == b"\x7fELF"
