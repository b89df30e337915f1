"""Loading a Linux bzImage by the x86 boot protocol's 64-bit entry (Documentation/arch/x86/boot.rst).

The real-mode setup code is never run: the protected-mode kernel is copied to the load address (1 MiB unless the
caller says otherwise), boot_params is built at ZERO_PAGE from the image's setup header, and the vCPU starts in
long mode at load address + 0x200 with RSI = ZERO_PAGE.

Why 1 MiB and not pref_address: the 64-bit entry of the compressed kernel is position independent and itself
moves the kernel to where it will run -- max(load address aligned up to kernel_alignment, pref_address) for a
relocatable kernel, pref_address for any other -- and needs init_size bytes there. So the image can sit at 1 MiB,
and what must fit in guest RAM is the union of the image and that runtime footprint (kernel_range).

The initrd goes as high as initrd_addr_max and the RAM below the MMIO hole allow, always below 4 GiB (so
XLF_CAN_BE_LOADED_ABOVE_4G is not needed and ext_ramdisk_image stays 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from virtkit.vm.kvm.boot import zeropage as zp
from virtkit.vm.kvm.boot.common import (
    BOOT_STACK,
    BootPlan,
    align_up,
    check_fits,
    encode_cmdline,
    place_initrd,
    write_cmdline,
    write_initrd,
)
from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.layout import CMDLINE_MAX, DEFAULT_LOAD_ADDR, ZERO_PAGE
from virtkit.vm.kvm.memory import GuestMemory

SECTOR = 512
DEFAULT_SETUP_SECTS = 4          # boot.rst: "If this field is 0, the real value is 4"
ENTRY_64_OFFSET = 0x200          # the 64-bit entry, from the start of the protected-mode kernel
MIN_VERSION = 0x0206             # cmdline_size, and a header long enough to carry the fields below
XLOADFLAGS_VERSION = 0x020C      # before 2.12 a kernel cannot say it has a 64-bit entry
INITRD_ADDR_MAX_OLD = 0x37FFFFFF  # boot.rst's limit when the header gives none (protocols before 2.03)
# Where the real-mode heap would end, as boot.rst's sample loader sets it for protocol 2.02+. Only the real-mode
# setup code reads heap_end_ptr, and it never runs here; it is set so that the header is what a loader would leave.
HEAP_END = 0xE000


def _version(v: int) -> str:
    return f"{v >> 8}.{v & 0xFF:02d}"


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header that loading depends on, already checked."""

    setup_size: int              # bytes before the protected-mode kernel: (setup_sects + 1) * 512
    version: int
    xloadflags: int
    relocatable: bool
    kernel_alignment: int
    pref_address: int
    init_size: int
    cmdline_size: int
    initrd_addr_max: int
    raw: bytes                   # the header as copied into boot_params: 0x1f1 .. 0x202 + its length byte


