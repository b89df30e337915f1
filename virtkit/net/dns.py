"""The name server of a home's networks for VM guests: one UDP socket on each network's gateway address, port 53,
answering the names of the instances on that network; other names go to the host's resolvers.

Containers read a managed hosts file that virtkitd rewrites in place (net.hosts). A VM's guest has its own
filesystem that virtkitd cannot rewrite, and a hosts table passed on the kernel command line would be frozen at
boot and squeezed into its 2 KiB. So virtkitd answers DNS itself, from the same membership the hosts files come
from, pushed here on every change: a VM sees peers that join after it booted. One thread and a socket per network,
inside virtkitd (nothing to spawn, supervise or leak); while virtkitd is down, names do not resolve in VMs.
Isolated networks get no forwarding: their guests learn nothing from outside, and nothing leaves through us.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TTL = 5                  # seconds: membership changes, answers must not outlive it by much
FORWARD_TIMEOUT = 4.0
MAX_PENDING = 256        # forwarded queries in flight, all networks together
QTYPE_A, QTYPE_AAAA, QTYPE_ANY, QCLASS_IN = 1, 28, 255, 1
RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 1, 2, 3, 4


@dataclass(frozen=True)
class Zone:
    names: dict[str, str] = field(default_factory=dict)     # lower-case name -> IPv4 address
    forward: bool = True                                      # unknown names go to the host's resolvers
    names6: dict[str, str] = field(default_factory=dict)    # lower-case name -> IPv6 address (networks with IPv6)


def parse_query(data: bytes) -> tuple[int, int, str, int, int, bytes] | None:
    """(id, flags, name, qtype, qclass, question bytes) of a one-question query; None when malformed."""
    if len(data) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", data[:6])
    if flags & 0x8000 or qd != 1:
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            return None
        n = data[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(data):      # no compression in a question we accept
            return None
        labels.append(data[pos:pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack("!HH", data[pos:pos + 4])
    return qid, flags, ".".join(labels).lower(), qtype, qclass, data[12:pos + 4]


def reply(qid: int, qflags: int, question: bytes, rcode: int = 0, address: str | list[str] | None = None) -> bytes:
    """A response carrying `question` back, with an A (IPv4) or AAAA (IPv6) record for each of `address`."""
    addresses = [address] if isinstance(address, str) else list(address or [])
    flags = 0x8000 | 0x0400 | (qflags & 0x0100) | 0x0080 | rcode       # QR, AA, RD as asked, RA
    header = struct.pack("!HHHHHH", qid, flags, 1 if question else 0, len(addresses), 0, 0)
    answers = b""
    for a in addresses:
        family, qtype = (socket.AF_INET6, QTYPE_AAAA) if ":" in a else (socket.AF_INET, QTYPE_A)
        data = socket.inet_pton(family, a)
        answers += struct.pack("!HHHIH", 0xC00C, qtype, QCLASS_IN, TTL, len(data)) + data
    return header + question + answers


def answer(zone: Zone, data: bytes) -> bytes | None:
    """The reply to `data` from the zone alone; None when it must be forwarded."""
    q = parse_query(data)
    if q is None:
        if len(data) >= 12:
            return reply(struct.unpack("!H", data[:2])[0], 0, b"", RCODE_FORMERR)
        return None
    qid, flags, name, qtype, qclass, question = q
    if (flags >> 11) & 0xF:
        return reply(qid, flags, question, RCODE_NOTIMP)
    name = name.rstrip(".")
    address, address6 = zone.names.get(name), zone.names6.get(name)
    if address is not None or address6 is not None:
        # a known name: the types it lacks get an empty answer (NODATA), not NXDOMAIN, so resolvers asking A and
        # AAAA together keep the one it has
        found = [a for a, t in ((address, QTYPE_A), (address6, QTYPE_AAAA))
                 if a and qclass == QCLASS_IN and qtype in (t, QTYPE_ANY)]
        return reply(qid, flags, question, 0, found)
    if zone.forward:
        return None
    return reply(qid, flags, question, RCODE_NXDOMAIN)


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """IPv4 nameservers of the host (loopback ones too: virtkitd runs in the host's network namespace)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    out.append(parts[1])
    except OSError:
        pass
    return out


@dataclass
class _Pending:
    server: socket.socket
    client: tuple[str, int]
    qid: int
    flags: int
    question: bytes
    deadline: float


class NameServer:
    """Serves zones by gateway address. `update` is called by the network service; a thread does the rest."""

    def __init__(self, port: int = 53, resolvers: list[str] | None = None, upstream_port: int = 53) -> None:
        self.port = port
        self._resolvers = resolvers            # None: the host's, read at each forward (resolv.conf changes)
        self.upstream_port = upstream_port
        self._zones: dict[str, Zone] = {}
        self._socks: dict[str, socket.socket] = {}
        self._failed: set[str] = set()
        self._pending: dict[socket.socket, _Pending] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._closed = False

    def update(self, zones: dict[str, Zone]) -> list[str]:
        """Serve exactly these gateways (binding new ones, closing gone ones); returns the ones that failed now
        and not at the last update (a failed one is tried again each time, said once)."""
        failed = []
        with self._lock:
            if self._closed:
                return list(zones)
            for addr in [a for a in self._socks if a not in zones]:
                s = self._socks.pop(addr)
                self._sel.unregister(s)
                s.close()
            for addr in zones:
                if addr in self._socks:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.bind((addr, self.port))
                except OSError as exc:
                    s.close()
                    if addr not in self._failed:
                        failed.append(addr)
                        log.warning("name server: cannot listen on %s:%d: %s", addr, self.port, exc)
                    continue
                s.setblocking(False)
                self._socks[addr] = s
                self._sel.register(s, selectors.EVENT_READ, addr)
            self._failed = {a for a in zones if a not in self._socks}
            self._zones = dict(zones)
            if self._socks and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="virtkit-dns", daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"x")
        return failed

    def addresses(self) -> list[str]:
        with self._lock:
            return sorted(self._socks)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join(5)
        with self._lock:
            for s in [*self._socks.values(), *self._pending]:
                s.close()
            self._socks.clear()
            self._pending.clear()
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            events = self._sel.select(timeout=1.0)
            with self._lock:
                if self._closed:
                    return
                for key, _mask in events:
                    if key.fileobj == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif key.data is None:
                        self._relay(key.fileobj)        # type: ignore[arg-type]
                    else:
                        self._serve(key.fileobj, str(key.data))    # type: ignore[arg-type]
                self._expire()

    def _serve(self, s: socket.socket, addr: str) -> None:
        try:
            data, client = s.recvfrom(4096)
        except OSError:
            return
        zone = self._zones.get(addr)
        if zone is None:
            return
        out = answer(zone, data)
        if out is None:
            out = self._forward(s, client, data)
        if out is not None:
            try:
                s.sendto(out, client)
            except OSError:
                pass

    def _forward(self, s: socket.socket, client: tuple[str, int], data: bytes) -> bytes | None:
        q = parse_query(data)
        assert q is not None
        qid, flags, _name, _t, _c, question = q
        upstream = self._resolvers if self._resolvers is not None else host_resolvers()
        if not upstream or len(self._pending) >= MAX_PENDING:
            return reply(qid, flags, question, RCODE_SERVFAIL)
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            up.setblocking(False)
            up.connect((upstream[0], self.upstream_port))
            up.send(data)
        except OSError:
            up.close()
            return reply(qid, flags, question, RCODE_SERVFAIL)
        self._pending[up] = _Pending(s, client, qid, flags, question, time.monotonic() + FORWARD_TIMEOUT)
        self._sel.register(up, selectors.EVENT_READ, None)
        return None

    def _relay(self, up: socket.socket) -> None:
        p = self._pending.pop(up, None)
        try:
            data = up.recv(4096)
        except OSError:
            data = b""
        self._sel.unregister(up)
        up.close()
        if p is None:
            return
        out = data if len(data) >= 12 and data[:2] == struct.pack("!H", p.qid) else \
            reply(p.qid, p.flags, p.question, RCODE_SERVFAIL)
        try:
            p.server.sendto(out, p.client)
        except OSError:
            pass

    def _expire(self) -> None:
        now = time.monotonic()
        for up, p in list(self._pending.items()):
            if p.deadline < now:
                self._pending.pop(up)
                self._sel.unregister(up)
                up.close()
                try:
                    p.server.sendto(reply(p.qid, p.flags, p.question, RCODE_SERVFAIL), p.client)
                except OSError:
                    pass
