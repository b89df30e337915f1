"""NetworkService over a real store and a fake fabric: IPAM, in-use protection, rules, hosts files."""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time

import pytest

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, InvalidState, NotFound
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


def test_a_subnet_taken_while_the_home_was_stopped(store, fabric, capsys):
    """Another home's network took our subnets while we were down: the unused default network moves, a network
    with instances on it stays and the clash is said."""
    svc = NetworkService(store, fabric)
    svc.setup()
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    _attach(svc, store, "web", network="front")
    fabric.routes.append(ipaddress.IPv4Network("10.80.1.0/24"))
    fabric.other_bridges = {"vkbother0": ipaddress.IPv4Network("10.80.1.0/24"),
                            "vkbother1": ipaddress.IPv4Network("10.77.1.0/24")}
    svc.setup()
    err = capsys.readouterr().err
    assert svc.get("default").subnet == "10.80.2.0/24", err
    assert "default network moved from 10.80.1.0/24 to 10.80.2.0/24: vkbother0" in err
    assert svc.get("front").subnet == "10.77.1.0/24"
    assert "network 'front' (10.77.1.0/24) clashes with vkbother1" in err


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
    svc.create({"name": "busy", "subnet": "10.77.3.0/24", "subnet6": "fd00:77:3::/64"})    # both families
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
    addrs6 = [le.address6 for le in store.list_leases(network="busy")]
    assert len(set(addrs6)) == 24 and None not in addrs6