def parse_header(image: bytes) -> SetupHeader:
    """The setup header of `image`, or a BootError saying why this is not a bootable 64-bit bzImage."""
    if len(image) < zp.HDR_END:
        raise BootError(f"kernel image is too small for a bzImage: {len(image)} bytes, the setup header alone "
                        f"ends at {zp.HDR_END:#x}")
    if image[zp.HDR_HEADER:zp.HDR_HEADER + 4] != zp.HDR_MAGIC:
        raise BootError(f"not a bzImage: no 'HdrS' signature at {zp.HDR_HEADER:#x}")
    version = zp.get(image, zp.HDR_VERSION, "H")
    if version < MIN_VERSION:
        raise BootError(f"bzImage boot protocol {_version(version)} is too old: virtkit needs "
                        f"{_version(MIN_VERSION)} or later")
    if version < XLOADFLAGS_VERSION:
        raise BootError(f"bzImage boot protocol {_version(version)} cannot declare a 64-bit entry (xloadflags "
                        f"came with {_version(XLOADFLAGS_VERSION)}, Linux 3.8): virtkit enters kernels in 64-bit mode")
    xloadflags = zp.get(image, zp.HDR_XLOADFLAGS, "H")
    if not xloadflags & zp.XLF_KERNEL_64:
        raise BootError("bzImage has no 64-bit entry (xloadflags XLF_KERNEL_64 is clear): a 32-bit kernel "
                        "cannot be booted here")
    if not zp.get(image, zp.HDR_LOADFLAGS, "B") & zp.LOADED_HIGH:
        raise BootError("image is a zImage (loadflags LOADED_HIGH clear): only bzImages, loaded at 1 MiB, are "
                        "supported")
    setup_sects = zp.get(image, zp.HDR_SETUP_SECTS, "B") or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR
    if len(image) <= setup_size:
        raise BootError(f"bzImage is truncated: its setup area is {setup_size} bytes ({setup_sects} setup sectors) "
                        f"but the file has only {len(image)}")
    # syssize counts the protected-mode kernel in 16-byte paragraphs, rounded up: fewer means a cut-off file
    paragraphs = zp.get(image, zp.HDR_SYSSIZE, "I")
    if (len(image) - setup_size + 15) // 16 < paragraphs:
        raise BootError(f"bzImage is truncated: its header announces a kernel of {paragraphs * 16} bytes after the "
                        f"setup area, the file holds {len(image) - setup_size}")
    header_end = min(zp.HDR_HEADER + image[zp.HDR_JUMP + 1], zp.BP_HDR_END, setup_size)
    return SetupHeader(
        setup_size=setup_size,
        version=version,
        xloadflags=xloadflags,
        relocatable=bool(zp.get(image, zp.HDR_RELOCATABLE_KERNEL, "B")),
        kernel_alignment=zp.get(image, zp.HDR_KERNEL_ALIGNMENT, "I"),
        pref_address=zp.get(image, zp.HDR_PREF_ADDRESS, "Q"),
        init_size=zp.get(image, zp.HDR_INIT_SIZE, "I"),
        cmdline_size=zp.get(image, zp.HDR_CMDLINE_SIZE, "I"),
        initrd_addr_max=zp.get(image, zp.HDR_INITRD_ADDR_MAX, "I") or INITRD_ADDR_MAX_OLD,
        raw=bytes(image[zp.BP_HDR:header_end]),
    )


def runtime_range(hdr: SetupHeader, load: int, image_size: int) -> tuple[int, int]:
    """[start, end) the kernel occupies from loading through decompression (see the module docstring)."""
    if hdr.relocatable:
        run = max(align_up(load, hdr.kernel_alignment), hdr.pref_address)
    else:
        run = hdr.pref_address or load
    return min(load, run), max(load + image_size, run + hdr.init_size)


def load_bzimage(mem: GuestMemory, image: bytes, *, cmdline: str, initrd: bytes | None, load_addr: int | None,
                 entry: int | None) -> BootPlan:
    if entry is not None:
        raise BootError("entry: a bzImage is entered at its 64-bit entry (load address + 0x200); an explicit entry "
                        "is for flat images")
    hdr = parse_header(image)
    load = DEFAULT_LOAD_ADDR if load_addr is None else load_addr
    kernel = memoryview(image)[hdr.setup_size:]
    kernel_range = runtime_range(hdr, load, len(kernel))
    check_fits(mem, *kernel_range, "kernel image")
    raw_cmdline = encode_cmdline(cmdline, min(hdr.cmdline_size, CMDLINE_MAX - 1))
    placed = place_initrd(mem, initrd, above=kernel_range[1], limit=hdr.initrd_addr_max + 1)

    # everything is checked: only now is guest memory written
    mem.write(load, kernel)
    cmdline_addr = write_cmdline(mem, raw_cmdline)
    write_initrd(mem, initrd, placed)
    bp = zp.build_zero_page(mem, header=hdr.raw, cmdline_addr=cmdline_addr, cmdline_limit=hdr.cmdline_size,
                            initrd=placed)
    zp.put(bp, zp.HDR_LOADFLAGS, "B", bp[zp.HDR_LOADFLAGS] | zp.CAN_USE_HEAP)
    zp.put(bp, zp.HDR_HEAP_END_PTR, "H", HEAP_END - 0x200)
    zp.put(bp, zp.HDR_CODE32_START, "I", load)
    mem.write(ZERO_PAGE, bp)
    return BootPlan(mode="long64", entry=load + ENTRY_64_OFFSET, stack=BOOT_STACK, boot_params=ZERO_PAGE,
                    kernel_range=kernel_range, format="bzimage", initrd_range=placed)
