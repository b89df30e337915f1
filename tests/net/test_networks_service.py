"""NetworkService over a real store and a fake fabric: IPAM, in-use protection, rules, hosts files."""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from virtkit.core.models import Instance
from virtkit.core.networks import NetworkService, mac_for, parse_rate
from virtkit.core.options import validate_create


def _inst(store, name: str, **req):  # type: ignore[no-untyped-def]
    spec = validate_create({"image": "busybox", **req})
    inst = Instance(id=secrets.token_hex(16), name=name, type="container", state="created", image="busybox",
                    spec=spec, created_at=time.time())
    store.add_instance(inst)
    return inst


def _attach(svc, store, name: str, **req):  # type: ignore[no-untyped-def]
    inst = _inst(store, name, **req)
    svc.prepare(inst)
    store.update_instance(inst.id, spec=inst.spec)
    svc.created(inst)
    return inst


def _rm(svc, store, inst) -> None:  # type: ignore[no-untyped-def]
    store.delete_instance(inst.id)
    svc.removed(inst)


def test_setup_makes_default_avoiding_host_routes(store, fabric):
    svc = NetworkService(store, fabric)
    svc.setup()
    net = svc.get("default")
    assert net.subnet == "10.80.1.0/24" and net.gateway == "10.80.1.1" and net.nat   # 10.80.0.0/24 is routed
    svc.setup()                                                  # idempotent: a restart keeps it
    assert [n["name"] for n in svc.list()] == ["default"]


def test_create_validates_and_refuses_overlap(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    with pytest.raises(AlreadyExists):
        svc.create({"name": "front", "subnet": "10.77.2.0/24"})
    for bad, word in [("10.77.1.0/25", "overlaps"), ("10.77.1.1/24", "subnet"), ("8.8.8.0/24", "private"),
                      ("10.0.0.0/8", "prefix"), ("192.0.2.0/24", "overlaps")]:
        with pytest.raises(InvalidArgument, match=word):
            svc.create({"name": "x", "subnet": bad})
    with pytest.raises(InvalidArgument, match="reserved"):
        svc.create({"name": "none"})
    assert fabric.bridges == {0: "10.77.1.1/24"}


def test_leases_unique_static_exhaustion_release(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "tiny", "subnet": "10.77.9.0/29"})       # hosts .1-.6, .1 is the gateway
    a = _attach(svc, store, "a", network="tiny", ip="10.77.9.6")
    assert a.spec["net"]["address"] == "10.77.9.6" and a.spec["net"]["mac"] == mac_for("10.77.9.6")
    with pytest.raises(InUse, match="by 'a'"):
        _attach(svc, store, "dup", network="tiny", ip="10.77.9.6")
    with pytest.raises(InvalidArgument, match="usable"):
        _attach(svc, store, "gw", network="tiny", ip="10.77.9.1")
    others = [_attach(svc, store, f"n{i}", network="tiny") for i in range(4)]
    assert sorted(o.spec["net"]["address"] for o in others) == [f"10.77.9.{i}" for i in range(2, 6)]
    with pytest.raises(InUse, match="no free address"):
        _attach(svc, store, "full", network="tiny")
    _rm(svc, store, others[0])
    again = _attach(svc, store, "again", network="tiny")
    assert again.spec["net"]["address"] == others[0].spec["net"]["address"]
    with pytest.raises(InUse, match="in use by instance"):
        svc.remove("tiny")


