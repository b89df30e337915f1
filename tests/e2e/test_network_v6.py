"""IPv6 on virtual networks end to end: real traffic over IPv6 between instances on networks these tests make,
isolation, spoofing from inside, published ports on the host's IPv6 addresses, nothing left behind."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e import test_network
from tests.e2e.conftest import teardown_home, vk
from tests.e2e.test_network import HTTPD, _free_port, _http, _net, _run, _sh, wget
from virtkit.config import Home

pytestmark = pytest.mark.root
cleanup = test_network.cleanup          # the fixture: what a test registers is removed, and checked gone


def _v6_ok() -> None:
    with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
        if f.read().strip() != "0":
            pytest.skip("IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1)")


def _member(vk_home: str, net: str, inst: str) -> dict:
    return next(m for m in json.loads(vk(vk_home, "network", "show", net).stdout)["instances"] if m["name"] == inst)


def test_ipv6_traffic_names_and_published_ports(vk_home, client, name, cleanup):
    _v6_ok()
    net = _net(vk_home, "--ipv6", "--nat")
    cleanup["networks"].append(net["name"])
    assert net["subnet6"].endswith("::/64") and net["subnet6"].startswith("fd") and net["gateway6"]
    port = _free_port()
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "-p", f"{port}:80",
                                     "busybox", "--", "sh", "-c", HTTPD))
    addr6 = _member(vk_home, net["name"], name)["address6"]
    spec = json.loads(vk(vk_home, "inspect", name).stdout)["spec"]["net"]
    assert spec["address6"] == addr6 and spec["gateway6"] == net["gateway6"]
    static = net["subnet6"].replace("::/64", "::77")
    script = (f"ip -6 addr show dev eth0 | grep -q ' {static}/64' && echo static;"
              f"ip -6 route | grep -q '^default via {net['gateway6']}' && echo route;"
              f"ping6 -c1 -W2 {addr6} >/dev/null && echo ping6;"
              f"ping6 -c1 -W2 {name} >/dev/null && echo ping6-by-name;"       # the name's AAAA, from the hosts file
              f"{wget(f'http://[{addr6}]/')};"
              f"wget -qO- http://[{net['gateway6']}]:{port}/")                # hairpin over IPv6
    r = _sh(vk_home, net["name"], script, "--ip6", static)
    assert r.stdout.decode().split() == ["static", "route", "ping6", "ping6-by-name", f"hello-{name}",
                                         f"hello-{name}"], (r.stdout, r.stderr)
    # from the host, on its IPv6 addresses: the bridge's, another one of the host's, and loopback
    assert _http(f"http://[{net['gateway6']}]:{port}/", wait=10) == f"hello-{name}\n"
    for addr in _global_host_addresses()[:1]:
        assert _http(f"http://[{addr}]:{port}/") == f"hello-{name}\n", addr
    assert _http(f"http://[::1]:{port}/") == f"hello-{name}\n"          # relayed by virtkitd (see net.relay)
    r = vk(vk_home, "run", "--rm", "--network", net["name"], "--ip6", static, "busybox", "--", "true")
    assert r.returncode == 0, r.stderr                  # released on rm (--rm): free again
    r = vk(vk_home, "run", "-d", "--network", net["name"], "--ip6", addr6, "busybox", "--", "true")
    assert r.returncode == 1 and f"ip6: {addr6} is already in use".encode() in r.stderr, r.stderr
    r = vk(vk_home, "run", "-d", "--network", net["name"], "--ip6", "fd00:1::zz", "busybox", "--", "true")
    assert r.returncode == 2 and b"ip6: 'fd00:1::zz' is not an IPv6 address" in r.stderr, r.stderr


def _global_host_addresses() -> list[str]:
    """The host's IPv6 addresses outside virtkit's bridges (e.g. the uplink's), global or ULA."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        out = [str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=10)
               if not names.get(int(a["index"]), "").startswith("vk") and a["scope"] == 0]
    return [a for a in out if a != "::1"]


def test_ipv6_isolation_between_networks(vk_home, client, name, cleanup):
    _v6_ok()
    test_network.check_isolation(vk_home, name, cleanup, v6=True)


