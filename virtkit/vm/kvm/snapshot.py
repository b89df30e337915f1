"""Snapshots: a paused machine's memory, vCPU, irqchip, PIT, clock and device state to a directory, and back."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.cpuid import CpuidPolicy
from virtkit.vm.kvm.errors import ConfigError, VmmError
from virtkit.vm.kvm.kvm import Vcpu

if TYPE_CHECKING:
    from virtkit.vm.kvm.machine import Machine

FORMAT = 1
STATE_FILE = "state.json"
_CHIPS = (abi.KVM_IRQCHIP_PIC_MASTER, abi.KVM_IRQCHIP_PIC_SLAVE, abi.KVM_IRQCHIP_IOAPIC)


def _b64(struct: abi.Struct) -> str:
    return base64.b64encode(bytes(struct)).decode()


def _unb64(cls: type[abi.Struct], text: str) -> Any:
    return cls.from_bytes(base64.b64decode(text))


def _readable_msrs(vcpu: Vcpu, candidates: list[int]) -> list[int]:
    readable = []
    for index in candidates:
        try:
            if vcpu.get_msrs([index]):
                readable.append(index)
        except OSError:
            continue
    return readable


def _save_vcpu(vcpu: Vcpu, msr_indices: list[int]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "regs": _b64(vcpu.get_regs()), "sregs": _b64(vcpu.get_sregs()), "fpu": _b64(vcpu.get_fpu()),
        "lapic": _b64(vcpu.get_lapic()), "mp_state": _b64(vcpu.get_mp_state()),
        "events": _b64(vcpu.get_vcpu_events()),
        "msrs": {str(k): v for k, v in vcpu.get_msrs(msr_indices).items()},
    }
    if vcpu.vm.kvm.check(abi.KVM_CAP_XSAVE):
        xsave = abi.Xsave()
        _vcpu_ioctl(vcpu, abi.KVM_GET_XSAVE, xsave)
        state["xsave"] = _b64(xsave)
    if vcpu.vm.kvm.check(abi.KVM_CAP_XCRS):
        xcrs = abi.Xcrs()
        _vcpu_ioctl(vcpu, abi.KVM_GET_XCRS, xcrs)
        state["xcrs"] = _b64(xcrs)
    return state


def _vcpu_ioctl(vcpu: Vcpu, request: int, struct: abi.Struct) -> None:
    from virtkit.vm.kvm.kvm import _ioctl

    _ioctl(vcpu.fd, request, struct, hex(request))


def _restore_vcpu(vcpu: Vcpu, state: dict[str, Any]) -> None:
    vcpu.set_sregs(_unb64(abi.Sregs, state["sregs"]))
    vcpu.set_regs(_unb64(abi.Regs, state["regs"]))
    vcpu.set_fpu(_unb64(abi.Fpu, state["fpu"]))
    if "xsave" in state:
        _vcpu_ioctl(vcpu, abi.KVM_SET_XSAVE, _unb64(abi.Xsave, state["xsave"]))
    if "xcrs" in state:
        _vcpu_ioctl(vcpu, abi.KVM_SET_XCRS, _unb64(abi.Xcrs, state["xcrs"]))
    vcpu.set_lapic(_unb64(abi.LapicState, state["lapic"]))
    # the TSC deadline needs the LAPIC in place first, so MSRs come after it
    vcpu.set_msrs({int(k): v for k, v in state["msrs"].items()})
    vcpu.set_mp_state(_unb64(abi.MpState, state["mp_state"]))
    vcpu.set_vcpu_events(_unb64(abi.VcpuEvents, state["events"]))


def save(machine: Machine, directory: Path) -> None:
    """Pause (if running), write everything, leave the machine paused; the caller resumes or stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    machine.pause()
    with machine.device_lock:
        msr_indices = _readable_msrs(machine.vcpus[0].vcpu, machine.kvm.msr_index_list())
        config = machine.config
        policy = machine.policy
        state: dict[str, Any] = {
            "format": FORMAT,
            "config": {
                "memory": config.memory, "cpus": config.cpus, "cmdline": machine.cmdline,
                "disks": [{"path": str(d.path), "readonly": d.readonly} for d in config.disks],
                "net_tap": config.net_tap, "net_mac": config.net_mac, "rng": config.rng, "console": config.console,
                "dirty_log": config.dirty_log, "cpuid_policy": policy.to_dict() if policy else None,
            },
            "memory": [],
            "vcpus": [_save_vcpu(v.vcpu, msr_indices) for v in machine.vcpus],
            "irqchip": [_b64(machine.vm.get_irqchip(chip)) for chip in _CHIPS],
            "pit": _b64(machine.vm.get_pit2()),
            "clock": machine.vm.get_clock().clock,
            "serial": machine.serial.save(),
            "virtio": [entry["device"].save() for entry in machine.virtio],
        }
        for index, region in enumerate(machine.memory.regions):
            name = f"memory-{index}.bin"
            with open(directory / name, "wb") as out:
                out.write(region.view)
            state["memory"].append({"file": name, "gpa": region.gpa, "size": region.size,
                                    "readonly": region.readonly})
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, directory / STATE_FILE)


