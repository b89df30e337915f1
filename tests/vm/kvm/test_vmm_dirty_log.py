"""The dirty log names exactly the pages the guest wrote, and reading it starts a fresh log."""

from __future__ import annotations

import os

import pytest

from tests.vm.kvm.conftest import needs_kvm, wait_serial

pytestmark = [needs_kvm, pytest.mark.root]

# what dirty.S writes, with nothing else: no stack, no interrupts, page tables with Accessed/Dirty preset
FIRST = [0x300000, 0x305000, 0x3FF000]
SECOND = [0x301000, 0x302000, 0x303000, 0x305000, 0xFFF000]  # 0x302ffc+8 straddles two pages


@pytest.fixture
def serial_pipe():
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def hexes(pages: list[int]) -> list[str]:
    return [hex(p) for p in sorted(pages)]


def test_dirty_log_reports_exactly_the_pages_written(guest, serial_pipe, machines):
    read_end, write_end = serial_pipe
    machine = machines(guest("dirty"), dirty_log=True, serial_in=read_end)
    # loading the image and the boot tables are host writes: KVM logs only what the guest does
    assert hexes(machine.memory.dirty_pages()) == []
    machine.start()
    wait_serial(machine, b"1\n")
    assert hexes(machine.memory.dirty_pages()) == hexes(FIRST)
    # the guest now spins on the UART's status port, which writes nothing
    assert hexes(machine.memory.dirty_pages()) == []
    os.write(write_end, b"x")
    wait_serial(machine, b"2\n")
    assert hexes(machine.memory.dirty_pages()) == hexes(SECOND)
    assert machine.memory.read(0x302FFC, 8) == b"\x66" * 8
    assert machine.memory.read_u32(0xFFF000) == 0x77777777


def test_dirty_log_needs_enabling(guest, machines):
    from virtkit.vm.kvm.errors import VmmError

    machine = machines(guest("dirty"))
    with pytest.raises(VmmError, match="dirty"):
        machine.memory.dirty_pages()
