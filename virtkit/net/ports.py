"""Host port reservations: the sockets virtkitd holds on published host ports while their instance runs.

Forwarding is done by nftables DNAT alone (no proxy process), so nothing on the host would otherwise own a
published port: a program could bind it later and never see a packet, and another virtkit home could publish it
too. Like kube-proxy's "port reservation" sockets, virtkitd binds each published address:port itself: TCP ones
listen (a listener conflicts with every other bind, SO_REUSEADDR or not), UDP ones are bound without
SO_REUSEADDR. DNAT rewrites every packet for the port before socket lookup, so these sockets never receive one.
A failed bind is how "in use on the host" is found; the same bind, closed at once, is the check at create.

A TCP port published on every address of an instance with an IPv6 address (`relay6` in the port) is also held on
[::1], and that socket does receive: DNAT cannot reach the instance from ::1, so net.relay carries it.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

from virtkit.core.errors import InUse
from virtkit.net.relay import Relay


def describe(port: dict[str, Any]) -> str:
    """'127.0.0.1:8080/tcp' (0.0.0.0 for every address), as Docker words it."""
    return f"{port.get('host_ip') or '0.0.0.0'}:{port['host_port']}/{port['proto']}"


def _bind(port: dict[str, Any], loopback6: bool = False) -> socket.socket | None:
    """The reservation socket of `port`; with `loopback6`, its [::1] one (None where the host has no ::1)."""
    tcp = port["proto"] == "tcp"
    family = socket.AF_INET6 if loopback6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:     # TIME_WAIT leftovers of an earlier server on the port must not count as "in use"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if loopback6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::1", int(port["host_port"])))
        else:
            s.bind((port.get("host_ip") or "0.0.0.0", int(port["host_port"])))
        if tcp:
            s.listen(64 if loopback6 else 1)
    except OSError as exc:
        s.close()
        if loopback6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return None
        if loopback6:
            port = {**port, "host_ip": "[::1]"}
        if exc.errno == errno.EADDRINUSE:
            raise InUse(f"port: host port {describe(port)} is in use on the host (by a program outside "
                        "virtkit, or another virtkit home)") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InUse(f"port: host port {describe(port)}: {port.get('host_ip')} is not an address of this "
                        "host") from exc
        raise InUse(f"port: host port {describe(port)} cannot be bound: {os.strerror(exc.errno or 0)}") from exc
    return s


class PortReservations:
    """Reservations by instance id; all of an instance's ports or none."""

    def __init__(self) -> None:
        self._held: dict[str, list[socket.socket | Relay]] = {}
        self._lock = threading.Lock()

    def probe(self, ports: list[dict[str, Any]]) -> None:
        """Raise InUse when any of `ports` cannot be bound now (bound briefly, then let go)."""
        for s, _target in self._bind_all(ports):
            s.close()

    def reserve(self, instance_id: str, ports: list[dict[str, Any]]) -> None:
        """Hold `ports` for the instance (replacing what it held: a restart re-reserves its own ports)."""
        self.release(instance_id)
        if not ports:
            return
        held: list[socket.socket | Relay] = [s if target is None else Relay(s, target)
                                             for s, target in self._bind_all(ports)]
        with self._lock:
            self._held[instance_id] = held

    def release(self, instance_id: str) -> None:
        with self._lock:
            socks = self._held.pop(instance_id, [])
        for s in socks:
            s.close()

    def holders(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def release_all(self) -> None:
        for iid in self.holders():
            self.release(iid)

    @staticmethod
    def _bind_all(ports: list[dict[str, Any]]) -> list[tuple[socket.socket, tuple[str, int] | None]]:
        """Each port's socket, and its [::1] one with where to relay it (see the module's docstring)."""
        socks: list[tuple[socket.socket, tuple[str, int] | None]] = []
        try:
            for p in ports:
                s = _bind(p)
                assert s is not None
                socks.append((s, None))
                if p.get("relay6") and p["proto"] == "tcp" and p.get("host_ip") is None:
                    s6 = _bind(p, loopback6=True)
                    if s6 is not None:
                        socks.append((s6, (str(p["relay6"]), int(p["port"]))))
        except BaseException:
            for s, _target in socks:
                s.close()
            raise
        return socks
