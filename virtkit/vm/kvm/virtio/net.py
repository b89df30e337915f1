"""virtio-net over a host TAP device: frames from the transmit queue to the TAP, from the TAP to the receive queue.

The TAP is used without IFF_VNET_HDR: no offloads are offered to the guest (no CSUM, no GSO), so its 12-byte
virtio_net_hdr carries nothing and is stripped on transmit and written as zeros (num_buffers 1) on receive.
That keeps guest-written header fields (gso_type, csum_start, ...) away from the host kernel altogether, and any
plain TAP works. A TAP fd handed over that does have IFF_VNET_HDR is still handled: its header is zeroed out
going in and skipped coming out.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

from virtkit.vm.kvm.errors import DeviceError, GuestMemoryError
from virtkit.vm.kvm.virtio import spec as S
from virtkit.vm.kvm.virtio.backend import VirtioBackend
from virtkit.vm.kvm.virtio.queue import Chain, Virtqueue, gather, scatter

log = logging.getLogger(__name__)

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNGETVNETHDRSZ = 0x800454D7
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")    # struct ifreq: name, then ifr_flags in the union

RECEIVEQ, TRANSMITQ = 0, 1
MAX_FRAME = 65535 + 14 + 4          # largest TAP MTU plus an Ethernet and a VLAN header: caps every buffer
_RX_HEADER = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)    # virtio_net_hdr_v1, GSO_NONE, num_buffers 1


def parse_mac(mac: bytes | str | None) -> bytes:
    """Six bytes from 'aa:bb:cc:dd:ee:ff' or bytes; None gives a random locally administered unicast address."""
    if mac is None:
        random = os.urandom(6)
        return bytes([(random[0] & 0xFE) | 0x02]) + random[1:]
    if isinstance(mac, str):
        try:
            raw = bytes(int(part, 16) for part in mac.split(":"))
        except ValueError as exc:
            raise DeviceError(f"virtio-net: MAC address {mac!r} is not six hex bytes") from exc
    else:
        raw = bytes(mac)
    if len(raw) != 6 or raw[0] & 1:
        raise DeviceError(f"virtio-net: MAC address {raw.hex(':')} is not a six-byte unicast address")
    return raw


def open_tap(name: str) -> int:
    """Open (creating if need be) the TAP interface `name`, frames only (IFF_NO_PI, no vnet header)."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise DeviceError(f"virtio-net: TAP name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"virtio-net: cannot open /dev/net/tun: {exc.strerror}") from exc
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise DeviceError(f"virtio-net: cannot attach to TAP {name!r}: {exc.strerror}") from exc
    return fd


