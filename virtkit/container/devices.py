"""Device access policy: the default /dev nodes, OCI device-rule validation, v1 devices files, v2 BPF.

Rules are OCI linux.resources.devices entries: {"allow", "type", "major", "minor", "access"}.
They are evaluated in order and the last matching rule wins (as the v1 devices files do when
written in order); virtkit always puts "deny all" and DEFAULT_ALLOW_RULES before the user's rules.
"""

from __future__ import annotations

import errno
import os
import struct

from virtkit.core.errors import InvalidArgument, SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

_F = "linux.resources.devices"


def _node(path: str, major: int, minor: int, mode: int = 0o666) -> dict:
    return {"path": path, "type": "c", "major": major, "minor": minor, "fileMode": mode, "uid": 0, "gid": 0}


# The nodes the runtime creates in the container's /dev (OCI linux.devices form).
DEFAULT_DEVICES: list[dict] = [
    _node("/dev/null", 1, 3),
    _node("/dev/zero", 1, 5),
    _node("/dev/full", 1, 7),
    _node("/dev/random", 1, 8),
    _node("/dev/urandom", 1, 9),
    _node("/dev/tty", 5, 0),
]


def _allow(major: int, minor: int | None) -> dict:
    return {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}


# What a container may open besides the nodes it was explicitly given; no mknod wildcard,
# because virtkit's default is "no device nodes" (CAP_MKNOD is dropped too).
DEFAULT_ALLOW_RULES: list[dict] = [
    _allow(1, 3), _allow(1, 5), _allow(1, 7), _allow(1, 8), _allow(1, 9),  # null zero full random urandom
    _allow(5, 0), _allow(5, 1), _allow(5, 2),  # tty console ptmx
    _allow(136, None),  # /dev/pts/*
]

DENY_ALL: dict = {"allow": False, "type": "a", "major": None, "minor": None, "access": "rwm"}


def validate_rule(rule: object, index: int) -> dict:
    """Return the rule in canonical form (wildcards as None) or raise InvalidArgument."""
    name = f"{_F}[{index}]"
    if not isinstance(rule, dict):
        raise InvalidArgument(f"{name}: must be an object")
    allow = rule.get("allow")
    if not isinstance(allow, bool):
        raise InvalidArgument(f"{name}.allow: must be true or false (got {allow!r})")
    dtype = rule.get("type") or "a"
    if dtype not in ("a", "b", "c"):
        raise InvalidArgument(f"{name}.type: must be 'a', 'b' or 'c' (got {dtype!r})")
    numbers: dict[str, int | None] = {}
    for key in ("major", "minor"):
        value = rule.get(key)
        if value is None or value == -1:
            numbers[key] = None
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << 32):
            raise InvalidArgument(f"{name}.{key}: must be a device number >= 0 or -1 for any (got {value!r})")
        else:
            numbers[key] = value
    access = rule.get("access") or "rwm"
    if not isinstance(access, str) or not access or set(access) - set("rwm"):
        raise InvalidArgument(f"{name}.access: must be made of r, w, m (got {access!r})")
    access = "".join(c for c in "rwm" if c in access)
    return {"allow": allow, "type": dtype, "major": numbers["major"], "minor": numbers["minor"], "access": access}


def effective_rules(user_rules: list | None) -> list[dict]:
    """deny all, then the default allow set, then the user's rules (validated)."""
    if user_rules is not None and not isinstance(user_rules, list):
        raise InvalidArgument(f"{_F}: must be a list")
    rules = [DENY_ALL] + [validate_rule(r, -1) for r in DEFAULT_ALLOW_RULES]
    rules += [validate_rule(r, i) for i, r in enumerate(user_rules or [])]
    return rules


def _is_wildcard(rule: dict) -> bool:
    return rule["type"] == "a" and rule["major"] is None and rule["minor"] is None and rule["access"] == "rwm"


def v1_lines(rules: list[dict]) -> list[tuple[str, str]]:
    """The (file, line) writes for a v1 devices cgroup, in order."""
    out: list[tuple[str, str]] = []
    for rule in rules:
        target = "devices.allow" if rule["allow"] else "devices.deny"
        if rule["type"] == "a":
            if _is_wildcard(rule):
                out.append((target, "a"))
                continue
            # v1 has no "any type" with numbers: spell it for both kinds.
            kinds = ["c", "b"]
        else:
            kinds = [rule["type"]]
        major = "*" if rule["major"] is None else str(rule["major"])
        minor = "*" if rule["minor"] is None else str(rule["minor"])
        for kind in kinds:
            out.append((target, f"{kind} {major}:{minor} {rule['access']}"))
    return out


