"""Virtual networks: create, list, inspect, remove; address management (IPAM); what an instance on a network
needs (the NetworkService, an InstanceService hook). Side effects live in `net.fabric`; this decides.

Leases are rows with a unique (network, address) constraint: the store refuses a second holder even when
two creates race, and the loser takes the next free address. Bridges and rules are runtime state rebuilt
from the store at daemon start, and taken down at shutdown when no instance holds an address.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, InvalidState, NotFound
from virtkit.core.models import Instance, validate_name

if TYPE_CHECKING:
    from virtkit.store.base import Store

DEFAULT = "default"
NONE = "none"
MIN_PREFIX, MAX_PREFIX = 16, 29
# where subnets are picked when none is given: 10.80.0.0/24 ... 10.127.255.0/24, skipping host routes
_POOL = ipaddress.IPv4Network("10.80.0.0/12")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|k|m|g)(bit|bps)\s*$", re.IGNORECASE)


@dataclass
class Network:
    name: str
    index: int                   # names the bridge (vkb<home><index>)
    subnet: str                  # "10.77.1.0/24"
    gateway: str                 # the bridge's address, the instances' default route
    nat: bool
    isolated: bool
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Lease:
    network: str
    address: str
    instance_id: str
    mac: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mac_for(address: str) -> str:
    """A locally administered unicast MAC derived from the address (unique on a network, like Docker's)."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def parse_rate(value: Any) -> int:
    """'10mbit', '512kbit', '1gbit', '2mbps' -> bits per second."""
    m = _RATE_RE.match(str(value))
    if not m:
        raise InvalidArgument(f"rate: cannot parse {value!r} (use e.g. 10mbit, 512kbit)")
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if m.group(3).lower() == "bps":
        n *= 8
    if not 8_000 <= n <= 30e9:
        raise InvalidArgument(f"rate: must be between 8kbit and 30gbit (got {value!r})")
    return int(n)


def parse_subnet(value: Any) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"subnet: {value!r} is not an IPv4 network like 10.77.1.0/24 ({exc})") from exc
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidArgument(f"subnet: prefix length must be /{MIN_PREFIX} to /{MAX_PREFIX} (got /{net.prefixlen})")
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise InvalidArgument(f"subnet: {net} is not a private range (use 10/8, 172.16/12 or 192.168/16)")
    return net


def network_of(instance: Instance) -> str | None:
    """The network an instance is on (None: loopback only)."""
    name = instance.spec.get("network", DEFAULT)
    return None if name in (None, NONE) else str(name)


