"""Namespaces, bridges and veths for real (root): made, configured, and gone after."""

from __future__ import annotations

import os

import pytest

from virtkit.config import Home
from virtkit.net import links, netns
from virtkit.net.fabric import NetFabric

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netlink, namespaces)")


def _addrs_in(path: str) -> list[tuple[str, str]]:
    from pyroute2 import IPRoute

    def read() -> list[tuple[str, str]]:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            return sorted((names[a["index"]], a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2))

    return netns.run_in(path, read)


def test_fabric_attach_detach_leaves_nothing(tmp_path):
    fab = NetFabric(Home(str(tmp_path)))
    try:
        fab.ensure_network(7, "10.99.7.1", 24)
        fab.ensure_network(7, "10.99.7.1", 24)          # idempotent
        made = fab.attach(instance_id="abc123", network="n", index=7, address="10.99.7.5", prefixlen=24,
                          gateway="10.99.7.1", mac="02:42:0a:63:07:05")
        assert made["veth"].startswith("vkv") and len(made["veth"]) <= 15
        assert netns.is_pinned(made["netns"])
        assert _addrs_in(made["netns"]) == [("eth0", "10.99.7.5"), ("lo", "127.0.0.1")]
        assert fab.bridge_name(7) in links.link_names(fab.bridge_name(7))
        fab.detach("abc123", made["veth"])
        fab.detach("abc123", made["veth"])              # idempotent
    finally:
        fab.remove_network(7)
    assert fab.leftovers() == []


def test_attach_to_missing_bridge_rolls_back(tmp_path):
    fab = NetFabric(Home(str(tmp_path)))
    with pytest.raises(Exception, match="missing"):
        fab.attach(instance_id="abc123", network="n", index=9, address="10.99.9.5", prefixlen=24,
                   gateway=None, mac="02:42:0a:63:09:05")
    assert fab.leftovers() == []


def test_tap_for_a_vm_on_the_bridge(tmp_path):
    fab = NetFabric(Home(str(tmp_path)))
    try:
        fab.ensure_network(8, "10.99.8.1", 24)
        made = fab.attach_tap(instance_id="vm1", network="n", index=8)
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=made["tap"])[0]
            link = ipr.get_links(idx)[0]
            assert link.get_attr("IFLA_MASTER") == ipr.link_lookup(ifname=fab.bridge_name(8))[0]
            assert link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "tun"
        fab.remove_interface(made["tap"])
    finally:
        fab.remove_network(8)
    assert fab.leftovers() == []


def test_subnet_users_names_other_interfaces_routing_into_a_subnet(tmp_path):
    import ipaddress

    fab = NetFabric(Home(str(tmp_path)))
    try:
        fab.ensure_network(6, "10.99.6.1", 24)
        subnet = ipaddress.IPv4Network("10.99.6.0/24")
        assert fab.subnet_users(subnet, 6) == []                           # its own bridge is no clash
        assert links.subnet_users(subnet, "someone-else") == [fab.bridge_name(6)]
        assert links.subnet_users(ipaddress.IPv4Network("10.99.6.128/25"), "x") == [fab.bridge_name(6)]
        assert links.subnet_users(ipaddress.IPv4Network("10.99.7.0/24"), "x") == []
    finally:
        fab.remove_network(6)
    assert fab.leftovers() == []
