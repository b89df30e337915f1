"""The native VM engine through virtkit: `virtkit run --vm --engine native` with tiny flat guests on /dev/kvm.

The guests are raw x86-64 machine code written here (entered in long mode at 0x100000): this host's KVM is PVM
and emulates a guest at about a million instructions a second, so they stay small.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import client, name, vk, vk_home  # noqa: F401 - e2e fixtures, used by name
from virtkit.config import Home
from virtkit.core import options
from virtkit.core.errors import InvalidArgument
from virtkit.core.models import Instance
from virtkit.core.options import validate_create
from virtkit.vm.engines import VmEngines
from virtkit.vm.kvm.driver import NativeDriver
from virtkit.vm.qemu.driver import QemuDriver

needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (the native engine's VMM)")

MOV_DX_COM1 = bytes.fromhex("66BAF803")                          # mov dx, 0x3f8


def _print(text: bytes) -> bytes:
    return b"".join(b"\xb0" + bytes([c]) + b"\xee" for c in text)   # mov al, c; out dx, al


def exit_guest(text: bytes, status: int) -> bytes:
    """Print `text` on COM1, then end the VM with `status` through the exit port."""
    return MOV_DX_COM1 + _print(text) + b"\xb0" + bytes([status]) + b"\xe6\xf4" + b"\xf4"  # out 0xf4, al; hlt


def loop_guest(text: bytes = b".", spin: int = 100_000) -> bytes:
    """Forever: print `text`, then spin 2*spin instructions (~0.2 s at this host's emulated speed)."""
    body = MOV_DX_COM1 + _print(text) + b"\xb9" + struct.pack("<I", spin)   # mov ecx, spin
    body += b"\xff\xc9\x75\xfc"                                              # 1: dec ecx; jnz 1b
    return body + b"\xeb" + struct.pack("b", -(len(body) + 2))              # jmp back to the start


def _write(path: Path, code: bytes) -> str:
    path.write_bytes(code)
    return str(path)


def _listed(home: str) -> dict[str, dict]:
    return {i["name"]: i for i in json.loads(vk(home, "list", "--json").stdout)}


def _vmm_processes(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _wait(predicate, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- through the CLI, on the real /dev/kvm ------------------------------------------------------------------------
@needs_kvm
@pytest.mark.root
def test_flat_guest_prints_and_its_exit_port_byte_is_the_status(vk_home, client, name, tmp_path):  # noqa: F811
    guest = _write(tmp_path / "hello.bin", exit_guest(b"hello from a flat guest\n", 7))
    r = vk(vk_home, "run", "--vm", "--engine", "native", "--kernel", guest, "--kernel-format", "flat",
           "--name", name, "busybox")
    assert r.returncode == 7, r.stderr
    assert r.stdout == b"hello from a flat guest\n"
    logs = vk(vk_home, "logs", name)
    assert logs.returncode == 0 and logs.stdout == b"hello from a flat guest\n", logs
    ps = vk(vk_home, "ps", "-a").stdout.decode()
    assert any(line.startswith(name) and "stopped (7, exited)" in line for line in ps.splitlines()), ps
    inst = json.loads(vk(vk_home, "inspect", name).stdout)
    assert (inst["state"], inst["exit_code"], inst["exit_reason"]) == ("stopped", 7, "exited")
    assert inst["spec"]["engine"] == "native" and inst["spec"]["kernel_format"] == "flat"
    vm_dir = os.path.join(vk_home, "vms", inst["id"])
    assert os.path.isdir(vm_dir)
    assert vk(vk_home, "rm", name).returncode == 0
    assert not os.path.exists(vm_dir)


@needs_kvm
@pytest.mark.root
def test_running_guest_stats_pause_resume_stop_restart_kill_rm(vk_home, client, name, tmp_path):  # noqa: F811
    guest = _write(tmp_path / "loop.bin", loop_guest())
    r = vk(vk_home, "run", "-d", "--vm", "--engine", "native", "--kernel", guest, "--kernel-format", "flat",
           "--name", name, "busybox")
    assert r.returncode == 0, r.stderr
    inst = json.loads(vk(vk_home, "inspect", name).stdout)
    vm_dir = os.path.join(vk_home, "vms", inst["id"])
    sock = os.path.join(vk_home, "run", f"vmm-{inst['id'][:16]}.sock")
    assert _listed(vk_home)[name]["state"] == "running" and os.path.exists(sock)
    log_size = lambda: len(vk(vk_home, "logs", name).stdout)  # noqa: E731
    _wait(lambda: log_size() >= 3, what="the guest's dots")

    # stats: the VMM's exit counters and vCPU CPU time, and its process's figures
    stats = json.loads(vk(vk_home, "stats", "--json", name).stdout)
    assert stats["engine"] == "native" and stats["exits"].get("IO", 0) >= 3, stats
    assert stats["exits_total"] >= stats["exits"]["IO"]
    assert len(stats["vcpu_stats"]) == 1 and stats["vcpu_stats"][0]["cpu_time_s"] > 0, stats
    assert stats["memory_rss_bytes"] > 0 and stats["cpu_usage_ns"] > 0 and stats["memory_bytes"] == 256 << 20
    text = vk(vk_home, "stats", name).stdout.decode()
    for heading in ("CPU TIME", "VCPU", "EXIT REASON", "IO"):
        assert heading in text, text

    # pause: the vCPU stops (no output, no CPU time); resume: it goes on
    assert vk(vk_home, "pause", name).returncode == 0
    assert _listed(vk_home)[name]["state"] == "paused"
    time.sleep(0.3)
    paused_at = (log_size(), json.loads(vk(vk_home, "stats", "--json", name).stdout)["vcpu_stats"][0]["cpu_time_s"])
    time.sleep(1.0)
    still = (log_size(), json.loads(vk(vk_home, "stats", "--json", name).stdout)["vcpu_stats"][0]["cpu_time_s"])
    assert still[0] == paused_at[0] and still[1] - paused_at[1] < 0.05, (paused_at, still)
    assert vk(vk_home, "resume", name).returncode == 0
    assert _listed(vk_home)[name]["state"] == "running"
    _wait(lambda: log_size() > still[0], what="output after resume")

    # stop: SIGTERM to virtkit-vmm, at once
    t0 = time.monotonic()
    assert vk(vk_home, "stop", name).returncode == 0
    assert time.monotonic() - t0 < 5
    listed = _listed(vk_home)[name]
    assert (listed["state"], listed["exit_code"], listed["exit_reason"]) == ("stopped", 143, "stopped by SIGTERM")
    assert not _vmm_processes(vm_dir)

    # start again, then kill
    assert vk(vk_home, "start", name).returncode == 0
    assert _listed(vk_home)[name]["state"] == "running"
    _wait(lambda: log_size() >= 1, what="output of the second run")
    assert vk(vk_home, "kill", name).returncode == 0
    _wait(lambda: _listed(vk_home)[name]["state"] == "stopped", what="the kill")
    listed = _listed(vk_home)[name]
    assert (listed["exit_code"], listed["exit_reason"]) == (137, "killed by SIGKILL"), listed

    # rm: nothing of it is left
    assert vk(vk_home, "rm", name).returncode == 0
    assert name not in _listed(vk_home)
    assert not os.path.exists(vm_dir) and not os.path.exists(sock)
    assert not _vmm_processes(vm_dir)


@needs_kvm
@pytest.mark.root
def test_a_paused_native_vm_stops_and_rm_force_leaves_nothing(vk_home, client, name, tmp_path):  # noqa: F811
    guest = _write(tmp_path / "loop.bin", loop_guest())
    assert vk(vk_home, "run", "-d", "--vm", "--engine", "native", "--kernel", guest, "--kernel-format", "flat",
              "--name", name, "busybox").returncode == 0
    inst = json.loads(vk(vk_home, "inspect", name).stdout)
    vm_dir = os.path.join(vk_home, "vms", inst["id"])
    tap = inst["spec"]["net"]["tap"]
    assert _vmm_processes(vm_dir)
    assert vk(vk_home, "pause", name).returncode == 0
    assert vk(vk_home, "stop", name).returncode == 0
    listed = _listed(vk_home)[name]
    assert (listed["state"], listed["exit_code"]) == ("stopped", 143), listed
    assert vk(vk_home, "start", name).returncode == 0 and _vmm_processes(vm_dir)
    assert vk(vk_home, "rm", "-f", name).returncode == 0
    assert not os.path.exists(vm_dir) and not _vmm_processes(vm_dir)
    assert not os.path.exists(os.path.join(vk_home, "run", f"vmm-{inst['id'][:16]}.sock"))
    assert subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0, "TAP left behind"


@needs_kvm
@pytest.mark.root
def test_bad_input_is_a_usage_error_with_nothing_left(vk_home, client, name, tmp_path):  # noqa: F811
    flat = _write(tmp_path / "g.bin", exit_guest(b"x", 0))
    before = vk(vk_home, "list", "--json").stdout
    vms_before = set(os.listdir(os.path.join(vk_home, "vms"))) if os.path.isdir(os.path.join(vk_home, "vms")) \
        else set()
    cases = [
        (["--engine", "xen"], b"--engine"),
        (["--kernel", flat, "--kernel-format", "flat"], b"kernel_format: only for the native engine"),
        (["--engine", "native", "--kernel", str(tmp_path / "missing.bin"), "--kernel-format", "flat"],
         b"kernel: no such file"),
        (["--engine", "native", "--kernel", flat], b"format 'flat'"),                 # auto never guesses raw code
        (["--engine", "native", "--kernel", flat, "--kernel-format", "bzimage"], b"not a bzImage"),
        (["--engine", "native", "--kernel-format", "flat"], b"needs a kernel file"),
        (["--engine", "native", "--accel", "tcg", "--kernel", flat, "--kernel-format", "flat"], b"accel"),
    ]
    for args, message in cases:
        r = vk(vk_home, "run", "--vm", "--name", name, *args, "busybox")
        assert r.returncode == 2 and message in r.stderr, (args, r.returncode, r.stderr)
        assert b"Traceback" not in r.stderr
    r = vk(vk_home, "run", "--engine", "native", "--name", name, "busybox", "true")     # a container
    assert r.returncode == 2 and b"engine: only for VMs" in r.stderr, r.stderr
    with pytest.raises(InvalidArgument, match="engine: must be qemu or native"):
        client.create("busybox", type="vm", engine="xen", name=name)
    assert vk(vk_home, "list", "--json").stdout == before
    vms_after = set(os.listdir(os.path.join(vk_home, "vms"))) if os.path.isdir(os.path.join(vk_home, "vms")) \
        else set()
    assert vms_after == vms_before


# -- without a VM ------------------------------------------------------------------------------------------------
def test_native_needs_dev_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = str(tmp_path / "kvm")
    monkeypatch.setattr(options, "KVM_DEVICE", missing)
    with pytest.raises(InvalidArgument, match=f"engine: native needs {missing}"):
        validate_create({"image": "busybox", "type": "vm", "engine": "native"})
    spec = validate_create({"image": "busybox", "type": "vm"})          # qemu, the default, does not need it
    assert spec["engine"] == "qemu" and "kernel_format" not in spec


def test_engine_options_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    monkeypatch.setattr(options, "KVM_DEVICE", str(kvm))
    spec = validate_create({"image": "b", "type": "vm", "engine": "native", "kernel": "/k", "kernel_format": "flat"})
    assert (spec["engine"], spec["kernel_format"]) == ("native", "flat")
    assert validate_create({"image": "b", "type": "vm", "engine": "native"})["kernel_format"] == "auto"
    for req, message in (
        ({"engine": "hyperv"}, "engine: must be qemu or native"),
        ({"kernel_format": "flat", "kernel": "/k"}, "kernel_format: only for the native engine"),
        ({"engine": "native", "kernel_format": "coff", "kernel": "/k"}, "kernel_format: must be auto"),
        ({"engine": "native", "kernel_format": "bzimage"}, "needs a kernel file"),
        ({"engine": "native", "accel": "kvm"}, "accel: only for the qemu engine"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            validate_create({"image": "b", "type": "vm", **req})
    with pytest.raises(InvalidArgument, match="engine: only for VMs"):
        validate_create({"image": "b", "engine": "native"})


def test_the_vm_driver_hands_each_instance_to_its_engine(tmp_path: Path) -> None:
    engines = VmEngines(Home(str(tmp_path / "home")), None)

    def inst(spec: dict) -> Instance:
        return Instance(id="0" * 32, name="v", type="vm", state="created", image="busybox", spec=spec)

    assert isinstance(engines.engine(inst({"engine": "native"})), NativeDriver)
    assert isinstance(engines.engine(inst({"engine": "qemu"})), QemuDriver)
    assert isinstance(engines.engine(inst({})), QemuDriver)          # made before engines existed
    with pytest.raises(InvalidArgument, match="unknown VM engine"):
        engines.engine(inst({"engine": "xen"}))
    assert engines.status(inst({"engine": "native"})) == "stopped"  # no files: nothing runs
