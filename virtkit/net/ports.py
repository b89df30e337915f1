"""Host port reservations: the sockets virtkitd holds on published host ports while their instance runs.

Forwarding is done by nftables DNAT alone (no proxy process), so nothing on the host would otherwise own a
published port: a program could bind it later and never see a packet, and another virtkit home could publish it
too. Like kube-proxy's "port reservation" sockets, virtkitd binds each published address:port itself: TCP ones
listen (a listener conflicts with every other bind, SO_REUSEADDR or not), UDP ones are bound without
SO_REUSEADDR. DNAT rewrites every packet for the port before socket lookup, so these sockets never receive one.
A failed bind is how "in use on the host" is found; the same bind, closed at once, is the check at create.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

from virtkit.core.errors import InUse


def describe(port: dict[str, Any]) -> str:
    """'127.0.0.1:8080/tcp' (0.0.0.0 for every address), as Docker words it."""
    return f"{port.get('host_ip') or '0.0.0.0'}:{port['host_port']}/{port['proto']}"


def _bind(port: dict[str, Any]) -> socket.socket:
    tcp = port["proto"] == "tcp"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:     # TIME_WAIT leftovers of an earlier server on the port must not count as "in use"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((port.get("host_ip") or "0.0.0.0", int(port["host_port"])))
        if tcp:
            s.listen(1)
    except OSError as exc:
        s.close()
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
        self._held: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def probe(self, ports: list[dict[str, Any]]) -> None:
        """Raise InUse when any of `ports` cannot be bound now (bound briefly, then let go)."""
        for s in self._bind_all(ports):
            s.close()

    def reserve(self, instance_id: str, ports: list[dict[str, Any]]) -> None:
        """Hold `ports` for the instance (replacing what it held: a restart re-reserves its own ports)."""
        self.release(instance_id)
        if not ports:
            return
        socks = self._bind_all(ports)
        with self._lock:
            self._held[instance_id] = socks

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
    def _bind_all(ports: list[dict[str, Any]]) -> list[socket.socket]:
        socks: list[socket.socket] = []
        try:
            for p in ports:
                socks.append(_bind(p))
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks
