"""Virtual networks: create, list, inspect, remove; address management (IPAM); the rules and names of a home's
networks. What instances do on them (the InstanceService hooks, host ports, connect/disconnect) is
core.network_members'; side effects live in `net.fabric`; this decides.

Leases are rows with a unique (network, address) constraint: the store refuses a second holder even when
two creates race, and the loser takes the next free address. Bridges and rules are runtime state rebuilt
from the store at daemon start, and taken down at shutdown when no instance holds an address.
"""

from __future__ import annotations

import builtins
import ipaddress
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from virtkit.core.models import Instance, validate_name
from virtkit.core.network_members import LIVE_STATES, InstanceNetworking
from virtkit.core.network_model import (
    DEFAULT,
    NONE,
    POOL,
    Lease,
    Network,
    link_local_for,
    mac_for,
    network_of,
    parse_rate,
    parse_subnet,
    parse_subnet6,
    ula_pool,
)

if TYPE_CHECKING:
    from virtkit.store.base import Store

__all__ = ["DEFAULT", "NONE", "Lease", "Network", "NetworkService", "mac_for", "network_of", "parse_rate",
           "parse_subnet"]


class NetworkService(InstanceNetworking):
    def __init__(self, store: Store, fabric: Any, live: Callable[[Instance], bool] | None = None) -> None:
        self.store = store
        self.fabric = fabric          # net.fabric.NetFabric: the side effects
        self._lock = threading.RLock()
        self.live = live or (lambda inst: inst.state in LIVE_STATES)
        self._starting = set()

    # -- queries --------------------------------------------------------------------------------------
    def get(self, name: str) -> Network:
        return self.store.get_network(name)

    def members(self, name: str) -> list[tuple[Lease, Instance]]:
        by_id = {i.id: i for i in self.store.list_instances()}
        return [(le, by_id[le.instance_id]) for le in self.store.list_leases(network=name) if le.instance_id in by_id]

    def describe(self, net: Network) -> dict[str, Any]:
        d = net.to_dict()
        d["bridge"] = self.fabric.bridge_name(net.index)
        d["instances"] = [{"name": i.name, "address": le.address, "mac": le.mac,
                           **({"address6": le.address6} if le.address6 else {})} for le, i in self.members(net.name)]
        return d

    def inspect(self, name: str) -> dict[str, Any]:
        return self.describe(self.get(name))

    def list(self) -> builtins.list[dict[str, Any]]:
        return [self.describe(n) for n in self.store.list_networks()]

    # -- create / remove ------------------------------------------------------------------------------
    def create(self, req: dict[str, Any]) -> Network:
        name = req.get("name")
        validate_name(name, "name")          # type: ignore[arg-type]
        if name == NONE:
            raise InvalidArgument("name: 'none' is reserved (it means: no network)")
        subnet = parse_subnet(req["subnet"]) if req.get("subnet") else None
        subnet6 = parse_subnet6(req["subnet6"]) if req.get("subnet6") else None
        ipv6 = bool(req.get("ipv6")) or subnet6 is not None          # --subnet6 implies --ipv6
        with self._lock:
            net = self._create(str(name), subnet, bool(req.get("nat")), bool(req.get("isolated")),
                               (subnet6 or True) if ipv6 else None)
            self._publish_names()
            return net

    def _pick_subnet6(self, name: str, nets: builtins.list[Network],
                      given: ipaddress.IPv6Network | None) -> ipaddress.IPv6Network:
        """The given IPv6 subnet if nothing on the host overlaps it, else the first free /64 of the home's ULA."""
        ours = {n.subnet6 for n in nets if n.subnet6}
        busy = [ipaddress.IPv6Network(s) for s in ours] + \
            [r for r in self.fabric.host_routes6() if str(r) not in ours and r.prefixlen > 0
             and not r.is_link_local and not r.is_multicast]
        if given is not None:
            clash = next((b for b in busy if given.overlaps(b)), None)
            if clash is not None:
                raise InvalidArgument(f"subnet6: {given} overlaps {clash}, which is already in use on this host")
            return given
        pool = ula_pool(self.fabric.table)
        found = next((s for s in pool.subnets(new_prefix=64) if not any(s.overlaps(b) for b in busy)), None)
        if found is None:
            raise InUse(f"no free IPv6 /64 left in {pool} for network '{name}'; give --subnet6")
        return found

    def _create(self, name: str, subnet: ipaddress.IPv4Network | None, nat: bool, isolated: bool,
                v6: ipaddress.IPv6Network | bool | None = None) -> Network:
        try:
            self.store.get_network(name)
            raise AlreadyExists(f"a network named '{name}' already exists")
        except NotFound:
            pass
        nets = self.store.list_networks()
        taken = [ipaddress.IPv4Network(n.subnet) for n in nets]
        ours = {n.subnet for n in nets}
        busy = taken + [r for r in self.fabric.host_routes() if str(r) not in ours and r.prefixlen > 0]
        if subnet is None:
            subnet = next((s for s in POOL.subnets(new_prefix=24) if not any(s.overlaps(b) for b in busy)), None)
            if subnet is None:
                raise InUse(f"no free /24 left in {POOL} for network '{name}'; give --subnet")
        else:
            clash = next((b for b in busy if subnet.overlaps(b)), None)
            if clash is not None:
                raise InvalidArgument(f"subnet: {subnet} overlaps {clash}, which is already in use on this host")
        subnet6 = None if v6 is None else self._pick_subnet6(
            name, nets, v6 if isinstance(v6, ipaddress.IPv6Network) else None)
        net = Network(name=name, index=max([n.index for n in nets], default=-1) + 1, subnet=str(subnet),
                      gateway=str(subnet.network_address + 1), nat=nat, isolated=isolated, created_at=time.time(),
                      subnet6=str(subnet6) if subnet6 else None,
                      gateway6=str(subnet6.network_address + 1) if subnet6 else None)
        self.store.add_network(net)
        try:
            self._ensure_bridge(net)
            self._apply_rules()
        except BaseException:
            self.store.delete_network(net.name)
            self.fabric.remove_network(net.index)
            self._apply_rules()
            raise
        return net

    def remove(self, name: str) -> None:
        with self._lock:
            net = self.get(name)
            users = self.members(net.name)
            if users:
                raise InUse(f"network '{net.name}' is in use by instance(s) "
                            f"{', '.join(i.name for _le, i in users)}; remove them first")
            self.store.delete_network(net.name)
            self.fabric.remove_network(net.index)
            self._apply_rules()
            self._publish_names()

    # -- daemon start / stop --------------------------------------------------------------------------
    def setup(self) -> None:
        """At daemon start: the default network exists, bridges and rules match the store, running instances
        hold their host ports again, the VMs' name server answers."""
        with self._lock:
            try:
                self.store.get_network(DEFAULT)
            except NotFound:
                self._create(DEFAULT, None, nat=True, isolated=False)
            for net in self.store.list_networks():
                if self._clashes(net):
                    continue
                self._ensure_bridge(net)
            self.restore_ports()
            self._apply_rules()
            self._publish_names()

    def _clashes(self, net: Network) -> bool:
        """At start: another interface may have taken this network's subnet while the home was stopped (another
        home's network, made then, or another program). The default network with nobody on it moves to a free
        subnet (True: made anew); any other clash is said loudly, and the network is brought up as it is."""
        others = self.fabric.subnet_users(ipaddress.IPv4Network(net.subnet), net.index)
        if not others:
            return False
        if net.name == DEFAULT and not self.store.list_leases(network=net.name):
            self.store.delete_network(net.name)
            moved = self._create(DEFAULT, None, nat=net.nat, isolated=net.isolated)
            print(f"virtkitd: the default network moved from {net.subnet} to {moved.subnet}: "
                  f"{', '.join(others)} took that subnet while this home was stopped", file=sys.stderr, flush=True)
            return True
        print(f"virtkitd: network '{net.name}' ({net.subnet}) clashes with {', '.join(others)} on this host: its "
              "instances may not reach each other or the host until one of the two goes", file=sys.stderr,
              flush=True)
        return False

    def _ensure_bridge(self, net: Network) -> None:
        v6: dict[str, Any] = {}
        if net.subnet6:
            v6 = {"gateway6": net.gateway6, "prefixlen6": ipaddress.IPv6Network(net.subnet6).prefixlen,
                  "forward6": not net.isolated}
        self.fabric.ensure_network(net.index, net.gateway, ipaddress.IPv4Network(net.subnet).prefixlen, **v6)

    def shutdown(self) -> None:
        """At daemon stop: host ports and the name server are let go (the rules stay: instances run on); with no
        instance on any network, bridges and rules go too (kept in the store, rebuilt at the next start), so a
        stopped home holds no kernel objects."""
        with self._lock:
            self.fabric.close()
            if self.store.list_leases():
                return
            for net in self.store.list_networks():
                self.fabric.remove_network(net.index)
            self._apply_rules(empty=True)

    def _apply_rules(self, empty: bool = False) -> None:
        from virtkit.net.nft import Forward, NetRules, PortRules, Ruleset

        rs = Ruleset(self.fabric.table)
        if not empty:
            nets = {n.name: n for n in self.store.list_networks()}
            rs.networks = [NetRules(self.fabric.bridge_name(n.index), n.subnet, n.nat, n.isolated, n.subnet6)
                           for n in nets.values()]
            by_id = {i.id: i for i in self.store.list_instances()}
            holders = self.fabric.port_holders()
            for le in self.store.list_leases():
                rs.ports.append(PortRules(self.fabric.veth_name(le.instance_id, le.network), le.mac, le.address,
                                          le.address6, link_local_for(le.mac) if le.address6 else None))
                inst = by_id.get(le.instance_id)
                # published ports go to the address on the primary network, while the instance holds them (runs)
                if inst is None or le.network != network_of(inst) or inst.id not in holders:
                    continue
                for p in inst.spec.get("ports") or []:
                    rs.forwards.append(Forward(p.get("host_ip"), p["host_port"], p["proto"], le.address, p["port"],
                                               le.address6))
        self.fabric.apply_rules(rs)

    def _publish_names(self) -> None:
        """Each network's names (instance names and hostnames -> addresses) to the VMs' name server."""
        from virtkit.net.dns import Zone

        try:
            by_id = {i.id: i for i in self.store.list_instances()}
            names: dict[str, dict[str, str]] = {}
            names6: dict[str, dict[str, str]] = {}
            for le in self.store.list_leases():
                inst = by_id.get(le.instance_id)
                if inst is None:
                    continue
                for n in {inst.name, inst.spec.get("hostname") or inst.name}:
                    names.setdefault(le.network, {})[n.lower()] = le.address
                    if le.address6:
                        names6.setdefault(le.network, {})[n.lower()] = le.address6
            zones = {n.gateway: Zone(names.get(n.name, {}), forward=not n.isolated, names6=names6.get(n.name, {}))
                     for n in self.store.list_networks()}
            failed = self.fabric.serve_names(zones)
        except Exception as exc:  # names in VMs are not worth failing a create or rm for
            failed = [str(exc)]
        if failed:
            print(f"virtkitd: VM name server: cannot serve {failed}", file=sys.stderr, flush=True)

    # -- addresses ------------------------------------------------------------------------------------
    def _allocate(self, net: Network, instance: Instance, static: str | None, static6: str | None = None) -> Lease:
        """A lease on `net`: the static addresses asked for, else the lowest free ones (IPv6 too on a network
        with IPv6); the store's unique constraints settle races: the loser takes the next free ones."""
        self._check_static6(net, static6)
        subnet = ipaddress.IPv4Network(net.subnet)
        reserved = {subnet.network_address, subnet.broadcast_address, ipaddress.IPv4Address(net.gateway)}
        if static is not None:
            addr = ipaddress.IPv4Address(static)
            if addr not in subnet or addr in reserved:
                raise InvalidArgument(f"ip: {addr} is not a usable address of network '{net.name}' ({subnet}, "
                                      f"gateway {net.gateway})")
            candidates = [addr]
        else:
            candidates = [a for a in subnet.hosts() if a not in reserved]
        for _ in range(3):
            leases = self.store.list_leases(network=net.name)
            used = {le.address: le for le in leases}
            free = [a for a in candidates if str(a) not in used]
            if not free:
                if static is not None:
                    raise InUse(f"ip: {static} is already in use on network '{net.name}' "
                                f"(by '{self._holder(used[static])}')")
                raise InUse(f"network '{net.name}' has no free address left ({len(used)} in use in {subnet})")
            for addr in free:
                lease = Lease(network=net.name, address=str(addr), instance_id=instance.id, mac=mac_for(str(addr)),
                              created_at=time.time(), address6=self._address6(net, static6, leases))
                try:
                    self.store.add_lease(lease)
                    return lease
                except AlreadyExists:     # taken meanwhile by another create: try the next ones
                    leases = self.store.list_leases(network=net.name)
                    continue
        raise InUse(f"network '{net.name}': could not reserve an address (too much contention); try again")

    def _holder(self, lease: Lease) -> str:
        return next((i.name for i in self.store.list_instances() if i.id == lease.instance_id), lease.instance_id)

    @staticmethod
    def _check_static6(net: Network, static6: str | None) -> None:
        if static6 is None:
            return
        if not net.subnet6:
            raise InvalidArgument(f"ip6: network '{net.name}' has no IPv6 (create it with --ipv6)")
        subnet6, addr = ipaddress.IPv6Network(net.subnet6), ipaddress.IPv6Address(static6)
        if addr not in subnet6 or addr in (subnet6.network_address, ipaddress.IPv6Address(str(net.gateway6))):
            raise InvalidArgument(f"ip6: {addr} is not a usable address of network '{net.name}' ({subnet6}, "
                                  f"gateway {net.gateway6})")

    def _address6(self, net: Network, static6: str | None, leases: builtins.list[Lease]) -> str | None:
        """The IPv6 address of a new lease: the static one if free, else the lowest free one (a /64 never runs
        out; a smaller subnet can)."""
        if not net.subnet6:
            return None
        used = {le.address6: le for le in leases if le.address6}
        if static6 is not None:
            if static6 in used:
                raise InUse(f"ip6: {static6} is already in use on network '{net.name}' "
                            f"(by '{self._holder(used[static6])}')")
            return static6
        subnet6 = ipaddress.IPv6Network(net.subnet6)
        addr = subnet6.network_address + 2                  # ::1 is the gateway
        while addr in subnet6:
            if str(addr) not in used:
                return str(addr)
            addr += 1
        raise InUse(f"network '{net.name}' has no free IPv6 address left ({len(used)} in use in {subnet6})")