def _claim(netns_path: str, address6: str) -> None:
    """Give the instance's eth0 one more IPv6 address, usable at once (no duplicate address detection, which
    would find the victim and keep the address unused: busybox's `ip` has no nodad, so the test does it)."""
    from pyroute2 import IPRoute

    from virtkit.net import links, netns

    def inside() -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=address6, prefixlen=64, flags=links.IFA_F_NODAD)

    netns.run_in(netns_path, inside)


def test_ipv6_spoofing_fails(vk_home, client, name, cleanup):
    """From inside: sending from an address virtkit did not give it fails (another's, or a free one of the
    subnet), and so does answering the gateway's neighbour solicitations for another's (the host keeps the
    victim's MAC)."""
    _v6_ok()
    from pyroute2 import IPRoute

    net = _net(vk_home, "--ipv6")
    cleanup["networks"].append(net["name"])
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    cleanup["instances"].append(_run(vk_home, "--name", name + "-x", "--network", net["name"], "--cap-add",
                                     "NET_RAW", "busybox", "--", "sleep", "600"))
    victim, me = _member(vk_home, net["name"], name), _member(vk_home, net["name"], name + "-x")
    gw, free = net["gateway6"], net["subnet6"].replace("::/64", "::99")
    netns_path = json.loads(vk(vk_home, "inspect", name + "-x").stdout)["spec"]["net"]["netns"]
    for addr in (free, victim["address6"]):
        _claim(netns_path, addr)
    script = (f"ping6 -c1 -W2 -I {me['address6']} {gw} >/dev/null && echo own-ok;"
              f"ping6 -c1 -W2 -I {free} {gw} >/dev/null && echo unleased-passed;"
              f"ping6 -c1 -W2 -I {victim['address6']} {gw} >/dev/null && echo ip6-spoof-passed;"
              f"ping6 -c1 -W2 -I {me['address6']} {gw} >/dev/null && echo own-ok-again; echo done")
    r = vk(vk_home, "exec", name + "-x", "--", "sh", "-c", script, timeout=60)
    assert r.stdout.decode().split() == ["own-ok", "own-ok-again", "done"], (r.stdout, r.stderr)
    # it holds the victim's address and answers the host's solicitations for it: not heard
    with IPRoute() as ipr:
        bridge = ipr.link_lookup(ifname=net["bridge"])[0]
        for _ in range(3):
            try:
                ipr.neigh("del", dst=victim["address6"], ifindex=bridge)
            except Exception:
                pass
            assert _http(f"http://[{victim['address6']}]/", wait=5) == f"hello-{name}\n"
            macs = {str(n.get_attr("NDA_LLADDR")) for n in ipr.get_neighbours(family=10, ifindex=bridge)
                    if n.get_attr("NDA_DST") == victim["address6"]}
            assert macs == {victim["mac"]}, macs


def test_ipv6_leases_kept_across_restart_and_nothing_left_behind(tmp_path_factory):
    _v6_ok()
    from pyroute2 import IPRoute

    from virtkit.client import connect
    from virtkit.net.fabric import NetFabric
    from virtkit.net.nft import table_exists

    home = str(tmp_path_factory.mktemp("vkhome"))
    fab = NetFabric(Home.from_env(home))
    try:
        c = connect(home)
        c.build_image("busybox")
        net = c.create_network("a6", ipv6=True, nat=True)
        c.run("busybox", ["sleep", "600"], detach=True, name="x", network="a6", ports=[f"{_free_port()}:80"])
        before = c.network("a6")["instances"]
        assert before[0]["address6"].startswith(net["subnet6"].split("::")[0])
        c.shutdown()
        c = connect(home)
        assert c.network("a6")["instances"] == before
        r = c.exec("x", ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
        assert f" {before[0]['address6']}/64" in r.stdout.decode(), r
        c.remove("x", force=True)
        c.remove_network("a6")
    finally:
        leaks = teardown_home(home)
    assert not leaks
    assert fab.leftovers() == [] and not os.path.exists(os.path.join(home, "netns")) and not table_exists(fab.table)
    prefix = net["subnet6"].split("/")[0].rstrip(":")
    with IPRoute() as ipr:
        left = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=10)
                if str(a.get_attr("IFA_ADDRESS")).startswith(prefix)]
        routes = [r.get_attr("RTA_DST") for r in ipr.get_routes(family=10)
                  if str(r.get_attr("RTA_DST") or "").startswith(prefix)]
    assert left == [] and routes == []
