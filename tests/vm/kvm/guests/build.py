"""Builds the freestanding test guests of the native VMM from their sources, cached by a hash of everything used.

A guest is C and/or assembly compiled with gcc (no libc, no PIC, no red zone, no SSE) and linked at 0x100000.
`flat` targets are raw images (objcopy -O binary) for `--kernel-format flat`; `pvh` targets are ELF files with
a Xen PHYS32_ENTRY note, bootable by QEMU's -kernel (used by bench/ to run the same guest under both VMMs).

    python tests/vm/kvm/guests/build.py hello                 # prints the path of the built image
    python tests/vm/kvm/guests/build.py bench_exit_loop -D ITERATIONS=100000 --format pvh
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
RUNTIME = ("rt/entry.S", "rt/isr.S", "rt/rt.c")
RUNTIME_HEADERS = ("rt/rt.h",)
VIRTIO = ("rt/virtio.c", "rt/virtio.h")
# why each flag: no libc or startup files; absolute addresses (the image runs where it is linked); interrupt
# handlers run on the interrupted stack (no red zone); the entry state leaves SSE off (CR4.OSFXSR clear).
CFLAGS = (
    "-ffreestanding", "-nostdlib", "-nostartfiles", "-static", "-fno-pic", "-fno-pie", "-no-pie",
    "-mcmodel=small", "-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-fno-builtin",
    "-fno-tree-loop-distribute-patterns", "-O2", "-std=gnu11", "-Wall", "-Werror",
)
LDFLAGS = ("-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-Wl,-z,noexecstack")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / f"virtkit-guests-{os.getuid()}"


class BuildError(RuntimeError):
    """A guest did not compile or link; the message carries the compiler's output."""


@dataclass(frozen=True)
class Target:
    """A guest program: its own sources, which runtime parts it links, its default -D values and formats."""

    sources: tuple[str, ...]
    runtime: bool = True
    virtio: bool = False
    defines: dict[str, str] = field(default_factory=dict)
    formats: tuple[str, ...] = ("flat",)


TARGETS: dict[str, Target] = {
    "hello": Target(("hello.c",)),
    "cpuid": Target(("cpuid.c",)),
    "isolation": Target(("isolation.c", "isolation_scan.S"), defines={"RAM_SIZE": str(4 << 20)}),
    "timer": Target(("timer.c",), defines={"MODE": "1"}),
    "irqfd": Target(("irqfd.c",), defines={"GSI": "9"}),
    "serial_echo": Target(("serial_echo.c",)),
    "virtio_blk": Target(("virtio_blk.c",), virtio=True),
    "virtio_net": Target(("virtio_net.c",), virtio=True),
    "malformed": Target(("malformed.c",), virtio=True),
    "counter": Target(("counter.c",), defines={"LIMIT": "400", "TICK_NS": "10000000"}),
    "dirty": Target(("dirty.S",), runtime=False),
    "bench_first_byte": Target(("bench_first_byte.S", "bench_exit.h"), runtime=False, formats=("flat", "pvh")),
    "bench_exit_loop": Target(("bench_exit_loop.S", "bench_exit.h"), runtime=False, defines={"ITERATIONS": "10000"},
                              formats=("flat", "pvh")),
}


def _inputs(target: Target, fmt: str) -> list[Path]:
    names = list(target.sources)
    if target.runtime:
        names += [*RUNTIME, *RUNTIME_HEADERS]
    if target.virtio:
        names += list(VIRTIO)
    if fmt == "pvh":
        names.append("rt/pvh_note.S")
    names.append(f"{fmt}.ld")
    return [GUESTS_DIR / n for n in names]


@functools.cache
def _tool_version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _cache_key(name: str, fmt: str, inputs: list[Path], defines: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for part in (name, fmt, " ".join(CFLAGS + LDFLAGS), _tool_version("gcc"), _tool_version("ld"),
                 repr(sorted(defines.items()))):
        digest.update(part.encode() + b"\0")
    for path in inputs:
        digest.update(str(path.relative_to(GUESTS_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _compile(target: Target, fmt: str, defines: dict[str, str], elf: Path) -> None:
    sources = [p for p in _inputs(target, fmt) if p.suffix in (".c", ".S")]
    fmt_define = {"flat": "-DGUEST_FORMAT_FLAT=1", "pvh": "-DGUEST_FORMAT_PVH=1"}[fmt]
    command = ["gcc", *CFLAGS, *LDFLAGS, fmt_define, f"-I{GUESTS_DIR / 'rt'}", f"-I{GUESTS_DIR}",
               f"-T{GUESTS_DIR / f'{fmt}.ld'}",
               *(f"-D{k}={v}" for k, v in sorted(defines.items())), "-o", str(elf), *map(str, sources)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"building {elf.name} failed:\n{' '.join(command)}\n{done.stderr}")


def build(name: str, *, fmt: str = "flat", defines: dict[str, str | int] | None = None,
          cache_dir: Path | None = None) -> Path:
    """The path of the built guest `name` (raw image for flat, ELF for pvh), compiling it unless cached."""
    if name not in TARGETS:
        raise BuildError(f"unknown guest {name!r}: one of {', '.join(sorted(TARGETS))}")
    target = TARGETS[name]
    if fmt not in target.formats:
        raise BuildError(f"guest {name!r} is built as {', '.join(target.formats)}, not {fmt!r}")
    merged = {**target.defines, **{k: str(v) for k, v in (defines or {}).items()}}
    cache = Path(cache_dir or os.environ.get("VIRTKIT_GUEST_CACHE") or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(name, fmt, _inputs(target, fmt), merged)
    elf_out = cache / f"{name}-{key}.elf"
    out = cache / f"{name}-{key}.bin" if fmt == "flat" else elf_out
    if out.exists() and elf_out.exists():
        return out
    # build in a private directory and rename into place: parallel test workers may build the same guest
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as work:
        elf = Path(work) / f"{name}.elf"
        _compile(target, fmt, merged, elf)
        if fmt == "flat":
            image = Path(work) / f"{name}.bin"
            subprocess.run(["objcopy", "-O", "binary", str(elf), str(image)], check=True, capture_output=True)
            os.replace(image, out)
        os.replace(elf, elf_out)
    return out


def symbol_address(image: Path, symbol: str) -> int:
    """Where `symbol` of a built guest lives in guest-physical memory (read from the ELF kept beside the image)."""
    listing = subprocess.run(["nm", str(image.with_suffix(".elf"))], capture_output=True, text=True,
                             check=True).stdout
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == symbol:
            return int(parts[0], 16)
    raise BuildError(f"guest {image.name} has no symbol {symbol!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a virtkit test guest and print its path.")
    parser.add_argument("name", choices=sorted(TARGETS))
    parser.add_argument("--format", default="flat", choices=("flat", "pvh"))
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("-o", "--output", type=Path, help="copy the image here as well")
    args = parser.parse_args()
    defines = dict(d.split("=", 1) for d in args.defines)
    try:
        path = build(args.name, fmt=args.format, defines=defines)
    except BuildError as exc:
        raise SystemExit(str(exc)) from None
    if args.output:
        shutil.copyfile(path, args.output)
        path = args.output
    print(path)


if __name__ == "__main__":
    main()
