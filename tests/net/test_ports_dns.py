"""Host port reservations and the VMs' name server over real sockets on loopback (no root needed)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from virtkit.core.errors import InUse
from virtkit.net import dns
from virtkit.net.ports import PortReservations


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port(port: int, host_ip: str | None = "127.0.0.1", proto: str = "tcp") -> dict:
    return {"host_ip": host_ip, "host_port": port, "port": 80, "proto": proto}


def test_reservations_block_other_binds_and_are_all_or_none():
    res = PortReservations()
    tcp, udp = _free_port(), _free_port(socket.SOCK_DGRAM)
    try:
        res.reserve("a", [_port(tcp), _port(udp, None, "udp")])
        with socket.socket() as s, pytest.raises(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)       # even a reusing bind is refused
            s.bind(("127.0.0.1", tcp))
        with pytest.raises(InUse, match=rf"host port 127\.0\.0\.1:{tcp}/tcp is in use on the host"):
            res.probe([_port(tcp)])
        with pytest.raises(InUse, match=rf"0\.0\.0\.0:{tcp}/tcp"):
            res.probe([_port(tcp, None)])                                   # every address includes loopback
        with pytest.raises(InUse, match="udp"):
            res.probe([_port(udp, "127.0.0.1", "udp")])
        other = _free_port()
        with pytest.raises(InUse):
            res.reserve("b", [_port(other), _port(tcp)])                    # the second is busy ...
        res.probe([_port(other)])                                           # ... so the first was let go
        assert res.holders() == {"a"}
        res.reserve("a", [_port(tcp)])                                      # a restart takes its own again
    finally:
        res.release_all()
    res.probe([_port(tcp), _port(udp, None, "udp")])
    with pytest.raises(InUse, match="not an address of this host"):
        res.probe([_port(tcp, "192.0.2.1")])


def _query(name: str, qtype: int = dns.QTYPE_A, qid: int = 0x1234) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _ask(port: int, data: bytes) -> tuple[int, int, bytes]:
    """(rcode, answer count, the answer's address bytes or b'')."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(data, ("127.0.0.1", port))
        out = s.recv(4096)
    assert out[:2] == data[:2] and out[2] & 0x80
    ancount = struct.unpack("!H", out[6:8])[0]
    return out[3] & 0xF, ancount, out[-4:] if ancount else b""


def test_zone_answers():
    z = dns.Zone({"web": "10.1.2.3"}, forward=False)
    q = dns.parse_query(_query("Web"))
    assert q is not None and q[2] == "web"
    rcode_a = dns.answer(z, _query("WEB"))
    assert rcode_a is not None and rcode_a[-4:] == socket.inet_aton("10.1.2.3")
    assert dns.answer(dns.Zone({}, forward=True), _query("elsewhere")) is None       # to be forwarded
    assert dns.answer(z, b"\x00") is None


def test_name_server_answers_forwards_and_follows_updates():
    port, upstream_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", upstream_port))
    asked: list[bytes] = []

    def serve_upstream() -> None:
        data, client = upstream.recvfrom(4096)
        asked.append(data)
        upstream.sendto(dns.reply(struct.unpack("!H", data[:2])[0], 0x0100, data[12:], 0, "192.0.2.7"), client)

    t = threading.Thread(target=serve_upstream)
    t.start()
    ns = dns.NameServer(port=port, resolvers=["127.0.0.1"], upstream_port=upstream_port)
    try:
        assert ns.update({"127.0.0.1": dns.Zone({"a": "10.9.0.2"}, forward=True)}) == []
        assert _ask(port, _query("a")) == (0, 1, socket.inet_aton("10.9.0.2"))
        assert _ask(port, _query("a", qtype=28)) == (0, 0, b"")                  # AAAA: no data, not NXDOMAIN
        assert _ask(port, _query("far.example")) == (0, 1, socket.inet_aton("192.0.2.7"))
        assert len(asked) == 1 and b"far" in asked[0]
        ns.update({"127.0.0.1": dns.Zone({"a": "10.9.0.2", "b": "10.9.0.3"}, forward=False)})
        assert _ask(port, _query("b"))[2] == socket.inet_aton("10.9.0.3")        # a peer that came later
        assert _ask(port, _query("nope"))[0] == dns.RCODE_NXDOMAIN               # isolated: not forwarded
        assert ns.addresses() == ["127.0.0.1"]
        ns.update({})
        assert ns.addresses() == []
    finally:
        ns.close()
        t.join(5)
        upstream.close()


def test_name_server_says_once_what_it_cannot_serve():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    ns = dns.NameServer(port=taken.getsockname()[1])
    try:
        zones = {"127.0.0.1": dns.Zone({})}
        assert ns.update(zones) == ["127.0.0.1"]
        assert ns.update(zones) == []                   # tried again, not said again
        taken.close()
        assert ns.update(zones) == [] and ns.addresses() == ["127.0.0.1"]     # free now: served
    finally:
        ns.close()
        taken.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this host")
def test_loopback6_is_relayed_to_the_target_and_let_go_with_the_reservation():
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind(("::1", 0))
    server.listen(4)
    target_port = server.getsockname()[1]

    def echo() -> None:
        for _ in range(2):
            conn, _addr = server.accept()
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                conn.sendall(data.upper())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    res = PortReservations()
    port = _free_port()
    try:
        res.reserve("a", [{"host_ip": None, "host_port": port, "port": target_port, "proto": "tcp",
                           "relay6": "::1"}])
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as other:     # a program of the host's on [::1]
            other.bind(("::1", 0))
            busy = other.getsockname()[1]
            with pytest.raises(InUse, match=rf"\[::1\]:{busy}/tcp is in use"):
                res.probe([{"host_ip": None, "host_port": busy, "port": 1, "proto": "tcp", "relay6": "::1"}])
        for payload in (b"hello", b"x" * 300_000):         # both ways, half-close passed on, big enough to stream
            with socket.create_connection(("::1", port), timeout=5) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := c.recv(65536):
                    got += chunk
            assert got == payload.upper()
    finally:
        res.release_all()
        server.close()
        t.join(5)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(ConnectionRefusedError):
        s.connect(("::1", port))
