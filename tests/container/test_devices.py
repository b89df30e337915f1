"""Device rules: defaults, validation, v1 lines and the v2 BPF program (run for real in test_cgroups)."""

from __future__ import annotations

import pytest

from virtkit.container import devices
from virtkit.core.errors import InvalidArgument


def test_default_devices_are_the_basic_nodes():
    paths = {d["path"]: (d["major"], d["minor"]) for d in devices.DEFAULT_DEVICES}
    assert paths == {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/full": (1, 7), "/dev/random": (1, 8),
                     "/dev/urandom": (1, 9), "/dev/tty": (5, 0)}
    assert all(d["type"] == "c" and d["fileMode"] == 0o666 for d in devices.DEFAULT_DEVICES)


def test_effective_rules_start_with_deny_all():
    rules = devices.effective_rules([{"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rw"}])
    assert rules[0] == devices.DENY_ALL
    assert rules[-1] == {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rw"}


def test_v1_lines():
    rules = devices.effective_rules([{"allow": True, "type": "b", "major": 7, "minor": -1, "access": "mr"},
                                     {"allow": False, "type": "c", "major": 1, "minor": 3}])
    lines = devices.v1_lines(rules)
    assert lines[0] == ("devices.deny", "a")
    assert ("devices.allow", "c 136:* rwm") in lines
    assert lines[-2:] == [("devices.allow", "b 7:* rm"), ("devices.deny", "c 1:3 rwm")]
    assert devices.v1_lines([{"allow": True, "type": "a", "major": None, "minor": None,
                              "access": "rwm"}]) == [("devices.allow", "a")]


@pytest.mark.parametrize("rule, field", [
    ({"allow": 1}, "allow"), ({"allow": True, "type": "x"}, "type"),
    ({"allow": True, "major": -7}, "major"), ({"allow": True, "access": "q"}, "access"),
])
def test_rule_validation(rule, field):
    with pytest.raises(InvalidArgument, match=f"devices\\[0\\].{field}"):
        devices.effective_rules([rule])


def _run(program: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """A tiny interpreter for the instructions build_program emits, to check its logic anywhere."""
    import struct
    regs = [0] * 11
    ctx = {0: (access << 16) | dev_type, 4: major, 8: minor}
    pc = 0
    insns = [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]
    while True:
        code, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        pc += 1
        if code == 0x61:
            regs[dst] = ctx[off]
        elif code == 0x57:
            regs[dst] &= imm
        elif code == 0x77:
            regs[dst] >>= imm
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0x55:
            pc += off if regs[dst] != imm else 0
        elif code == 0x15:
            pc += off if regs[dst] == imm else 0
        elif code == 0x45:
            pc += off if regs[dst] & imm else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(hex(code))


R, W, M = devices.BPF_DEVCG_ACC_READ, devices.BPF_DEVCG_ACC_WRITE, devices.BPF_DEVCG_ACC_MKNOD
C, B = devices.BPF_DEVCG_DEV_CHAR, devices.BPF_DEVCG_DEV_BLOCK


def test_bpf_program_logic():
    prog = devices.build_program(devices.effective_rules([
        {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
        {"allow": False, "type": "c", "major": 1, "minor": 9, "access": "w"},
    ]))
    assert _run(prog, C, R | W, 1, 3) == 1          # /dev/null
    assert _run(prog, C, R, 136, 4) == 1            # a pts
    assert _run(prog, C, R, 10, 237) == 0           # loop-control: not allowed
    assert _run(prog, B, R, 7, 0) == 1              # loop0 read allowed by the user rule
    assert _run(prog, B, R | W, 7, 0) == 0          # but not write
    assert _run(prog, C, R, 1, 9) == 1              # urandom read still fine
    assert _run(prog, C, R | W, 1, 9) == 0          # the later deny-write wins


def test_bpf_allow_all_is_unconditional():
    prog = devices.build_program(devices.effective_rules([{"allow": True, "access": "rwm"}]))
    assert len(prog) == 8 * 8  # header + "r0 = 1; exit": nothing dead for the verifier to reject
    assert _run(prog, B, R | W | M, 8, 0) == 1
