"""A guest's first contact with the native VMM: serial output, its exit status, the entry state, CPUID policy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.vm.kvm.conftest import finish, needs_kvm, run_vmm
from virtkit.vm.kvm.cpuid import FEATURES

pytestmark = [needs_kvm, pytest.mark.root]

HELLO = b"Hello from a virtkit guest\n"
HELLO_STATUS = 42  # hello.c returns it: proves the byte travels, 0 would prove nothing


def flat(kernel: Path, *extra: str) -> list[str]:
    return ["--kernel", str(kernel), "--kernel-format", "flat", "--memory", "16M", *extra]


def test_serial_reaches_stdout_and_exit_byte_is_the_status(guest):
    done = run_vmm(flat(guest("hello")))
    assert done.stdout.startswith(HELLO), done
    assert done.returncode == HELLO_STATUS, done
    assert done.stderr == b"", done


def test_serial_to_a_file(guest, tmp_path):
    log = tmp_path / "serial.log"
    done = run_vmm(flat(guest("hello"), "--serial", str(log)))
    assert done.returncode == HELLO_STATUS, done
    assert done.stdout == b""
    assert log.read_bytes().startswith(HELLO)


def test_library_reports_exit_port_and_serial(guest, machines):
    machine = machines(guest("hello"))
    machine.start()
    info = finish(machine)
    assert (info.reason, info.status) == ("exit-port", HELLO_STATUS), info
    assert machine.serial_output.startswith(HELLO)
    assert machine.stats()["exits"].get("IO", 0) >= len(HELLO)


def test_close_twice_is_harmless(guest, machines):
    machine = machines(guest("hello"))
    machine.start()
    finish(machine)
    machine.close()
    machine.close()  # and the fixture closes it a third time


def test_entry_state_is_the_flat_contract(guest, machines):
    machine = machines(guest("hello"))
    machine.start()
    finish(machine)
    line = re.search(rb"entry (.*)\n", machine.serial_output)
    assert line, machine.serial_output
    state = {key: int(value, 0) for key, value in (item.split("=") for item in line.group(1).decode().split())}
    # 64-bit code at 0x10, flat data at 0x18, long mode with paging, interrupts off
    assert (state["cs"], state["ds"], state["ss"]) == (0x10, 0x18, 0x18), state
    assert (state["lma"], state["pg"], state["pae"], state["if"]) == (1, 1, 1, 0), state
    assert 0x80000 < state["rsp"] <= 0x100000, f"RSP {state['rsp']:#x} is not just below the load address"
    # the IOAPIC at 0xfec00000 answered: the identity map covers the top of the 32-bit space (version 0x11)
    assert state["ioapic_version"] == 0x11, state


# -- CPUID ----------------------------------------------------------------------------------------------------------
VENDOR = "VirtkitTestV"
SIGNATURE = "VirtkitVMM!!"
REGISTERS = {(1, "ecx"): "leaf1_ecx", (1, "edx"): "leaf1_edx", (7, "ebx"): "leaf7_ebx", (7, "ecx"): "leaf7_ecx",
             (7, "edx"): "leaf7_edx", (0x80000001, "ecx"): "ext1_ecx", (0x80000001, "edx"): "ext1_edx"}
# Features KVM itself emulates or passes through from its supported table: any KVM lets a VMM hide them. (A PVM
# host forces most of the hardware's own leaf 1/7 bits into the guest, whatever the table says: see the next test.)
REMOVABLE = ["x2apic", "tsc_deadline_timer", "pcid", "arch_capabilities", "sse4a", "misalignsse", "topoext", "abm"]
# Features of the hardware itself (SSE4.2, AVX2, ...): a policy may remove them too, and the guest must see that.
HARDWARE = ["sse4_2", "movbe", "avx2", "bmi2"]


def cpuid_report(output: bytes) -> dict[str, str]:
    """vendor=..., hypervisor=..., leaf1_ecx=<hex> ... as printed by cpuid.c."""
    return dict(re.findall(r"^(\w+)=(.*)$", output.decode(), re.MULTILINE))


def feature_set(report: dict[str, str], name: str) -> bool:
    leaf, _sub, reg, bit = FEATURES[name]
    return bool(int(report[REGISTERS[(leaf, reg)]], 16) >> bit & 1)


def expected_registers(base: dict[str, str], removed: list[str]) -> dict[str, int]:
    """The baseline's feature registers with exactly the removed features' bits cleared."""
    expected = {register: int(base[register], 16) for register in REGISTERS.values()}
    for name in removed:
        leaf, _sub, reg, bit = FEATURES[name]
        expected[REGISTERS[(leaf, reg)]] &= ~(1 << bit)
    return expected


def run_cpuid(kernel: Path, policy: dict[str, object] | None, tmp_path: Path) -> dict[str, str]:
    extra: list[str] = []
    if policy is not None:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        extra = ["--cpuid-policy", str(path)]
    done = run_vmm(flat(kernel, *extra))
    assert done.returncode == 0, done
    return cpuid_report(done.stdout)


def assert_exact(got: dict[str, str], base: dict[str, str], removed: list[str]) -> None:
    for register, value in expected_registers(base, removed).items():
        assert int(got[register], 16) == value, \
            f"{register}: the guest sees {got[register]}, the policy asks for {value:08x} (removed {removed})"


def test_cpuid_is_exactly_what_the_policy_says(guest, tmp_path):
    kernel = guest("cpuid")
    base = run_cpuid(kernel, None, tmp_path)
    removed = [name for name in REMOVABLE if feature_set(base, name)]
    assert len(removed) >= 2, f"too few of {REMOVABLE} visible to the guest to test removal: {base}"
    got = run_cpuid(kernel, {"vendor": VENDOR, "hypervisor_signature": SIGNATURE, "remove_features": removed},
                    tmp_path)
    assert got["vendor"] == VENDOR
    assert got["hypervisor"] == SIGNATURE
    assert_exact(got, base, removed)
    assert int(got["leaf1_ecx"], 16) >> 31 & 1, "leaf 1 ECX bit 31 (hypervisor) must stay set"


def test_hardware_features_are_removed_or_the_policy_is_refused(guest, tmp_path):
    """The guest sees exactly the policy, or the VMM says it cannot: never a silently different CPU."""
    kernel = guest("cpuid")
    base = run_cpuid(kernel, None, tmp_path)
    removed = [name for name in HARDWARE if feature_set(base, name)]
    if not removed:
        pytest.skip(f"none of {HARDWARE} is visible to this host's guests")
    path = tmp_path / "hardware.json"
    path.write_text(json.dumps({"remove_features": removed}))
    done = run_vmm(flat(kernel, "--cpuid-policy", str(path)))
    if done.returncode == 0:
        assert_exact(cpuid_report(done.stdout), base, removed)
    else:
        message = done.stderr.decode()
        assert done.returncode == 2, done
        assert any(name in message for name in removed), f"the refusal names no feature: {message!r}"
        assert "Traceback" not in message


def test_cpuid_policy_through_the_library(guest, machines):
    machine = machines(guest("cpuid"), cpuid_policy={"vendor": VENDOR, "hypervisor_signature": SIGNATURE,
                                                     "remove_features": []})
    machine.start()
    info = finish(machine)
    assert info.status == 0, info
    got = cpuid_report(machine.serial_output)
    assert (got["vendor"], got["hypervisor"]) == (VENDOR, SIGNATURE)