class NetBackend(VirtioBackend):
    """`tap`: a TAP interface name (opened, and created if missing) or an open TAP fd (duplicated: the caller
    keeps its own). `mac`: the guest's MAC address. The TAP fd is made non-blocking."""

    device_id = S.VIRTIO_ID_NET
    name = "net"
    num_queues = 2

    def __init__(self, tap: int | str, mac: bytes | str | None = None) -> None:
        super().__init__()
        self.mac = parse_mac(mac)
        if isinstance(tap, str):
            self.fd = open_tap(tap)
        else:
            try:
                self.fd = fcntl.fcntl(tap, fcntl.F_DUPFD_CLOEXEC, 0)
            except OSError as exc:
                raise DeviceError(f"virtio-net: TAP fd {tap} is unusable: {exc.strerror}") from exc
        try:
            ifreq = fcntl.ioctl(self.fd, TUNGETIFF, bytes(_IFREQ.size))
            raw_name, flags = _IFREQ.unpack(ifreq)
            self.ifname = raw_name.split(b"\0", 1)[0].decode(errors="replace")
            if not flags & IFF_TAP:
                raise DeviceError(f"virtio-net: {self.ifname!r} is a TUN, not a TAP device")
            self.tap_header = 0
            if flags & IFF_VNET_HDR:
                self.tap_header = struct.unpack("<i", fcntl.ioctl(self.fd, TUNGETVNETHDRSZ, bytes(4)))[0]
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        except OSError as exc:
            os.close(self.fd)
            raise DeviceError(f"virtio-net: fd {self.fd} is not a usable TAP: {exc.strerror}") from exc
        except BaseException:
            os.close(self.fd)
            raise
        self.features = (1 << S.VIRTIO_NET_F_MAC) | (1 << S.VIRTIO_NET_F_STATUS)
        self.counters.update(tx_packets=0, tx_bytes=0, tx_dropped=0, rx_packets=0, rx_bytes=0, rx_dropped=0)

    def config(self) -> bytes:
        # struct virtio_net_config: mac, status, max_virtqueue_pairs
        return self.mac + struct.pack("<HH", S.VIRTIO_NET_S_LINK_UP, 1)

    def process(self, index: int, queue: Virtqueue) -> None:
        if index == TRANSMITQ:
            while (chain := queue.pop()) is not None:
                self._transmit(chain)
                queue.push(chain.head, 0)
        elif index == RECEIVEQ:
            self._receive()     # new buffers: frames that wait on the TAP can go in now

    def _transmit(self, chain: Chain) -> None:
        self.counters["requests"] += 1
        length = chain.readable_len - S.VIRTIO_NET_HDR_SIZE
        if chain.error or chain.writable or not 0 < length <= MAX_FRAME:
            self.counters["errors"] += 1
            self.counters["tx_dropped"] += 1
            log.debug("virtio-net %s: dropped a malformed transmit chain (%s)", self.ifname,
                      chain.error or f"{chain.readable_len} readable, {chain.writable_len} writable bytes")
            return
        frame = gather(self.memory, chain.readable, S.VIRTIO_NET_HDR_SIZE, length)
        try:
            os.write(self.fd, bytes(self.tap_header) + frame if self.tap_header else frame)
        except OSError as exc:      # interface down (EIO), kernel queue full (EAGAIN): a NIC drops the frame
            self.counters["tx_dropped"] += 1
            log.debug("virtio-net %s: transmit dropped: %s", self.ifname, exc)
            return
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += length
        self.counters["bytes"] += length

    def _read_frame(self) -> bytes | None:
        try:
            data = os.read(self.fd, self.tap_header + MAX_FRAME)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.counters["errors"] += 1
            log.debug("virtio-net %s: TAP read failed: %s", self.ifname, exc)
            return None
        return data[self.tap_header:]

    def _receive(self) -> None:
        """Move frames from the TAP into receive buffers until the TAP is empty.

        With no buffer posted (or the driver not up) a frame is read and dropped, as a NIC with an empty ring
        drops it: leaving it would keep the fd readable and spin the VMM's level-triggered event loop."""
        queue = self.ctx.queue(RECEIVEQ) if self.ctx is not None else None
        while (frame := self._read_frame()) is not None:
            if queue is None or (chain := queue.pop()) is None:
                self.counters["rx_dropped"] += 1
                continue
            if chain.error or chain.readable:
                self.counters["errors"] += 1
                self.counters["rx_dropped"] += 1
                queue.push(chain.head, 0)
                continue
            if not frame or chain.writable_len < S.VIRTIO_NET_HDR_SIZE + len(frame):
                # the frame is what does not fit (no MRG_RXBUF): drop it, keep the buffer for the next one
                queue.undo_pop()
                self.counters["rx_dropped"] += 1
                continue
            try:
                written = scatter(self.memory, chain.writable, 0, _RX_HEADER + frame)
            except GuestMemoryError:
                self.counters["errors"] += 1
                self.counters["rx_dropped"] += 1
                written = 0
            else:
                self.counters["rx_packets"] += 1
                self.counters["rx_bytes"] += len(frame)
                self.counters["bytes"] += len(frame)
            queue.push(chain.head, written)

    def event_sources(self) -> list[tuple[int, Callable[[], None]]]:
        return [(self.fd, self._receive)] if self.fd >= 0 else []

    def save(self) -> dict[str, Any]:
        return {**super().save(), "mac": self.mac.hex(":")}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("mac") != self.mac.hex(":"):
            raise DeviceError(f"virtio-net {self.ifname}: the snapshot's guest saw MAC {state.get('mac')}, "
                              f"this device has {self.mac.hex(':')}")
        super().restore(state)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "tap": self.ifname, "mac": self.mac.hex(":")}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
