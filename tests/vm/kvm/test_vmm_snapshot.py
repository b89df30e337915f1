"""Snapshot a running guest, restore it in a new virtkit-vmm process: its counter continues exactly where it was."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from tests.vm.kvm.conftest import GUEST_TIMEOUT, finish, needs_kvm, run_vmm, wait_serial
from tests.vm.kvm.guests.build import symbol_address

pytestmark = [needs_kvm, pytest.mark.root, pytest.mark.slow]

LIMIT = 60           # ticks the guest counts to before it exits 0
TICK_NS = 10_000_000  # a LAPIC timer tick every 10 ms: the run lasts long enough to be caught in the middle
PAUSE_AT = b"count=5 "


def expected_output(limit: int = LIMIT) -> bytes:
    """What counter.c prints from start to end, in one uninterrupted run."""
    lines = [f"count={n} sum={n * (n + 1) // 2}\n" for n in range(1, limit + 1)]
    return ("".join(lines) + "done\n").encode()


def line_number_at(position: int) -> int:
    """Which count the full output is printing at byte `position` (1-based)."""
    return expected_output()[:position].count(b"\n") + 1


def assert_continues(before: bytes, after: bytes) -> None:
    """The first run's output and the restored run's together are one uninterrupted run's output."""
    assert len(before) > 0 and len(after) > 0, (before, after)
    assert before + after == expected_output(), \
        f"the restored guest did not continue where it stopped:\nbefore ...{before[-80:]!r}\nafter {after[:80]!r}..."


def test_snapshot_then_restore_in_a_new_process(guest, machines, tmp_path):
    kernel = guest("counter", LIMIT=LIMIT, TICK_NS=TICK_NS)
    machine = machines(kernel)
    machine.start()
    wait_serial(machine, PAUSE_AT)
    machine.pause()
    before = machine.serial_output
    snapshot = tmp_path / "snap"
    machine.save_snapshot(snapshot)
    # the counter in guest RAM is the line being printed, or one ahead when the pause fell between the increment
    # and its line
    counter = machine.memory.read_u64(symbol_address(kernel, "counter"))
    printing = line_number_at(len(before))
    allowed = (printing - 1, printing) if before.endswith(b"\n") else (printing,)
    assert counter in allowed, f"counter {counter} in guest RAM, output ends {before[-40:]!r}"

    done = run_vmm(["--restore-from", str(snapshot)])
    assert done.returncode == 0, done
    assert_continues(before, done.stdout)


def read_until(proc, needle: bytes, timeout: float) -> bytes:
    """Read the process's stdout until `needle` shows (or fail), returning everything read."""
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} from virtkit-vmm within {timeout} s: {got!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"virtkit-vmm ended before {needle!r}: {got!r} rc={proc.wait()}"
            got += chunk
    return got


def test_cli_snapshot_on_sigusr2_then_restore(guest, vmm_process, tmp_path):
    kernel = guest("counter", LIMIT=LIMIT, TICK_NS=TICK_NS)
    snapshot = tmp_path / "snap"
    first = vmm_process(["--kernel", str(kernel), "--kernel-format", "flat", "--memory", "16M",
                         "--snapshot-to", str(snapshot)])
    before = read_until(first, PAUSE_AT, GUEST_TIMEOUT)
    first.send_signal(signal.SIGUSR2)
    rest, err = first.communicate(timeout=GUEST_TIMEOUT)
    assert first.returncode == 0, (first.returncode, err)
    before += rest
    assert not before.endswith(b"done\n"), "the guest finished before the snapshot: raise LIMIT"

    done = run_vmm(["--restore-from", str(snapshot)])
    assert done.returncode == 0, done
    assert_continues(before, done.stdout)


def test_restored_machine_in_process_runs_to_the_end(guest, machines, tmp_path):
    from virtkit.vm.kvm.machine import Machine

    machine = machines(guest("counter", LIMIT=LIMIT, TICK_NS=TICK_NS))
    machine.start()
    wait_serial(machine, PAUSE_AT)
    machine.save_snapshot(tmp_path / "snap")  # pauses the machine itself
    before = machine.serial_output
    restored = Machine.restore(tmp_path / "snap")
    try:
        restored.start()
        info = finish(restored)
        assert (info.reason, info.status) == ("exit-port", 0), info
        assert_continues(before, restored.serial_output)
    finally:
        restored.close()
