"""Bridges and veth pairs over netlink (pyroute2): create, attach to a bridge, address, route, MTU, MAC, remove.

Names mirror the kernel's (IFLA_*, RTM_*). Library errors become virtkit errors at this boundary.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from virtkit.core.errors import SystemFailure
from virtkit.net import netns

IFNAMSIZ = 15          # usable characters of an interface name
AF_INET, AF_INET6 = 2, 10
# addresses we hand out are unique by construction (IPAM): no duplicate address detection, usable at once
IFA_F_NODAD = 0x02


@contextmanager
def _ipr(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise SystemFailure(f"{what}: {os.strerror(exc.code) if exc.code else exc}") from exc


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_names(prefix: str) -> list[str]:
    """Names of the host's links that start with `prefix` (leak checks, cleanup)."""
    with _ipr("list links") as ipr:
        names = [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    return [n for n in names if n.startswith(prefix)]


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int | None = None, gateway6: str | None = None,
                  prefixlen6: int | None = None) -> None:
    """A bridge with the gateway address (and the IPv6 one, if given), up; idempotent (a daemon restart finds it
    there)."""
    assert len(name) <= IFNAMSIZ, name
    with _ipr(f"bridge {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            idx = _index(ipr, name)
            assert idx is not None
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=AF_INET)}
        if gateway not in have:
            ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
        if gateway6:
            _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
            have6 = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=AF_INET6)}
            if gateway6 not in have6:
                ipr.addr("add", index=idx, address=gateway6, prefixlen=prefixlen6, flags=IFA_F_NODAD)
        kwargs: dict[str, Any] = {"state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        ipr.link("set", index=idx, **kwargs)
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")


def enable_ipv4_forwarding() -> None:
    """Routing between interfaces for IPv4 (net.ipv4.ip_forward), as Docker turns it on: Debian leaves it off,
    and without it nothing leaves a --nat network and no port published on the host's addresses is reached (the
    kernel forwards a packet only when the interface it came in on forwards). It stays on."""
    _sysctl("net/ipv4/ip_forward", "1")


def enable_ipv6_forwarding() -> None:
    """IPv6 routing between interfaces is one switch for the whole host (net.ipv6.conf.all.forwarding; there is
    no per-interface one as in IPv4): needed by networks with IPv6 and a route out, as Docker does. It stays on."""
    _sysctl("net/ipv6/conf/all/forwarding", "1")


def delete_link(name: str) -> None:
    """Remove a link (a veth takes its peer with it); a missing one is fine."""
    with _ipr(f"delete {name}") as ipr:
        idx = _index(ipr, name)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise


def attach_veth(*, host_name: str, bridge: str, netns_path: str, address: str, prefixlen: int,
                gateway: str | None, mac: str, mtu: int | None = None, ifname: str = "eth0",
                address6: str | None = None, prefixlen6: int | None = None, gateway6: str | None = None) -> None:
    """A veth pair: `host_name` on the bridge, its peer `ifname` inside the namespace with address, MAC,
    and a default route via `gateway` (None: no route out); the same for IPv6 when `address6` is given."""
    with _ipr(f"veth {host_name}") as ipr:
        br = _index(ipr, bridge)
        if br is None:
            raise SystemFailure(f"bridge {bridge} is missing (was the network removed under us?)")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": fd, "address": mac}
            ipr.link("add", ifname=host_name, kind="veth", peer=peer)
        finally:
            os.close(fd)
        idx = _index(ipr, host_name)
        assert idx is not None
        kwargs: dict[str, Any] = {"master": br, "state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        ipr.link("set", index=idx, **kwargs)

    def inside() -> None:
        with _ipr(f"configure {ifname} in {netns_path}") as ipr:
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            idx = _index(ipr, ifname)
            assert idx is not None
            if mtu:
                ipr.link("set", index=idx, mtu=mtu)
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
            if address6:
                ipr.addr("add", index=idx, address=address6, prefixlen=prefixlen6, flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")
            if gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)
            if gateway6:
                ipr.route("add", dst="::/0", gateway=gateway6, oif=idx, family=AF_INET6)

    try:
        netns.run_in(netns_path, inside)
    except BaseException:
        delete_link(host_name)
        raise


def attach_tap(*, name: str, bridge: str, mtu: int | None = None) -> None:
    """A persistent TAP device on the bridge, for a VM's virtio-net (its VMM opens it by name)."""
    with _ipr(f"tap {name}") as ipr:
        br = _index(ipr, bridge)
        if br is None:
            raise SystemFailure(f"bridge {bridge} is missing (was the network removed under us?)")
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        idx = _index(ipr, name)
        assert idx is not None
        kwargs: dict[str, Any] = {"master": br, "state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        try:
            ipr.link("set", index=idx, **kwargs)
        except BaseException:
            ipr.link("del", index=idx)
            raise


def lo_up() -> None:
    """Inside a fresh namespace: bring loopback up."""
    with _ipr("loopback up") as ipr:
        lo = _index(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")


def host_routes(family: int = AF_INET) -> list[Any]:
    """Destinations of the host's routes of `family` (main table), to choose subnets that do not collide."""
    out = []
    with _ipr("list routes") as ipr:
        for r in ipr.get_routes(family=family):
            dst = r.get_attr("RTA_DST")
            if dst is None:
                continue
            out.append(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False))
    return out


def subnet_users(subnet: Any, own: str) -> list[str]:
    """Names of the host's interfaces other than `own` that have a route into `subnet` (another virtkit home
    that took the same subnet while this one was stopped, or another program)."""
    with _ipr("list routes") as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        found = []
        for r in ipr.get_routes(family=AF_INET):
            dst = r.get_attr("RTA_DST")
            if dst is None or r["dst_len"] == 0:
                continue
            name = names.get(r.get_attr("RTA_OIF"))
            if name and name != own and ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False).overlaps(subnet):
                found.append(name)
    return sorted(set(found))


def _tbf(ipr: IPRoute, idx: int, rate_bits: int) -> None:
    burst = max(rate_bits // 8 // 100, 16 * 1024)      # ~10 ms of traffic, at least 16 KiB
    ipr.tc("add", "tbf", index=idx, handle="1:", rate=f"{rate_bits}bit", burst=burst, latency="50ms")


def set_rate(host_name: str, netns_path: str, rate_bits: int, ifname: str = "eth0") -> None:
    """A token bucket each way: on the host side of the veth (what the instance receives) and on its
    interface inside the namespace (what it sends)."""
    with _ipr(f"rate limit {host_name}") as ipr:
        idx = _index(ipr, host_name)
        if idx is None:
            raise SystemFailure(f"link {host_name} is missing")
        _tbf(ipr, idx, rate_bits)

    def inside() -> None:
        with _ipr(f"rate limit {ifname} in {netns_path}") as ipr:
            idx = _index(ipr, ifname)
            assert idx is not None
            _tbf(ipr, idx, rate_bits)

    netns.run_in(netns_path, inside)


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise SystemFailure(f"sysctl {key.replace('/', '.')}={value}: {exc}") from exc
