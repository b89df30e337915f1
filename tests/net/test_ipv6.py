"""IPv6 on networks without root: subnets, the IPv6 side of IPAM, rules, names (fake fabric, real store)."""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest

from tests.net.conftest import attach_instance
from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument
from virtkit.core.network_model import link_local_for, parse_subnet6, ula_pool
from virtkit.core.networks import NetworkService
from virtkit.core.options import validate_create
from virtkit.net import dns, nft
from virtkit.net.hosts import render


def _attach(svc, store, name: str, itype: str = "container", **req):  # type: ignore[no-untyped-def]
    return attach_instance(svc, store, name, itype, "created", **req)


def test_subnet6_picked_from_the_home_ula_or_given_and_checked(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "v4"})
    a = svc.create({"name": "a", "ipv6": True})
    pool = ula_pool(fabric.table)
    assert pool.prefixlen == 48 and pool.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert a.subnet6 == str(next(pool.subnets(new_prefix=64))) and a.gateway6 == str(pool.network_address + 1)
    b = svc.create({"name": "b", "ipv6": True, "isolated": True})
    assert b.subnet6 != a.subnet6 and ipaddress.IPv6Network(b.subnet6).subnet_of(pool)
    assert svc.get("v4").subnet6 is None and svc.inspect("v4")["subnet6"] is None
    assert fabric.bridges6 == {1: f"{a.gateway6}/64", 2: f"{b.gateway6}/64"} and fabric.forward6
    c = svc.create({"name": "c", "subnet6": "fd00:77:1::/64"})            # --subnet6 alone implies --ipv6
    assert (c.subnet6, c.gateway6) == ("fd00:77:1::/64", "fd00:77:1::1")
    for bad, word in [("fd00:77:1::/80", "overlaps"), ("fd00::/64", "overlaps"),     # c's; the host's route
                      ("fd00:77:2::1/64", "subnet6"), ("10.0.0.0/24", "IPv6"), ("fe80::/64", "unicast"),
                      ("ff02::/64", "unicast"), ("fd00:77::/32", "prefix")]:
        with pytest.raises(InvalidArgument, match=word):
            svc.create({"name": "x", "ipv6": True, "subnet6": bad})
    with pytest.raises(AlreadyExists):
        svc.create({"name": "c", "ipv6": True})
    assert {n["name"] for n in svc.list()} == {"v4", "a", "b", "c"}
    svc.remove("c")
    assert 3 not in fabric.bridges6


def test_leases_get_unique_ipv6_addresses_static_and_released(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "f", "subnet": "10.77.1.0/24", "subnet6": "fd00:77:1::/64"})
    a = _attach(svc, store, "a", network="f")
    b = _attach(svc, store, "b", network="f", ip6="fd00:77:1::50")
    assert a.spec["net"]["address6"] == "fd00:77:1::2" and a.spec["net"]["gateway6"] == "fd00:77:1::1"
    assert fabric.attached[a.id]["address6"] == "fd00:77:1::2" and fabric.attached[a.id]["prefixlen6"] == 64
    assert b.spec["net"]["address6"] == "fd00:77:1::50"
    with pytest.raises(InUse, match="ip6: fd00:77:1::50 is already in use on network 'f' \\(by 'b'\\)"):
        _attach(svc, store, "dup", network="f", ip6="fd00:77:1::50")
    for i, bad in enumerate(("fd00:77:1::1", "fd00:77:1::", "fd00:77:2::5")):
        with pytest.raises(InvalidArgument, match="ip6: .* is not a usable address"):
            _attach(svc, store, f"bad{i}", network="f", ip6=bad)
    with pytest.raises(InvalidArgument, match="ip6: 'nope' is not an IPv6 address"):
        validate_create({"image": "i", "ip6": "nope"})
    with pytest.raises(InvalidArgument, match="ip6: an address needs a network"):
        validate_create({"image": "i", "ip6": "fd00::5", "network": "none"})
    svc.create({"name": "v4", "subnet": "10.77.2.0/24"})
    with pytest.raises(InvalidArgument, match="has no IPv6"):
        _attach(svc, store, "nov6", network="v4", ip6="fd00:77:1::9")
    assert {le.instance_id for le in store.list_leases()} == {a.id, b.id}       # the refused left nothing
    c = _attach(svc, store, "c", network="f")
    assert c.spec["net"]["address6"] == "fd00:77:1::3"
    members = {m["name"]: m for m in svc.inspect("f")["instances"]}
    assert members["c"]["address6"] == "fd00:77:1::3"
    store.delete_instance(a.id)
    svc.removed(a)
    assert _attach(svc, store, "d", network="f").spec["net"]["address6"] == "fd00:77:1::2"   # released, reused
    v4only = _attach(svc, store, "e", network="v4")
    assert "address6" not in v4only.spec["net"] and "address6" not in svc.inspect("v4")["instances"][0]