def test_failed_attach_releases_the_lease(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    fabric.fail_attach = True
    inst = _inst(store, "a", network="front")
    with pytest.raises(Exception, match="boom"):
        svc.prepare(inst)
    assert store.list_leases() == []


def _start(svc, store, inst):  # type: ignore[no-untyped-def]
    svc.starting(inst)
    return store.update_instance(inst.id, state="running")


def _stop(svc, store, inst):  # type: ignore[no-untyped-def]
    inst = store.update_instance(inst.id, state="stopped")
    svc.stopped(inst)
    return inst


def test_missing_network_and_port_conflicts(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    with pytest.raises(NotFound, match="network: 'nope'"):
        svc.prepare(_inst(store, "x", network="nope"))
    web = _attach(svc, store, "web", network="front", ports=["127.0.0.1:8080:80"])
    assert fabric.rules.forwards == [] and fabric.held == {}        # created, not running: holds no port
    web = _start(svc, store, web)
    assert web.id in fabric.held
    leases = len(store.list_leases())
    with pytest.raises(InUse, match=r"host port 0\.0\.0\.0:8080/tcp is already allocated to instance 'web'"):
        _attach(svc, store, "web2", network="front", ports=["8080:81"])
    assert len(store.list_leases()) == leases                       # refused before an address was taken
    dns = _start(svc, store, _attach(svc, store, "dns", network="front", ports=["8080:53/udp"]))  # other proto
    fwd = {(f.host_ip, f.host_port, f.proto) for f in fabric.rules.forwards}
    assert fwd == {("127.0.0.1", 8080, "tcp"), (None, 8080, "udp")}
    fabric.busy.add((None, 9090, "tcp"))                           # a program of the host's
    with pytest.raises(InUse, match="in use on the host"):
        _attach(svc, store, "h", network="front", ports=["127.0.0.1:9090:80"])
    _stop(svc, store, dns)
    assert dns.id not in fabric.held and {f.proto for f in fabric.rules.forwards} == {"tcp"}


def test_only_running_instances_hold_ports(store, fabric):
    """Docker's rule: a stopped instance's ports are free; one that exited unnoticed is found out and let go."""
    running: set[str] = set()
    svc = NetworkService(store, fabric, live=lambda i: i.id in running)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    a = _attach(svc, store, "a", network="front", ports=["8080:80"])
    b = _attach(svc, store, "b", network="front", ports=["127.0.0.1:8080:80"])   # created beside: allowed
    a = _start(svc, store, a)
    running.add(a.id)
    with pytest.raises(InUse, match="allocated to instance 'a'"):
        svc.starting(b)
    assert b.id not in fabric.held
    running.discard(a.id)                          # a exited; nobody asked yet, its record still says running
    b = _start(svc, store, b)
    assert set(fabric.held) == {b.id}
    assert [(f.host_ip, f.address) for f in fabric.rules.forwards] == [("127.0.0.1", b.spec["net"]["address"])]
    c = _attach(svc, store, "c", network="front", ports=["9000:80"])
    d = _attach(svc, store, "d", network="front", ports=["9000:80"])
    svc.starting(c)                                 # its start is under way: its record says "created" yet
    with pytest.raises(InUse, match="allocated to instance 'c'"):
        svc.starting(d)
    svc.stopped(c)                                  # the start failed
    _start(svc, store, d)
    _rm(svc, store, c)
    _rm(svc, store, d)
    svc.shutdown()                                  # daemon stops: reservations go
    assert fabric.closed and fabric.held == {}
    running.add(b.id)
    svc.setup()                                     # and come back for what runs
    assert set(fabric.held) == {b.id}
    _rm(svc, store, b)
    assert fabric.held == {} and fabric.rules.forwards == []


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
    for twice in (["8080:80", "8080:81"], ["8080:80", "127.0.0.1:8080:81"], ["127.0.0.1:53:53/udp", "53:54/udp"]):
        with pytest.raises(InvalidArgument, match="given twice"):
            validate_create({"image": "i", "ports": twice})
    validate_create({"image": "i", "ports": ["127.0.0.1:8080:80", "127.0.0.2:8080:80", "8080:80/udp"]})
    assert parse_rate("1gbit") == 10**9 and parse_rate("2mbps") == 16_000_000
    with pytest.raises(InvalidArgument, match="rate"):
        parse_rate("fast")


def test_connect_disconnect(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    svc.create({"name": "back", "subnet": "10.77.2.0/24"})
    a = _start(svc, store, _attach(svc, store, "a", network="front", ports=["8080:80"]))
    b = _attach(svc, store, "b", network="back")
    made = svc.connect("front", "b", ip="10.77.1.40")
    assert (made["ifname"], made["address"]) == ("eth1", "10.77.1.40")
    assert "10.77.1.40\tb\n" in fabric.hosts[a.id] and f"{a.spec['net']['address']}\ta\n" in fabric.hosts[b.id]
    assert [f.address for f in fabric.rules.forwards] == [a.spec["net"]["address"]]   # first network only
    with pytest.raises(AlreadyExists):
        svc.connect("front", "b")
    with pytest.raises(InUse, match="in use by instance"):
        svc.remove("front")
    svc.disconnect("front", "b")
    assert "\tb\n" not in fabric.hosts[a.id] and "\ta\n" not in fabric.hosts[b.id]
    with pytest.raises(NotFound):
        svc.disconnect("front", "b")
    svc.connect("front", "b")
    _rm(svc, store, b)
    assert store.list_leases(instance_id=b.id) == [] and len(fabric.removed_ifaces) >= 2


def test_disconnect_and_reconnect_the_primary_network(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    svc.create({"name": "back", "subnet": "10.77.2.0/24"})
    peer = _attach(svc, store, "peer", network="front")
    a = _start(svc, store, _attach(svc, store, "a", network="front", ports=["8080:80"], rate="10mbit"))
    svc.connect("back", "a")
    svc.disconnect("front", "a")
    a = store.get_instance("a")
    assert a.spec["network"] == "none" and a.spec["net"] == {"netns": f"/ns/{a.id}"}
    assert {le.network for le in store.list_leases(instance_id=a.id)} == {"back"}
    assert fabric.rules.forwards == [] and a.id not in fabric.held          # its published port went with it
    assert "\ta\n" not in fabric.hosts[peer.id] and "127.0.1.1\ta\n" in fabric.hosts[a.id]
    assert a.spec["net_extra"]["back"]["ifname"] == "eth1"                  # the other network stays
    with pytest.raises(NotFound, match="not connected"):
        svc.disconnect("front", "a")
    made = svc.connect("front", "a")                                       # back as primary: eth0, route, ports
    a = store.get_instance("a")
    assert made["ifname"] == "eth0" and a.spec["network"] == "front"
    assert fabric.attached[f"{a.id}/eth0"]["gateway"] == "10.77.1.1"
    assert a.spec["net"]["address"] == made["address"] and a.spec["net"]["netns"] == f"/ns/{a.id}"
    assert [f.address for f in fabric.rules.forwards] == [made["address"]] and a.id in fabric.held
    assert f"{made['address']}\ta\n" in fabric.hosts[peer.id]
    svc.disconnect("front", "a")
    svc.disconnect("back", "a")                                            # loopback only now
    a = store.get_instance("a")
    assert store.list_leases(instance_id=a.id) == [] and a.spec["net"] == {"netns": f"/ns/{a.id}"}
    fabric.attached.pop(a.id)                                               # as after a reboot: rebuilt at start
    svc.starting(a)
    assert fabric.attached[a.id] == {"instance_id": a.id}
    _rm(svc, store, a)
    assert a.id not in fabric.attached


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
    assert vm.spec["net"]["dns"] == "10.77.1.1"
    store.update_instance(vm.id, spec=vm.spec)
    svc.created(vm)
    assert fabric.zones["10.77.1.1"].names == {"vm": "10.77.1.2"} and fabric.zones["10.77.1.1"].forward
    with pytest.raises(Exception, match="VM"):
        svc.connect("front", "vm")
    with pytest.raises(InvalidState, match="VM"):
        svc.disconnect("front", "vm")
    svc.create({"name": "iso", "subnet": "10.77.2.0/24", "isolated": True})
    spec = validate_create({"image": "x", "network": "iso", "hostname": "Box"})
    vm2 = Instance(id=secrets.token_hex(16), name="vm2", type="vm", state="created", image="x", spec=spec,
                   created_at=time.time())
    store.add_instance(vm2)
    svc.prepare(vm2)
    assert vm2.spec["net"]["gateway"] is None and vm2.spec["net"]["dns"] == "10.77.2.1"   # no route out
    svc.created(vm2)
    assert fabric.zones["10.77.2.1"].names == {"vm2": "10.77.2.2", "box": "10.77.2.2"}
    assert not fabric.zones["10.77.2.1"].forward
