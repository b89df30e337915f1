"""Interrupts into a halted guest: PIT through the IOAPIC and the PIC, the LAPIC timer, an irqfd, the UART."""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.vm.kvm.conftest import finish, needs_kvm, run_vmm, wait_serial

pytestmark = [needs_kvm, pytest.mark.root]

IRQFD_GSI = 9  # irqfd.c's default: a pin no device of this machine uses


@pytest.mark.parametrize(("mode", "source", "vector"), [
    (1, "pit-ioapic-pin2", 0x32),   # IRQ0 arrives on IOAPIC pin 2, as on a PC (the ISA IRQ0 override)
    (2, "pit-pic", 0x20),           # IRQ0 through the 8259 and LAPIC LINT0 in ExtINT mode
    (3, "lapic-timer", 0x40),       # the LAPIC's own one-shot timer
], ids=["pit-ioapic", "pit-pic", "lapic-timer"])
def test_timer_interrupt_wakes_hlt(guest, machines, mode, source, vector):
    machine = machines(guest("timer", MODE=mode))
    machine.start()
    info = finish(machine)
    output = machine.serial_output.decode()
    woke = re.search(r"woken by (\S+) vector=0x(\w+) halts=(\d+)", output)
    assert woke, f"{info}: {output!r}"
    assert (woke.group(1), int(woke.group(2), 16)) == (source, vector), output
    assert info.status == 0, info
    # one HLT, one wake-up: the interrupt ended the halt, nothing else did
    assert woke.group(3) == "1", output


def test_irqfd_wakes_the_guest(guest, machines):
    machine = machines(guest("irqfd", GSI=IRQFD_GSI))
    machine.start()
    wait_serial(machine, b"ready")
    fd = machine.irqfd(IRQFD_GSI)
    time.sleep(0.2)  # the guest is halted now and must stay so until the host fires
    assert b"woken" not in machine.serial_output
    assert machine.wait(0) is None
    os.eventfd_write(fd, 1)
    info = finish(machine, 10)
    assert (info.reason, info.status) == ("exit-port", 0), (info, machine.serial_output)
    assert f"woken by gsi={IRQFD_GSI} vector=0x39 count=1 halts=1".encode() in machine.serial_output


@pytest.fixture
def serial_pipe():
    """(read end for the machine's serial_in, write end for the test); closed after the machine (fixture order)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_serial_input_interrupt_through_the_library(guest, serial_pipe, machines):
    read_end, write_end = serial_pipe
    machine = machines(guest("serial_echo"), serial_in=read_end)
    machine.start()
    wait_serial(machine, b"ready\n")
    os.write(write_end, b"ping from the host\n")
    info = finish(machine)
    assert info.status == 0, info
    assert b"echo: ping from the host\n" in machine.serial_output


def test_serial_input_from_stdin_of_the_cli(guest):
    kernel = guest("serial_echo")
    read_end, write_end = os.pipe()
    os.write(write_end, b"typed\n")
    os.close(write_end)
    try:
        done = run_vmm(["--kernel", str(kernel), "--kernel-format", "flat", "--memory", "16M"], stdin=read_end)
    finally:
        os.close(read_end)
    assert done.returncode == 0, done
    assert done.stdout == b"ready\necho: typed\n", done