def test_isolated_ipv6_network_has_no_default_route_and_connect_gives_ipv6(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "iso", "subnet": "10.77.1.0/24", "subnet6": "fd00:77:1::/64", "isolated": True})
    svc.create({"name": "f", "subnet": "10.77.2.0/24", "subnet6": "fd00:77:2::/64"})
    a = _attach(svc, store, "a", network="iso")
    assert fabric.attached[a.id]["gateway6"] is None
    made = svc.connect("f", "a", ip6="fd00:77:2::9")
    assert made["address6"] == "fd00:77:2::9"
    assert fabric.attached[f"{a.id}/eth1"]["gateway6"] is None        # the default route stays on eth0
    vm = _attach(svc, store, "vm", itype="vm", network="f")
    assert vm.spec["net"]["address6"] == "fd00:77:2::2" and vm.spec["net"]["gateway6"] == "fd00:77:2::1"


def test_rules_names_and_hosts_files_carry_ipv6(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "f", "subnet": "10.77.1.0/24", "subnet6": "fd00:77:1::/64", "nat": True})
    a = _attach(svc, store, "a", network="f", ports=["8080:80", "127.0.0.1:8081:81"])
    b = _attach(svc, store, "b", network="f", hostname="bee")
    svc.starting(a)
    rs = fabric.rules
    assert rs.networks[0].subnet6 == "fd00:77:1::/64"
    port = next(p for p in rs.ports if p.address == a.spec["net"]["address"])
    assert (port.address6, port.link_local) == ("fd00:77:1::2", link_local_for(a.spec["net"]["mac"]))
    assert {(f.host_ip, f.address6) for f in rs.forwards} == {(None, "fd00:77:1::2"), ("127.0.0.1", "fd00:77:1::2")}
    assert "fd00:77:1::3\tb\n" in fabric.hosts[a.id] and "fd00:77:1::3\tbee\n" in fabric.hosts[a.id]
    assert "fd00:77:1::2\ta\n" in fabric.hosts[a.id] and "10.77.1.2\ta\n" in fabric.hosts[a.id]
    zone = fabric.zones["10.77.1.1"]
    assert zone.names6 == {"a": "fd00:77:1::2", "b": "fd00:77:1::3", "bee": "fd00:77:1::3"}
    assert zone.names["a"] == "10.77.1.2"
    assert b.id in fabric.hosts


def test_link_local_and_parse():
    assert link_local_for("02:42:0a:50:03:03") == "fe80::42:aff:fe50:303"       # what the kernel makes
    assert parse_subnet6("fd00:77:1::/64") == ipaddress.IPv6Network("fd00:77:1::/64")
    assert ula_pool("virtkit_a") != ula_pool("virtkit_b")
    text = render("a", "10.0.0.2", [("10.0.0.3", "b"), ("fd00::3", "b")], address6="fd00::2")
    assert text.index("10.0.0.3\tb") < text.index("fd00::3\tb") and "fd00::2\ta\n" in text


def test_ruleset_for_ipv6():
    rs = nft.Ruleset("virtkit_unit6", [nft.NetRules("vkbu0", "10.99.1.0/24", True, False, "fd00:99:1::/64"),
                                       nft.NetRules("vkbu1", "10.99.2.0/24", False, False)],
                     [nft.PortRules("vkvu1", "02:42:0a:63:01:02", "10.99.1.2", "fd00:99:1::2",
                                    "fe80::42:aff:fe63:102"),
                      nft.PortRules("vkvu2", "02:42:0a:63:02:02", "10.99.2.2")],
                     [nft.Forward(None, 8080, "tcp", "10.99.1.2", 80, "fd00:99:1::2"),
                      nft.Forward("127.0.0.1", 8081, "tcp", "10.99.1.2", 81, "fd00:99:1::2")])
    text = json.dumps(nft.build(rs))
    assert text.count('"family": "ip6", "addr": "fd00:99:1::2", "port": 80') == 2     # prerouting and output
    assert '"port": 81}' in text and text.count('"family": "ip6"') == 2               # 127.0.0.1: IPv4 only
    assert text.count('"addr": "fd00:99:1::", "len": 64') == 2                        # hairpin and NAT66
    bridge = [c for c in nft.build(rs) if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == "bridge"]
    own6 = [json.dumps(c) for c in bridge if "vkvu1" in json.dumps(c) and "ip6" in json.dumps(c)]
    assert any('"::"' in r and "fe80::42:aff:fe63:102" in r for r in own6)
    assert any(hex(int(ipaddress.IPv6Address("fd00:99:1::2"))) in json.dumps(c) for c in bridge)
    no6 = [json.dumps(c) for c in bridge if "vkvu2" in json.dumps(c)]
    assert any('"ip6"}' in r and '"drop"' in r for r in no6)                        # no IPv6 at all there


def test_name_server_answers_aaaa():
    z = dns.Zone({"a": "10.1.2.3", "v4only": "10.1.2.4"}, forward=False, names6={"a": "fd00::3"})

    def ask(name: str, qtype: int) -> bytes:
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        out = dns.answer(z, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + bytes([0, qtype, 0, 1]))
        assert out is not None
        return out

    out = ask("a", dns.QTYPE_AAAA)
    assert out[6:8] == b"\x00\x01" and out[-16:] == socket.inet_pton(socket.AF_INET6, "fd00::3")
    out = ask("a", dns.QTYPE_ANY)
    assert out[6:8] == b"\x00\x02"
    out = ask("v4only", dns.QTYPE_AAAA)
    assert out[3] & 0xF == 0 and out[6:8] == b"\x00\x00"                                 # NODATA
    assert ask("a", dns.QTYPE_A)[-4:] == socket.inet_aton("10.1.2.3")

