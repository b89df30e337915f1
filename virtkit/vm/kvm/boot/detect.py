"""Which boot format an image is: the explicit choice, or what 'auto' reads from the image's own signatures.

'auto' never guesses 'flat': raw code has no signature, so unknown bytes are an error naming the formats, and
loading them as flat code takes an explicit format 'flat'.
"""

from __future__ import annotations

from virtkit.vm.kvm.errors import BootError

FORMATS = ("bzimage", "elf", "flat")
AUTO = "auto"
BZIMAGE_SIGNATURE_AT, BZIMAGE_SIGNATURE = 0x202, b"HdrS"
ELF_MAGIC = b"\x7fELF"


def is_bzimage(image: bytes) -> bool:
    return image[BZIMAGE_SIGNATURE_AT:BZIMAGE_SIGNATURE_AT + 4] == BZIMAGE_SIGNATURE


def is_elf(image: bytes) -> bool:
    return image[:4] == ELF_MAGIC


def detect_format(image: bytes, fmt: str = AUTO) -> str:
    """'bzimage', 'elf' or 'flat'; a BootError for an unknown format name or an image 'auto' cannot place."""
    if fmt not in (AUTO, *FORMATS):
        raise BootError(f"kernel format {fmt!r} is unknown: use one of {', '.join((AUTO, *FORMATS))}")
    if fmt != AUTO:
        return fmt
    if not image:
        raise BootError("kernel image is empty")
    # bzImage first: an EFI-stub bzImage starts with 'MZ', never with the ELF magic, but checking the stronger
    # signature first keeps the order obvious
    if is_bzimage(image):
        return "bzimage"
    if is_elf(image):
        return "elf"
    raise BootError(f"cannot tell the kernel image's format ({len(image)} bytes): it is not a bzImage (no 'HdrS' "
                    f"at {BZIMAGE_SIGNATURE_AT:#x}) nor an ELF (no \\x7fELF magic); format 'auto' never assumes "
                    f"raw code, pass format 'flat' for that (formats: {', '.join((AUTO, *FORMATS))})")
