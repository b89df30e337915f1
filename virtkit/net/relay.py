"""The one userland path of published ports: TCP to [::1]:PORT, relayed to the instance's IPv6 address.

IPv6 has no route_localnet: the kernel never sends a packet from ::1 out of a real interface, so DNAT cannot carry
[::1]:PORT to an instance as it carries 127.0.0.1:PORT (net.nft). Docker runs docker-proxy for this; virtkitd
already holds a listening socket on the port (its reservation, net.ports), so it accepts there and copies bytes
both ways to [address6]:port: a thread per listener, one per connection. A stopped instance's relay goes with its
reservation, its open connections too. UDP on [::1] is not relayed.
"""

from __future__ import annotations

import selectors
import socket
import threading

CHUNK = 65536


class Relay:
    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self._listener = listener
        self._target = target
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="virtkit-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except OSError:         # the listener was shut down: the reservation is let go
                return
            threading.Thread(target=self._pipe, args=(client,), name="virtkit-relay-conn", daemon=True).start()

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._conns.update(socks)
            return True

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()          # the instance does not answer: the client sees the connection end
            return
        upstream.settimeout(None)
        sel = selectors.DefaultSelector()
        peers = {client: upstream, upstream: client}
        try:
            if not self._track(client, upstream):
                return
            for s in peers:
                sel.register(s, selectors.EVENT_READ)
            open_ways = 2
            while open_ways:
                for key, _mask in sel.select():
                    src: socket.socket = key.fileobj        # type: ignore[assignment]
                    data = src.recv(CHUNK)
                    if data:
                        peers[src].sendall(data)
                        continue
                    sel.unregister(src)                    # one way ended: pass the end on, keep the other
                    open_ways -= 1
                    try:
                        peers[src].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            sel.close()
            with self._lock:
                self._conns.difference_update(peers)
            for s in peers:
                s.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)     # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(2)