def restore(cls: type[Machine], directory: Path, *, serial_out: int | None, serial_in: int | None) -> Machine:
    from virtkit.vm.kvm.machine import DiskConfig, MachineConfig

    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"snapshot {directory}: no {STATE_FILE} (not a snapshot directory)") from None
    except ValueError as exc:
        raise VmmError(f"snapshot {directory}: {STATE_FILE} is not valid JSON ({exc})") from None
    if state.get("format") != FORMAT:
        raise VmmError(f"snapshot {directory}: format {state.get('format')!r}, this VMM reads {FORMAT}")
    saved = state["config"]
    config = MachineConfig(
        kernel=None, memory=saved["memory"], cpus=saved["cpus"], cmdline="",
        disks=[DiskConfig(d["path"], d["readonly"]) for d in saved["disks"]],
        net_tap=saved["net_tap"], net_mac=saved["net_mac"], rng=saved["rng"], console=saved.get("console", False),
        dirty_log=saved["dirty_log"],
        cpuid_policy=CpuidPolicy.from_dict(saved["cpuid_policy"]) if saved["cpuid_policy"] else None,
        serial_out=serial_out, serial_in=serial_in,
    )
    machine = cls(config, _restoring=True)
    try:
        regions = machine.memory.regions
        if [(r["gpa"], r["size"]) for r in state["memory"]] != [(r.gpa, r.size) for r in regions]:
            raise VmmError(f"snapshot {directory}: memory layout does not match its configuration")
        for saved_region, region in zip(state["memory"], regions, strict=True):
            path = directory / saved_region["file"]
            if path.stat().st_size != region.size:
                raise VmmError(f"snapshot {directory}: {saved_region['file']} is not {region.size} bytes")
            with open(path, "rb") as src:
                if src.readinto(region.view) != region.size:
                    raise VmmError(f"snapshot {directory}: short read of {saved_region['file']}")
        for text in state["irqchip"]:
            machine.vm.set_irqchip(_unb64(abi.Irqchip, text))
        machine.vm.set_pit2(_unb64(abi.PitState2, state["pit"]))
        machine.vm.set_clock(abi.ClockData(clock=state["clock"]))
        for vcpu_thread, vcpu_state in zip(machine.vcpus, state["vcpus"], strict=True):
            _restore_vcpu(vcpu_thread.vcpu, vcpu_state)
        machine.serial.restore(state["serial"])
        for entry, device_state in zip(machine.virtio, state["virtio"], strict=True):
            entry["device"].restore(device_state)
            if device_state.get("interrupt_status"):
                # an interrupt the guest had not yet acknowledged: raise it again (a spurious one is harmless)
                os.eventfd_write(entry["irq_fd"], 1)
        machine.cmdline = saved["cmdline"]
    except BaseException:
        machine.close()
        raise
    return machine
