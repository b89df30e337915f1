"""Fixtures of the native-VMM tests: built guests, machines that always close, the CLI, TAPs, and leak checks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm.kvm.guests.build import build

KVM_DEVICE = "/dev/kvm"
needs_kvm = pytest.mark.skipif(not os.path.exists(KVM_DEVICE),
                               reason=f"{KVM_DEVICE} is absent: the native VMM needs KVM (load kvm_intel or kvm_amd)")
# under PVM the guests run in KVM's instruction emulator (~1M instructions/s): generous, never tight, timeouts
GUEST_TIMEOUT = 30.0
VMM_MARKERS = (b"virtkit.vm.kvm.cli", b"virtkit-vmm")
TAP_PREFIX = "vkt"


def vmm_command() -> list[str]:
    """`virtkit-vmm` as installed beside this interpreter, else the module (same code, no console script)."""
    script = Path(sys.executable).parent / "virtkit-vmm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "virtkit.vm.kvm.cli"]


def vmm_processes() -> set[int]:
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if any(marker in cmd for marker in VMM_MARKERS):
            pids.add(int(entry))
    return pids


def tap_links() -> set[str]:
    return {name for name in os.listdir("/sys/class/net") if name.startswith(TAP_PREFIX)}


@pytest.fixture(scope="session", autouse=True)
def no_vmm_leaks() -> Iterator[None]:
    """The run fails if it leaves a virtkit-vmm process or a test TAP behind."""
    before = (vmm_processes(), tap_links())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = (vmm_processes() - before[0], tap_links() - before[1])
        if not any(leaked) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(leaked), f"the VMM tests left behind processes {sorted(leaked[0])}, TAPs {sorted(leaked[1])}"


# -- guests ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def guest() -> Callable[..., Path]:
    """guest(name, **defines) -> the built image (cached across runs by a hash of its sources)."""

    def make(name: str, fmt: str = "flat", **defines: Any) -> Path:
        return build(name, fmt=fmt, defines=defines)

    return make


# -- machines through the library -----------------------------------------------------------------------------------
@pytest.fixture
def machines() -> Iterator[Callable[..., Any]]:
    """machines(kernel, **MachineConfig keywords) -> a built Machine (flat, 16 MiB unless told); all closed after."""
    from virtkit.vm.kvm.machine import Machine, MachineConfig

    made: list[Any] = []

    def make(kernel: Path, **config: Any) -> Any:
        config.setdefault("kernel_format", "flat")
        config.setdefault("memory", 16 << 20)
        machine = Machine(MachineConfig(kernel=kernel, **config))
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.close()


def finish(machine: Any, timeout: float = GUEST_TIMEOUT) -> Any:
    """Wait for the guest to end; a guest still running at the timeout fails the test with its serial output."""
    info = machine.wait(timeout)
    assert info is not None, f"the guest did not finish in {timeout} s; serial so far: {machine.serial_output!r}"
    return info


def wait_serial(machine: Any, needle: bytes, timeout: float = GUEST_TIMEOUT) -> None:
    assert machine.wait_serial(needle, timeout), \
        f"no {needle!r} on the guest's serial within {timeout} s; got {machine.serial_output!r}"


# -- the command line -----------------------------------------------------------------------------------------------
def run_vmm(args: list[str], *, timeout: float = GUEST_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run virtkit-vmm to completion; on a timeout it is killed (never left behind) and the test fails."""
    proc = subprocess.Popen([*vmm_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"virtkit-vmm {' '.join(args)} did not finish in {timeout} s; stdout {out!r} stderr {err!r}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def vmm_process() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """vmm_process(args, **Popen keywords) -> a running virtkit-vmm; killed after the test if still running."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([*vmm_command(), *args], **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()


# -- networking -----------------------------------------------------------------------------------------------------
@pytest.fixture
def tap() -> Iterator[str]:
    """A fresh TAP (vkt + random hex), up, IPv6 off so the host sends no chatter on it; deleted afterwards."""
    from pyroute2 import IPRoute

    name = f"{TAP_PREFIX}{secrets.token_hex(4)}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        try:
            _quiet_ipv6(name)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, state="up")
            yield name
        finally:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)
    assert name not in tap_links(), f"TAP {name} survived its deletion"


def _quiet_ipv6(name: str) -> None:
    path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
    if path.exists():  # hosts without IPv6 have nothing to silence
        path.write_text("1")