class NetworkService:
    def __init__(self, store: Store, fabric: Any) -> None:
        self.store = store
        self.fabric = fabric          # net.fabric.NetFabric: the side effects
        self._lock = threading.RLock()

    # -- queries --------------------------------------------------------------------------------------
    def get(self, name: str) -> Network:
        return self.store.get_network(name)

    def members(self, name: str) -> list[tuple[Lease, Instance]]:
        by_id = {i.id: i for i in self.store.list_instances()}
        return [(le, by_id[le.instance_id]) for le in self.store.list_leases(network=name) if le.instance_id in by_id]

    def describe(self, net: Network) -> dict[str, Any]:
        d = net.to_dict()
        d["bridge"] = self.fabric.bridge_name(net.index)
        d["instances"] = [{"name": i.name, "address": le.address, "mac": le.mac} for le, i in self.members(net.name)]
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
        with self._lock:
            return self._create(str(name), subnet, bool(req.get("nat")), bool(req.get("isolated")))

    def _create(self, name: str, subnet: ipaddress.IPv4Network | None, nat: bool, isolated: bool) -> Network:
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
            subnet = next((s for s in _POOL.subnets(new_prefix=24) if not any(s.overlaps(b) for b in busy)), None)
            if subnet is None:
                raise InUse(f"no free /24 left in {_POOL} for network '{name}'; give --subnet")
        else:
            clash = next((b for b in busy if subnet.overlaps(b)), None)
            if clash is not None:
                raise InvalidArgument(f"subnet: {subnet} overlaps {clash}, which is already in use on this host")
        net = Network(name=name, index=max([n.index for n in nets], default=-1) + 1, subnet=str(subnet),
                      gateway=str(subnet.network_address + 1), nat=nat, isolated=isolated, created_at=time.time())
        self.store.add_network(net)
        try:
            self.fabric.ensure_network(net.index, net.gateway, subnet.prefixlen)
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

    # -- daemon start / stop --------------------------------------------------------------------------
    def setup(self) -> None:
        """At daemon start: the default network exists, bridges and rules match the store."""
        with self._lock:
            try:
                self.store.get_network(DEFAULT)
            except NotFound:
                self._create(DEFAULT, None, nat=True, isolated=False)
            for net in self.store.list_networks():
                self.fabric.ensure_network(net.index, net.gateway, ipaddress.IPv4Network(net.subnet).prefixlen)
            self._apply_rules()

    def shutdown(self) -> None:
        """At daemon stop: with no instance on any network, take bridges and rules down (kept in the store,
        rebuilt at the next start), so a stopped home holds no kernel objects."""
        with self._lock:
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
            rs.networks = [NetRules(self.fabric.bridge_name(n.index), n.subnet, n.nat, n.isolated)
                           for n in nets.values()]
            by_id = {i.id: i for i in self.store.list_instances()}
            for le in self.store.list_leases():
                rs.ports.append(PortRules(self.fabric.veth_name(le.instance_id, le.network), le.mac, le.address))
                inst = by_id.get(le.instance_id)
                if inst is None or le.network != network_of(inst):
                    continue                # published ports go to the address on the instance's first network
                for p in inst.spec.get("ports") or []:
                    rs.forwards.append(Forward(p.get("host_ip"), p["host_port"], p["proto"], le.address, p["port"]))
        self.fabric.apply_rules(rs)

    # -- addresses ------------------------------------------------------------------------------------
    def _allocate(self, net: Network, instance: Instance, static: str | None) -> Lease:
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
            used = {le.address: le for le in self.store.list_leases(network=net.name)}
            free = [a for a in candidates if str(a) not in used]
            if not free:
                if static is not None:
                    holder = used[static].instance_id
                    who = next((i.name for i in self.store.list_instances() if i.id == holder), holder)
                    raise InUse(f"ip: {static} is already in use on network '{net.name}' (by '{who}')")
                raise InUse(f"network '{net.name}' has no free address left ({len(used)} in use in {subnet})")
            for addr in free:
                lease = Lease(network=net.name, address=str(addr), instance_id=instance.id, mac=mac_for(str(addr)),
                              created_at=time.time())
                try:
                    self.store.add_lease(lease)
                    return lease
                except AlreadyExists:     # taken meanwhile by another create: try the next one
                    continue
        raise InUse(f"network '{net.name}': could not reserve an address (too much contention); try again")

    # -- instance hooks (called by InstanceService) ---------------------------------------------------
    def prepare(self, instance: Instance) -> Callable[[], None] | None:
        name = network_of(instance)
        if name is None:
            return None
        with self._lock:
            try:
                net = self.get(name)
            except NotFound as exc:
                hint = " (virtkitd could not make it: see its log)" if name == DEFAULT else ""
                raise NotFound(f"network: '{name}' not found{hint} (see `virtkit network list`)") from exc
            self._check_ports(instance)
            lease = self._allocate(net, instance, instance.spec.get("ip"))
            try:
                subnet = ipaddress.IPv4Network(net.subnet)
                if instance.type == "container":
                    made = self.fabric.attach(
                        instance_id=instance.id, network=net.name, index=net.index, address=lease.address,
                        prefixlen=subnet.prefixlen, gateway=None if net.isolated else net.gateway, mac=lease.mac)
                else:   # a VM: its VMM opens the TAP; the guest takes address, MAC and gateway from spec["net"]
                    made = self.fabric.attach_tap(instance_id=instance.id, network=net.name, index=net.index)
                instance.spec["net"] = {**made, "network": net.name, "address": lease.address, "mac": lease.mac,
                                        "gateway": net.gateway, "prefixlen": subnet.prefixlen}
                if instance.spec.get("rate") and instance.type == "container":
                    self.fabric.set_rate(instance.id, made["veth"], int(instance.spec["rate"]))
                self._apply_rules()
            except BaseException:
                self._release(instance, lease_only=True)
                raise
        return lambda: self._release(instance)

    def _check_ports(self, instance: Instance) -> None:
        mine = instance.spec.get("ports") or []
        for other in self.store.list_instances():
            if other.id == instance.id:
                continue
            for p in other.spec.get("ports") or []:
                for q in mine:
                    if (p["host_port"], p["proto"]) == (q["host_port"], q["proto"]) and \
                            (p.get("host_ip") is None or q.get("host_ip") is None or p["host_ip"] == q["host_ip"]):
                        raise InUse(f"port: {q['host_port']}/{q['proto']} is already published by '{other.name}'")

    def created(self, instance: Instance) -> None:
        """The instance's files exist: write its hosts file and its peers' (best effort: names only)."""
        name = network_of(instance)
        if name is not None and instance.spec.get("net"):
            self._refresh_hosts({name})

    def _refresh_hosts(self, networks: set[str], also: frozenset[str] = frozenset()) -> None:
        """Rewrite the hosts file of every instance on `networks` (and of the ids in `also`): each one lists
        the instances that share a network with it."""
        from virtkit.net.hosts import render

        try:
            leases = self.store.list_leases()
            by_id = {i.id: i for i in self.store.list_instances()}
            affected = {le.instance_id for le in leases if le.network in networks} | set(also)
            for iid in affected:
                inst = by_id.get(iid)
                if inst is None:
                    continue
                mine = {le.network for le in leases if le.instance_id == iid}
                names = []
                for le in leases:
                    peer = by_id.get(le.instance_id)
                    if le.network in mine and peer is not None and le.instance_id != iid:
                        names.append((le.address, peer.name))
                        if peer.spec.get("hostname") and peer.spec["hostname"] != peer.name:
                            names.append((le.address, peer.spec["hostname"]))
                host = inst.spec.get("hostname") or inst.name
                self.fabric.write_hosts(iid, render(host, (inst.spec.get("net") or {}).get("address"), names))
        except Exception as exc:  # a stale hosts file is not worth failing a create or rm for
            print(f"virtkitd: updating hosts files of {sorted(networks)} failed: {exc}", file=sys.stderr, flush=True)

    def _release(self, instance: Instance, lease_only: bool = False) -> None:
        with self._lock:
            leases = self.store.list_leases(instance_id=instance.id)
            if not leases and lease_only:
                return
            for le in leases:
                self.fabric.remove_interface(self.fabric.veth_name(instance.id, le.network))
            self.fabric.detach(instance.id, (instance.spec.get("net") or {}).get("veth"))
            self.store.delete_leases(instance.id)
            self._apply_rules()
            self._refresh_hosts({le.network for le in leases})

    def removed(self, instance: Instance) -> None:
        if network_of(instance) is not None:
            self._release(instance)

    def starting(self, instance: Instance) -> None:
        """Before a start: the namespace is still pinned (after a host reboot it is not: make it again, with
        the same addresses and MACs, from the leases)."""
        net_spec = instance.spec.get("net")
        if not net_spec or "tap" in net_spec or self.fabric.is_pinned(instance.id):
            return
        with self._lock:
            leases = {le.network: le for le in self.store.list_leases(instance_id=instance.id)}
            for le in leases.values():
                self.fabric.remove_interface(self.fabric.veth_name(instance.id, le.network))
            self.fabric.detach(instance.id, None)
            primary = self.get(net_spec["network"])
            subnet = ipaddress.IPv4Network(primary.subnet)
            self.fabric.attach(instance_id=instance.id, network=primary.name, index=primary.index,
                               address=net_spec["address"], prefixlen=subnet.prefixlen,
                               gateway=None if primary.isolated else primary.gateway, mac=net_spec["mac"])
            for name, extra in (instance.spec.get("net_extra") or {}).items():
                net = self.get(name)
                self.fabric.add_interface(instance_id=instance.id, veth=extra["veth"], index=net.index,
                                          address=extra["address"], mac=extra["mac"], ifname=extra["ifname"],
                                          prefixlen=ipaddress.IPv4Network(net.subnet).prefixlen)
            if instance.spec.get("rate"):
                self.fabric.set_rate(instance.id, net_spec["veth"], int(instance.spec["rate"]))

    # -- connect / disconnect a (running or stopped) instance -----------------------------------------
    def connect(self, network: str, instance_name: str, ip: str | None = None) -> dict[str, Any]:
        """One more interface (eth1, eth2 ...) on `network`, without a default route (that stays on eth0)."""
        if ip is not None:
            from virtkit.core.options import validate_network_options

            ip = validate_network_options({"ip": ip})["ip"]
        with self._lock:
            inst = self.store.get_instance(instance_name)
            net = self.get(network)
            if not inst.spec.get("net") or "tap" in inst.spec["net"]:
                raise InvalidState(f"instance '{inst.name}' has no namespace of virtkit's to connect "
                                   "(--network none, or a VM)")
            if any(le.network == net.name for le in self.store.list_leases(instance_id=inst.id)):
                raise AlreadyExists(f"instance '{inst.name}' is already on network '{net.name}'")
            extra = dict(inst.spec.get("net_extra") or {})
            used = {"eth0"} | {e["ifname"] for e in extra.values()}
            ifname = next(f"eth{i}" for i in range(1, 64) if f"eth{i}" not in used)
            lease = self._allocate(net, inst, ip)
            veth = self.fabric.veth_name(inst.id, net.name)
            try:
                self.fabric.add_interface(instance_id=inst.id, veth=veth, index=net.index, address=lease.address,
                                          prefixlen=ipaddress.IPv4Network(net.subnet).prefixlen, mac=lease.mac,
                                          ifname=ifname)
                extra[net.name] = {"veth": veth, "ifname": ifname, "address": lease.address, "mac": lease.mac}
                inst = self.store.update_instance(inst.id, spec={**inst.spec, "net_extra": extra})
                self._apply_rules()
            except BaseException:
                self.fabric.remove_interface(veth)
                self.store.delete_leases(inst.id, network=net.name)
                self._apply_rules()
                raise
            self._refresh_hosts({net.name} | set(extra))
            return {"network": net.name, "instance": inst.name, **extra[net.name]}

    def disconnect(self, network: str, instance_name: str) -> None:
        with self._lock:
            inst = self.store.get_instance(instance_name)
            net = self.get(network)
            extra = dict(inst.spec.get("net_extra") or {})
            if network_of(inst) == net.name:
                raise InvalidArgument(f"network: '{net.name}' is the network instance '{inst.name}' was created "
                                      "on; only networks added with `network connect` can be disconnected")
            if net.name not in extra:
                raise NotFound(f"instance '{inst.name}' is not connected to network '{net.name}'")
            self.fabric.remove_interface(extra.pop(net.name)["veth"])
            self.store.delete_leases(inst.id, network=net.name)
            self.store.update_instance(inst.id, spec={**inst.spec, "net_extra": extra})
            self._apply_rules()
            self._refresh_hosts({net.name} | set(extra) | {network_of(inst) or ""}, also=frozenset({inst.id}))
