"""The side effects of virtual networks for one home: bridges, per-instance namespaces and veths, nftables
rules, hosts files, host port reservations, the VM guests' name server. core.networks decides; this carries
out. Every kernel object's name carries the home id."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import Any

from virtkit.config import Home
from virtkit.net import dns, hosts, links, netns, nft
from virtkit.net.ports import PortReservations


class NetFabric:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.hid = home.id[:6]
        self.netns_dir = os.path.join(home.root, "netns")
        self.table = f"virtkit_{home.id}"
        self.ports = PortReservations()
        self._names: dns.NameServer | None = None

    # -- names ----------------------------------------------------------------------------------------
    def bridge_name(self, index: int) -> str:
        return f"vkb{self.hid}{index}"

    def veth_name(self, instance_id: str, network: str) -> str:
        return f"vkv{self.hid}" + hashlib.sha256(f"{instance_id}/{network}".encode()).hexdigest()[:6]

    def netns_path(self, instance_id: str) -> str:
        return os.path.join(self.netns_dir, instance_id)

    def link_prefixes(self) -> tuple[str, str]:
        return f"vkb{self.hid}", f"vkv{self.hid}"

    # -- networks -------------------------------------------------------------------------------------
    def ensure_network(self, index: int, gateway: str, prefixlen: int, gateway6: str | None = None,
                       prefixlen6: int | None = None, forward6: bool = False) -> None:
        links.ensure_bridge(self.bridge_name(index), gateway, prefixlen, gateway6=gateway6, prefixlen6=prefixlen6)
        links.enable_ipv4_forwarding()
        if forward6:
            links.enable_ipv6_forwarding()

    def remove_network(self, index: int) -> None:
        links.delete_link(self.bridge_name(index))

    def subnet_users(self, subnet: ipaddress.IPv4Network, index: int) -> list[str]:
        """Other interfaces of the host routing into `subnet` (not network `index`'s own bridge)."""
        return links.subnet_users(subnet, self.bridge_name(index))

    def host_routes(self) -> list[ipaddress.IPv4Network]:
        return links.host_routes()

    def host_routes6(self) -> list[ipaddress.IPv6Network]:
        return links.host_routes(links.AF_INET6)

    def apply_rules(self, rs: nft.Ruleset) -> None:
        nft.apply(rs)

    # -- instances ------------------------------------------------------------------------------------
    def attach(self, *, instance_id: str, network: str, index: int, address: str, prefixlen: int,
               gateway: str | None, mac: str, **v6: Any) -> dict[str, Any]:
        """A namespace for the instance with its interface on the network's bridge; undone on failure. `v6`:
        address6, prefixlen6, gateway6 on a network with IPv6."""
        path = self.netns_path(instance_id)
        veth = self.veth_name(instance_id, network)
        netns.create(path, links.lo_up)
        try:
            links.attach_veth(host_name=veth, bridge=self.bridge_name(index), netns_path=path, address=address,
                              prefixlen=prefixlen, gateway=gateway, mac=mac, **v6)
        except BaseException:
            netns.remove(path)
            raise
        return {"netns": path, "veth": veth}

    def attach_tap(self, *, instance_id: str, network: str, index: int) -> dict[str, Any]:
        """A VM's port on the network: a TAP named like a container's veth (the same rules apply to it)."""
        tap = self.veth_name(instance_id, network)
        links.attach_tap(name=tap, bridge=self.bridge_name(index))
        return {"tap": tap, "veth": tap}

    def ensure_netns(self, instance_id: str) -> dict[str, Any]:
        """A namespace with loopback only (an instance whose every network was disconnected)."""
        path = self.netns_path(instance_id)
        netns.create(path, links.lo_up)
        return {"netns": path}

    def add_interface(self, *, instance_id: str, veth: str, index: int, address: str, prefixlen: int, mac: str,
                      ifname: str, gateway: str | None = None, **v6: Any) -> None:
        """One more veth into the instance's existing namespace (network connect); a default route only when
        `gateway` (`gateway6` in `v6`) is given (the instance had no network left)."""
        links.attach_veth(host_name=veth, bridge=self.bridge_name(index), netns_path=self.netns_path(instance_id),
                          address=address, prefixlen=prefixlen, gateway=gateway, mac=mac, ifname=ifname, **v6)

    def remove_interface(self, veth: str) -> None:
        links.delete_link(veth)

    def detach(self, instance_id: str, veth: str | None) -> None:
        if veth:
            links.delete_link(veth)
        netns.remove(self.netns_path(instance_id))

    def is_pinned(self, instance_id: str) -> bool:
        return netns.is_pinned(self.netns_path(instance_id))

    def set_rate(self, instance_id: str, veth: str, rate_bits: int) -> None:
        links.set_rate(veth, self.netns_path(instance_id), rate_bits)

    def write_hosts(self, instance_id: str, content: str) -> None:
        path = os.path.join(self.home.instance_dir(instance_id), "hosts")
        if os.path.isdir(os.path.dirname(path)):
            hosts.write_in_place(path, content)

    # -- host ports (net.ports) ----------------------------------------------------------------------
    def probe_ports(self, ports: list[dict[str, Any]]) -> None:
        self.ports.probe(ports)

    def reserve_ports(self, instance_id: str, ports: list[dict[str, Any]]) -> None:
        self.ports.reserve(instance_id, ports)

    def release_ports(self, instance_id: str) -> None:
        self.ports.release(instance_id)

    def port_holders(self) -> set[str]:
        return self.ports.holders()

    # -- names for VM guests (net.dns) ----------------------------------------------------------------
    def serve_names(self, zones: dict[str, dns.Zone]) -> list[str]:
        """Answer these zones on their gateway addresses; returns the addresses that could not be served."""
        if self._names is None:
            if not zones:
                return []
            self._names = dns.NameServer()
        return self._names.update(zones)

    def close(self) -> None:
        """virtkitd stops: let go of host ports and the name server (the next start takes them again)."""
        self.ports.release_all()
        if self._names is not None:
            self._names.close()
            self._names = None

    # -- leak checks ----------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Kernel objects and files of this home's networks that exist now (tests expect none after rm)."""
        found = [f"link {n}" for p in self.link_prefixes() for n in links.link_names(p)]
        found += [f"nft table {fam} {self.table}" for fam in nft.table_exists(self.table)]
        if os.path.isdir(self.netns_dir):
            found += [f"netns {os.path.join(self.netns_dir, n)}" for n in os.listdir(self.netns_dir)]
        return found
