"""Loading a Linux bzImage by the x86 boot protocol's 64-bit entry (Documentation/arch/x86/boot.rst).

The real-mode setup code is never run: the protected-mode kernel is copied to the load address (1 MiB unless the
caller says otherwise), boot_params is built at ZERO_PAGE from the image's setup header, and the vCPU starts in
long mode at load address + 0x200 with RSI = ZERO_PAGE.

Why 1 MiB and not pref_address: the 64-bit entry of the compressed kernel is position independent and itself
moves the kernel to where it will run -- max(load address aligned up to kernel_alignment, pref_address) for a
relocatable kernel, pref_address for any other -- and needs init_size bytes there. So the image can sit at 1 MiB,
and what must fit in guest RAM is the union of the image and that runtime footprint (kernel_range).
"""

from __future__ import annotations

from dataclasses import dataclass

from virtkit.vm.kvm.boot.common import BOOT_STACK, BootPlan, align_up, check_fits, encode_cmdline, place_initrd, \
    write_cmdline, write_initrd
from virtkit.vm.kvm.boot.zeropage import BP_HDR, BP_HDR_END, CAN_USE_HEAP, HDR_CMDLINE_SIZE, HDR_CODE32_START, \
    HDR_END, HDR_HEADER, HDR_HEAP_END_PTR, HDR_INIT_SIZE, HDR_INITRD_ADDR_MAX, HDR_JUMP, HDR_KERNEL_ALIGNMENT, \
    HDR_LOADFLAGS, HDR_MAGIC, HDR_PREF_ADDRESS, HDR_RELOCATABLE_KERNEL, HDR_SETUP_SECTS, HDR_SYSSIZE, \
    HDR_VERSION, HDR_XLOADFLAGS, LOADED_HIGH, XLF_KERNEL_64, build_zero_page, get, put
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
    if len(image) < HDR_END:
        raise BootError(f"kernel image is too small for a bzImage: {len(image)} bytes, the setup header alone "
                        f"ends at {HDR_END:#x}")
    if image[HDR_HEADER:HDR_HEADER + 4] != HDR_MAGIC:
        raise BootError(f"not a bzImage: no 'HdrS' signature at {HDR_HEADER:#x}")
    version = get(image, HDR_VERSION, "H")
    if version < MIN_VERSION:
        raise BootError(f"bzImage boot protocol {_version(version)} is too old: virtkit needs "
                        f"{_version(MIN_VERSION)} or later")
    if version < XLOADFLAGS_VERSION:
        raise BootError(f"bzImage boot protocol {_version(version)} cannot declare a 64-bit entry (xloadflags "
                        f"came with {_version(XLOADFLAGS_VERSION)}, Linux 3.8): virtkit enters kernels in 64-bit mode")
    xloadflags = get(image, HDR_XLOADFLAGS, "H")
    if not xloadflags & XLF_KERNEL_64:
        raise BootError("bzImage has no 64-bit entry (xloadflags XLF_KERNEL_64 is clear): a 32-bit kernel "
                        "cannot be booted here")
    if not get(image, HDR_LOADFLAGS, "B") & LOADED_HIGH:
        raise BootError("image is a zImage (loadflags LOADED_HIGH clear): only bzImages, loaded at 1 MiB, are "
                        "supported")
    setup_sects = get(image, HDR_SETUP_SECTS, "B") or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR
    if len(image) <= setup_size:
        raise BootError(f"bzImage is truncated: its setup area is {setup_size} bytes ({setup_sects} setup sectors) "
                        f"but the file has only {len(image)}")
    # syssize counts the protected-mode kernel in 16-byte paragraphs: fewer bytes than that means a cut-off file
    kernel_size = get(image, HDR_SYSSIZE, "I") * 16
    if len(image) - setup_size < kernel_size:
        raise BootError(f"bzImage is truncated: its header announces a {kernel_size}-byte kernel after the setup "
                        f"area, the file holds {len(image) - setup_size}")
    header_end = min(HDR_HEADER + image[HDR_JUMP + 1], BP_HDR_END, setup_size)
    return SetupHeader(
        setup_size=setup_size,
        version=version,
        xloadflags=xloadflags,
        relocatable=bool(get(image, HDR_RELOCATABLE_KERNEL, "B")),
        kernel_alignment=get(image, HDR_KERNEL_ALIGNMENT, "I"),
        pref_address=get(image, HDR_PREF_ADDRESS, "Q"),
        init_size=get(image, HDR_INIT_SIZE, "I"),
        cmdline_size=get(image, HDR_CMDLINE_SIZE, "I"),
        initrd_addr_max=get(image, HDR_INITRD_ADDR_MAX, "I") or INITRD_ADDR_MAX_OLD,
        raw=bytes(image[BP_HDR:header_end]),
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
    bp = build_zero_page(mem, header=hdr.raw, cmdline_addr=cmdline_addr, cmdline_limit=hdr.cmdline_size,
                         initrd=placed)
    put(bp, HDR_LOADFLAGS, "B", bp[HDR_LOADFLAGS] | CAN_USE_HEAP)
    put(bp, HDR_HEAP_END_PTR, "H", HEAP_END - 0x200)
    put(bp, HDR_CODE32_START, "I", load)
    mem.write(ZERO_PAGE, bp)
    return BootPlan(mode="long64", entry=load + ENTRY_64_OFFSET, stack=BOOT_STACK, boot_params=ZERO_PAGE,
                    kernel_range=kernel_range, format="bzimage", initrd_range=placed)
