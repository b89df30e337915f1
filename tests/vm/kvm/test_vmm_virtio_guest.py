"""virtio-mmio driven by a guest driver: block reads and writes checked on the host file, a read-only disk,
frames through a TAP both ways, and malformed descriptor chains that must fail without harming the VMM."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.vm.kvm.conftest import finish, needs_kvm, run_vmm, wait_serial

pytestmark = [needs_kvm, pytest.mark.root]

SECTOR = 512
DISK_SECTORS = 64
VIRTIO_BLK_S_OK = 0


def sector0() -> bytes:
    text = b"virtkit test disk, sector 0. "
    return (text * (SECTOR // len(text) + 1))[:SECTOR]


def guest_sector1() -> bytes:
    """What virtio_blk.c writes to sector 1."""
    data = bytearray((i * 7 + 3) & 0xFF for i in range(SECTOR))
    data[:28] = b"written by the virtkit guest"
    return bytes(data)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(sector0() + b"\xee" * SECTOR * (DISK_SECTORS - 1))
    return path


def statuses(output: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"^(\w+) status=(\d+)$", output, re.MULTILINE)}


def flat(kernel, *extra: str) -> list[str]:
    return ["--kernel", str(kernel), "--kernel-format", "flat", "--memory", "16M", *extra]


# -- virtio-blk -----------------------------------------------------------------------------------------------------
def test_blk_guest_reads_and_writes_the_disk_file(guest, disk):
    done = run_vmm(flat(guest("virtio_blk"), "--disk", str(disk)))
    output = done.stdout.decode()
    assert done.returncode == 0, done
    assert f"capacity={DISK_SECTORS} ro=0" in output, output
    assert statuses(output) == {"read0": VIRTIO_BLK_S_OK, "write1": VIRTIO_BLK_S_OK, "flush": VIRTIO_BLK_S_OK,
                                "read1": VIRTIO_BLK_S_OK}, output
    assert f"sector0={sector0().hex()}\n" in output, "the guest read something else than sector 0"
    content = disk.read_bytes()
    assert content[SECTOR:2 * SECTOR] == guest_sector1(), "sector 1 on the host is not what the guest wrote"
    assert content[:SECTOR] == sector0() and content[2 * SECTOR:] == b"\xee" * SECTOR * (DISK_SECTORS - 2)
    assert f"sector1={guest_sector1()[:32].hex()}\n" in output, "the guest did not read back its own write"
    assert len(content) == DISK_SECTORS * SECTOR


def test_blk_read_only_disk_refuses_writes(guest, disk):
    before = disk.read_bytes()
    done = run_vmm(flat(guest("virtio_blk"), "--disk", f"{disk},ro"))
    output = done.stdout.decode()
    assert done.returncode == 0, done
    assert "ro=1" in output, "a read-only disk must offer VIRTIO_BLK_F_RO"
    got = statuses(output)
    assert got["read0"] == VIRTIO_BLK_S_OK, output
    assert got["write1"] in (1, 2), f"the write must fail with IOERR (1) or UNSUPP (2): {output}"
    assert f"sector0={sector0().hex()}\n" in output
    assert disk.read_bytes() == before, "the read-only disk file changed"


def test_blk_through_the_library_counts_interrupts(guest, disk, machines):
    from virtkit.vm.kvm.machine import DiskConfig

    machine = machines(guest("virtio_blk"), disks=[DiskConfig(disk)])
    machine.start()
    info = finish(machine)
    assert info.status == 0, (info, machine.serial_output)
    interrupts = int(re.search(rb"interrupts=(\d+)", machine.serial_output).group(1))
    # completions raise the device's GSI through its irqfd; edges that come while one is pending (the guest runs
    # with interrupts off between requests) merge, so four requests show as one to four interrupts
    assert 1 <= interrupts <= 4, machine.serial_output


# -- malformed descriptors ------------------------------------------------------------------------------------------
MALFORMED = ["data-outside-ram", "data-straddles-ram-end", "data-address-wraps", "status-outside-ram", "loop",
             "next-out-of-range", "short-header", "huge-length"]


def test_malformed_descriptors_fail_the_request_not_the_vmm(guest, disk):
    before = disk.read_bytes()
    done = run_vmm(flat(guest("malformed", RAM_SIZE=16 << 20), "--disk", str(disk)), timeout=60)
    output = done.stdout.decode()
    results = dict(re.findall(r"^case=(\S+) result=(.*)$", output, re.MULTILINE))
    cases = list(MALFORMED)
    if not results.get("indirect-outside-ram", "").startswith("skipped"):  # only with VIRTIO_F_INDIRECT_DESC
        cases.append("indirect-outside-ram")
    for case in cases:
        assert case in results, f"case {case} never reported: {output}\n{done.stderr!r}"
        result = results[case]
        assert "timeout" not in result, f"{case}: the device neither failed the request nor asked for a reset"
        if result.startswith("used"):
            status = int(re.search(r"status=(\d+)", result).group(1))
            assert status != VIRTIO_BLK_S_OK, f"{case}: the device reported success for a malformed chain"
        else:
            assert result == "needs_reset", f"{case}: {result}"
    # the device still works, the VMM still runs the guest to its own exit
    assert results["good-read"].endswith("status=0") and results["good-write"].endswith("status=0"), output
    assert f"sector0={sector0()[:16].hex()}\n" in output
    assert done.returncode == 0, done
    after = disk.read_bytes()
    assert after[SECTOR:2 * SECTOR] == before[SECTOR:2 * SECTOR], "a malformed write reached sector 1"
    assert after[2 * SECTOR:3 * SECTOR] == bytes(0xA5 ^ (i & 0xFF) for i in range(SECTOR))
    assert b"Traceback" not in done.stderr


# -- virtio-net -----------------------------------------------------------------------------------------------------
ETHERTYPE = 0x88B5  # IEEE local experimental: nothing else on the TAP uses it
GUEST_PAYLOAD = b"virtkit-guest-tx"
HOST_PAYLOAD = b"virtkit-host-says-hello"


def open_packet_socket(tap: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    sock.bind((tap, ETHERTYPE))
    sock.settimeout(0.2)
    return sock


def receive_guest_frame(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        if frame[12:14] == ETHERTYPE.to_bytes(2, "big"):
            return frame
    pytest.fail(f"no frame with ethertype {ETHERTYPE:#x} from the guest on the TAP in {timeout} s")


def test_net_frames_reach_the_tap_and_come_back(guest, tap, machines):
    sock = open_packet_socket(tap)
    try:
        machine = machines(guest("virtio_net"), net_tap=tap)
        machine.start()
        wait_serial(machine, b"tx done\n")
        frame = receive_guest_frame(sock, 10)
        mac = re.search(rb"mac=([0-9a-f:]{17})", machine.serial_output).group(1).decode()
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex(mac.replace(":", "")), frame[:14].hex()
        assert frame[14:14 + len(GUEST_PAYLOAD)] == GUEST_PAYLOAD

        reply = frame[6:12] + bytes.fromhex("020000aabbcc") + ETHERTYPE.to_bytes(2, "big") + HOST_PAYLOAD
        sock.send(reply.ljust(60, b"\0"))
        info = finish(machine, 20)
        output = machine.serial_output.decode()
        assert info.status == 0, (info, output)
        # frames of other ethertypes (none expected with IPv6 off) are only counted: the guest waits for ours
        assert re.search(rf"rx len=60 src=02:00:00:aa:bb:cc ignored=\d+ payload={HOST_PAYLOAD.decode()}\n", output), \
            output
    finally:
        sock.close()
