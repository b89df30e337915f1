"""Two VMs at once cannot see each other's memory: each fills its RAM with a secret and finds only its own."""

from __future__ import annotations

import os
import re
import secrets

import pytest

from tests.vm.kvm.conftest import finish, needs_kvm, wait_serial

pytestmark = [needs_kvm, pytest.mark.root, pytest.mark.slow]

RAM = 4 << 20  # small: the guests scan all of it, and under PVM every iteration is emulated
MASK = (1 << 64) - 1


def inverted(value: int) -> str:
    # the guests are built with the complements, so neither secret ever appears in an image (isolation_scan.S)
    return hex(~value & MASK)


@pytest.fixture
def pipes():
    made = [os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK) for _ in range(2)]
    yield made
    for read_end, write_end in made:
        os.close(read_end)
        os.close(write_end)


def test_two_vms_cannot_see_each_others_memory(guest, pipes, machines):
    secret = [secrets.randbits(64) | 1 << 63, secrets.randbits(64) | 1 << 62]
    vms = []
    for me, other in ((0, 1), (1, 0)):
        kernel = guest("isolation", RAM_SIZE=RAM, INVERTED_OWN=inverted(secret[me]),
                       INVERTED_OTHER=inverted(secret[other]))
        vms.append(machines(kernel, memory=RAM, serial_in=pipes[me][0]))
    for vm in vms:
        vm.start()
    # both RAMs hold their secrets before either looks for the other's
    for vm in vms:
        wait_serial(vm, b"count=", 60)
        wait_serial(vm, b"\n", 60)
    for _read_end, write_end in pipes:
        os.write(write_end, b"g")
    for index, vm in enumerate(vms):
        info = finish(vm, 60)
        output = vm.serial_output.decode()
        filled = re.search(r"filled 0x(\w+)-0x(\w+) count=(\d+)", output)
        scanned = re.search(r"scanned own=(\d+) other=(\d+)", output)
        assert filled and scanned, output
        start, end = int(filled.group(1), 16), int(filled.group(2), 16)
        assert end == RAM and int(filled.group(3)) == (end - start) // 8, output
        assert scanned.group(2) == "0", f"VM {index} found the other VM's secret in its RAM: {output}"
        assert scanned.group(1) == filled.group(3), output
        assert (info.reason, info.status) == ("exit-port", 0), (info, output)

    # and from the host: each VM's memory holds its own secret where it wrote it, and never the other's
    for me, other in ((0, 1), (1, 0)):
        ram = vms[me].memory.read(0, RAM)
        mine, theirs = secret[me].to_bytes(8, "little"), secret[other].to_bytes(8, "little")
        assert ram.count(mine) == int(re.search(rb"count=(\d+)", vms[me].serial_output).group(1))
        assert theirs not in ram