def test_concurrent_creates_never_share_an_address(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "busy", "subnet": "10.77.3.0/24"})
    svc2 = NetworkService(store, fabric)          # no shared lock: only the store's constraint protects
    insts = [_inst(store, f"c{i}", network="busy") for i in range(24)]
    errors: list[BaseException] = []

    def go(s, inst):  # type: ignore[no-untyped-def]
        try:
            s.prepare(inst)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(svc if i % 2 else svc2, inst)) for i, inst in enumerate(insts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    addrs = [le.address for le in store.list_leases(network="busy")]
    assert len(addrs) == 24 and len(set(addrs)) == 24


def test_failed_attach_releases_the_lease(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    fabric.fail_attach = True
    inst = _inst(store, "a", network="front")
    with pytest.raises(Exception, match="boom"):
        svc.prepare(inst)
    assert store.list_leases() == []


def test_missing_network_and_port_conflicts(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    with pytest.raises(NotFound, match="network: 'nope'"):
        svc.prepare(_inst(store, "x", network="nope"))
    _attach(svc, store, "web", network="front", ports=["127.0.0.1:8080:80"])
    with pytest.raises(InUse, match="8080/tcp is already published by 'web'"):
        _attach(svc, store, "web2", network="front", ports=["8080:81"])
    _attach(svc, store, "dns", network="front", ports=["8080:53/udp"])       # other protocol: fine
    fwd = {(f.host_ip, f.host_port, f.proto) for f in fabric.rules.forwards}
    assert fwd == {("127.0.0.1", 8080, "tcp"), (None, 8080, "udp")}


def test_hosts_files_follow_membership(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    a = _attach(svc, store, "a", network="front")
    b = _attach(svc, store, "b", network="front", hostname="bee")
    assert "\tb\n" in fabric.hosts[a.id] and "\tbee\n" in fabric.hosts[a.id]
    assert f"{a.spec['net']['address']}\ta\n" in fabric.hosts[b.id]
    _rm(svc, store, b)
    assert "\tb\n" not in fabric.hosts[a.id]


def test_none_network_and_shutdown(store, fabric):
    svc = NetworkService(store, fabric)
    svc.setup()
    assert svc.prepare(_inst(store, "lo", network="none")) is None
    a = _attach(svc, store, "a")
    svc.shutdown()
    assert fabric.bridges, "an instance holds an address: bridges stay"
    _rm(svc, store, a)
    svc.shutdown()
    assert fabric.bridges == {} and fabric.rules.networks == []
    svc.setup()
    assert list(fabric.bridges) == [0]


def test_option_parsing():
    spec = validate_create({"image": "i", "ports": ["8080:80", "127.0.0.1:53:53/udp"], "rate": "10mbit"})
    assert spec["network"] == "default" and spec["rate"] == 10_000_000
    assert spec["ports"] == [{"host_ip": None, "host_port": 8080, "port": 80, "proto": "tcp"},
                             {"host_ip": "127.0.0.1", "host_port": 53, "port": 53, "proto": "udp"}]
    for bad in (["80"], ["0:80"], ["a:1:2"], ["1:2/sctp"], ["1:70000"]):
        with pytest.raises(InvalidArgument, match="ports"):
            validate_create({"image": "i", "ports": bad})
    with pytest.raises(InvalidArgument, match="ip:"):
        validate_create({"image": "i", "network": "none", "ip": "10.0.0.2"})
    with pytest.raises(InvalidArgument, match="ip:"):
        validate_create({"image": "i", "ip": "10.0.0.300"})
    with pytest.raises(InvalidArgument, match="ports"):
        validate_create({"image": "i", "network": "none", "ports": ["1:2"]})
    assert parse_rate("1gbit") == 10**9 and parse_rate("2mbps") == 16_000_000
    with pytest.raises(InvalidArgument, match="rate"):
        parse_rate("fast")


def test_connect_disconnect(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    svc.create({"name": "back", "subnet": "10.77.2.0/24"})
    a = _attach(svc, store, "a", network="front", ports=["8080:80"])
    b = _attach(svc, store, "b", network="back")
    made = svc.connect("front", "b", ip="10.77.1.40")
    assert (made["ifname"], made["address"]) == ("eth1", "10.77.1.40")
    assert "10.77.1.40\tb\n" in fabric.hosts[a.id] and f"{a.spec['net']['address']}\ta\n" in fabric.hosts[b.id]
    assert [f.address for f in fabric.rules.forwards] == [a.spec["net"]["address"]]   # first network only
    with pytest.raises(AlreadyExists):
        svc.connect("front", "b")
    with pytest.raises(InUse, match="in use by instance"):
        svc.remove("front")
    with pytest.raises(InvalidArgument, match="created on"):
        svc.disconnect("back", "b")
    svc.disconnect("front", "b")
    assert "\tb\n" not in fabric.hosts[a.id] and "\ta\n" not in fabric.hosts[b.id]
    with pytest.raises(NotFound):
        svc.disconnect("front", "b")
    svc.connect("front", "b")
    _rm(svc, store, b)
    assert store.list_leases(instance_id=b.id) == [] and len(fabric.removed_ifaces) >= 2


def test_a_vm_gets_a_tap_and_an_address(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    spec = validate_create({"image": "x", "network": "front"})
    vm = Instance(id=secrets.token_hex(16), name="vm", type="vm", state="created", image="x", spec=spec,
                  created_at=time.time())
    store.add_instance(vm)
    svc.prepare(vm)
    assert vm.spec["net"]["tap"] == "vkvtap" and vm.spec["net"]["address"] == "10.77.1.2"
    assert vm.spec["net"]["gateway"] == "10.77.1.1" and "netns" not in vm.spec["net"]
    store.update_instance(vm.id, spec=vm.spec)
    with pytest.raises(Exception, match="VM"):
        svc.connect("front", "vm")