# --- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program -----------------------------------------
# Names follow include/uapi/linux/bpf.h.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
_SYS_bpf = 321  # x86_64

_LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K
_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_EXIT = 0x95  # BPF_JMP | BPF_EXIT


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _access_mask(access: str) -> int:
    return ((BPF_DEVCG_ACC_READ if "r" in access else 0) | (BPF_DEVCG_ACC_WRITE if "w" in access else 0)
            | (BPF_DEVCG_ACC_MKNOD if "m" in access else 0))


def build_program(rules: list[dict]) -> bytes:
    """Compile rules to BPF: registers r2=type r3=access r4=major r5=minor; last matching rule decides.

    An allow rule matches when every requested access bit is in the rule; a deny rule when any is.
    """
    prog = [
        _insn(_LDX_W, 2, 1, 0), _insn(_AND_K, 2, imm=0xFFFF),
        _insn(_LDX_W, 3, 1, 0), _insn(_RSH_K, 3, imm=16),
        _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8),
    ]
    for rule in reversed(rules):
        body: list[tuple[int, int, int, int, bool]] = []  # (code, dst, src, imm, is_jump_to_next)
        if rule["type"] != "a":
            dev = BPF_DEVCG_DEV_CHAR if rule["type"] == "c" else BPF_DEVCG_DEV_BLOCK
            body.append((_JNE_K, 2, 0, dev, True))
        mask = _access_mask(rule["access"])
        if mask != 7:
            if rule["allow"]:
                body.append((_JSET_K, 3, 0, (~mask) & 7, True))
            else:
                body.append((_MOV_X, 1, 3, 0, False))
                body.append((_AND_K, 1, 0, mask, False))
                body.append((_JEQ_K, 1, 0, 0, True))
        if rule["major"] is not None:
            body.append((_JNE_K, 4, 0, rule["major"], True))
        if rule["minor"] is not None:
            body.append((_JNE_K, 5, 0, rule["minor"], True))
        n = len(body) + 2  # + "r0 = verdict" + exit
        for i, (code, dst, src, imm, jump) in enumerate(body):
            prog.append(_insn(code, dst, src, n - (i + 1) if jump else 0, imm))
        prog.append(_insn(_MOV_K, 0, imm=1 if rule["allow"] else 0))
        prog.append(_insn(_EXIT))
        if not body:
            # An unconditional rule decides everything left; the verifier rejects dead code after it.
            return b"".join(prog)
    prog += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(prog)


_libc: ctypes.CDLL | None = None


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    import ctypes  # here: only cgroup v2 hosts load device programs (ctypes costs ~2 ms of a runtime start)

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    res = _libc.syscall(ctypes.c_long(_SYS_bpf), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _attached_ids(cgroup_fd: int) -> list[int]:
    import ctypes

    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def attach_v2(cgroup_dir: str, rules: list[dict]) -> None:
    """Load the rules as a device program and make it the only one on `cgroup_dir`."""
    import ctypes

    code = build_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("16s", attr, 48, b"virtkit_dev")
    try:
        prog_fd = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip()
        raise SystemFailure(f"devices: loading the BPF device program failed: {exc.strerror} {detail}") from exc
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(prog_fd)
        raise SystemFailure(f"devices: cannot open {cgroup_dir}: {exc.strerror}") from exc
    try:
        old = _attached_ids(cg_fd)
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIII", attr, 0, cg_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attr)
        # Programs from an earlier apply() would AND with the new one: replace, don't stack.
        for prog_id in old:
            _detach_id(cg_fd, prog_id)
    except OSError as exc:
        raise SystemFailure(f"devices: attaching the BPF device program to {cgroup_dir} failed: "
                            f"{exc.strerror}") from exc
    finally:
        os.close(cg_fd)
        os.close(prog_fd)


def _detach_id(cg_fd: int, prog_id: int) -> None:
    import ctypes

    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<I", attr, 0, prog_id)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    try:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<III", attr, 0, cg_fd, fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    finally:
        os.close(fd)


def attached_count(cgroup_dir: str) -> int:
    """How many device programs are attached directly to `cgroup_dir` (for checks and tests)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return len(_attached_ids(fd))
    finally:
        os.close(fd)
