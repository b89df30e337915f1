"""CPUID policy and legacy device models, host side: what a guest would read back, and bad policies refused."""

from __future__ import annotations

import json

import pytest

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.bus import Bus
from virtkit.vm.kvm.cpuid import FEATURES, CpuidPolicy, guest_cpuid
from virtkit.vm.kvm.devices.legacy import I8042, ExitPort
from virtkit.vm.kvm.devices.serial import Serial
from virtkit.vm.kvm.errors import ConfigError


def _entry(function: int, index: int = 0, **regs: int) -> abi.CpuidEntry2:
    return abi.CpuidEntry2(function=function, index=index, **regs)


def _supported() -> list[abi.CpuidEntry2]:
    # a host that has everything on in leaves 1 and 7, a KVM hypervisor leaf
    return [_entry(0, eax=0xD, ebx=0x756E6547, edx=0x49656E69, ecx=0x6C65746E),
            _entry(1, eax=0x806F8, ebx=0x00010800, ecx=0xFFFFFFFF, edx=0xFFFFFFFF),
            _entry(7, 0, ebx=0xFFFFFFFF, ecx=0xFFFFFFFF, edx=0xFFFFFFFF),
            _entry(0x40000000, eax=0x40000001, ebx=0x4B4D564B, ecx=0x564B4D56, edx=0x4D)]


def _text(*regs: int) -> str:
    return b"".join(r.to_bytes(4, "little") for r in regs).decode()


def _find(entries: list[abi.CpuidEntry2], function: int, index: int = 0) -> abi.CpuidEntry2:
    return next(e for e in entries if e.function == function and e.index == index)


def test_policy_sets_vendor_signature_and_removes_exactly_the_named_features() -> None:
    policy = CpuidPolicy.from_dict({"vendor": "VirtkitTestV", "hypervisor_signature": "VirtkitVMM!!",
                                    "remove_features": ["avx2", "sse4_2", "x2apic", "rdtscp"]})
    entries = guest_cpuid(_supported() + [_entry(0x80000001, edx=0xFFFFFFFF)], policy, cpu_index=0, cpu_count=1)
    leaf0, hv = _find(entries, 0), _find(entries, 0x40000000)
    assert _text(leaf0.ebx, leaf0.edx, leaf0.ecx) == "VirtkitTestV"
    assert _text(hv.ebx, hv.ecx, hv.edx) == "VirtkitVMM!!"
    leaf1, leaf7 = _find(entries, 1), _find(entries, 7)
    assert leaf1.ecx == 0xFFFFFFFF & ~(1 << 20) & ~(1 << 21)    # sse4_2, x2apic gone; hypervisor bit kept
    assert leaf7.ebx == 0xFFFFFFFF & ~(1 << 5)                  # avx2
    assert _find(entries, 0x80000001).edx == 0xFFFFFFFF & ~(1 << 27)


def test_topology_gives_each_vcpu_its_apic_id() -> None:
    entries = guest_cpuid(_supported(), None, cpu_index=2, cpu_count=4)
    leaf1 = _find(entries, 1)
    assert leaf1.ebx >> 24 == 2 and (leaf1.ebx >> 16) & 0xFF == 4
    assert leaf1.edx & (1 << 28)


@pytest.mark.parametrize("policy, message", [
    ({"vendor": "short"}, "exactly 12"),
    ({"hypervisor_signature": "x" * 13}, "exactly 12"),
    ({"remove_features": ["warp_drive"]}, "unknown feature 'warp_drive'"),
    ({"remove_features": ["lm"]}, "cannot be removed"),
    ({"vendors": "GenuineIntel"}, "unknown key"),
])
def test_bad_policies_are_refused_by_name(policy: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CpuidPolicy.from_dict(policy)


def test_policy_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        CpuidPolicy.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        CpuidPolicy.from_file(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"vendor": "AuthenticAMD"}))
    assert CpuidPolicy.from_file(good).vendor == "AuthenticAMD"


def test_feature_table_matches_proc_cpuinfo_names() -> None:
    assert FEATURES["sse4_2"] == (1, 0, "ecx", 20)
    assert FEATURES["avx512f"] == (7, 0, "ebx", 16)
    assert FEATURES["lm"] == (0x80000001, 0, "edx", 29)


def test_serial_transmits_raises_and_clears_its_interrupt() -> None:
    out: list[bytes] = []
    levels: list[bool] = []
    uart = Serial(out.append, levels.append)
    bus = Bus("io")
    bus.register(0x3F8, 8, uart)
    for ch in b"hi":
        bus.write(0x3F8, 1, ch)
    assert b"".join(out) == b"hi"
    assert bus.read(0x3F8 + 5, 1) & 0x20                       # THR empty
    bus.write(0x3F8 + 1, 1, 0x1)                               # enable RX interrupts
    uart.feed(b"k")
    assert levels[-1] is True and bus.read(0x3F8 + 2, 1) & 0x0F == 0x4
    assert bus.read(0x3F8, 1) == ord("k")
    bus.read(0x3F8 + 5, 1)
    assert levels[-1] is False
    state = uart.save()
    uart2 = Serial(out.append, levels.append)
    uart2.restore(state)
    assert uart2.ier == 1


def test_bus_routes_by_range_and_refuses_overlaps() -> None:
    stops: list[int] = []
    resets: list[bool] = []
    bus = Bus("io")
    bus.register(0xF4, 1, ExitPort(stops.append))
    bus.register(0x60, 5, I8042(lambda: resets.append(True)))
    with pytest.raises(ValueError, match="overlaps"):
        bus.register(0x62, 4, ExitPort(stops.append))
    bus.write(0xF4, 1, 0x1FF)
    bus.write(0x64, 1, 0xFE)
    assert stops == [0xFF] and resets == [True]
    assert bus.read(0x1234, 2) == 0xFFFF and bus.unhandled == 1
