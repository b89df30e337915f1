"""What instances do on networks: the InstanceService hooks (prepare, created, starting, stopped, removed), host
ports, connect and disconnect, hosts files. A mixin of core.networks.NetworkService.

Host ports follow Docker: only a running instance holds its published ports. They are checked at create (so a
`run` that cannot have them fails before anything is made) and taken at start: against the ports of the other
running instances of this home (the store) and against the host (a bind, kept while the instance runs: see
net.ports). A stopped or merely created instance holds none; its forwards are not in the rules.

An instance's primary network (spec "network", its attachment spec "net") carries its default route and its
published ports; `network connect` adds eth1, eth2 ... without a route. Disconnecting the primary network leaves
loopback and the other networks, and no published ports, until a network is connected again: that one becomes
primary (eth0, the default route, the ports back).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import AlreadyExists, InUse, InvalidState, NotFound
from virtkit.core.models import Instance
from virtkit.core.network_model import NONE, Lease, Network, network_of, ports_overlap

if TYPE_CHECKING:
    from virtkit.store.base import Store

LIVE_STATES = ("running", "paused")


def _describe(port: dict[str, Any]) -> str:
    return f"{port.get('host_ip') or '0.0.0.0'}:{port['host_port']}/{port['proto']}"


def _with_relay(instance: Instance) -> list[dict[str, Any]]:
    """Its published ports; a TCP one on every address also says where [::1] goes when the instance has an IPv6
    address on its primary network (net.relay: DNAT cannot carry ::1)."""
    addr6 = (instance.spec.get("net") or {}).get("address6")
    return [{**p, "relay6": addr6} if addr6 and p.get("host_ip") is None and p["proto"] == "tcp" else p
            for p in instance.spec.get("ports") or []]


def _v6(net: Network, address6: str | None, route: bool) -> dict[str, Any]:
    """The IPv6 side of an interface on `net` (none on a network without IPv6); a default route only with
    `route`, never on an isolated network."""
    if not address6 or not net.subnet6:
        return {}
    return {"address6": address6, "prefixlen6": ipaddress.IPv6Network(net.subnet6).prefixlen,
            "gateway6": net.gateway6 if route and not net.isolated else None}


class InstanceNetworking:
    store: Store
    fabric: Any
    _lock: Any
    # whether an instance runs now (virtkitd asks the drivers; by default the stored state)
    live: Callable[[Instance], bool]
    # ids between their starting hook and the end of their start: they hold their ports, though their record does
    # not say "running" yet
    _starting: set[str]

    if TYPE_CHECKING:
        def get(self, name: str) -> Network: ...
        def _allocate(self, net: Network, instance: Instance, static: str | None,
                      static6: str | None = None) -> Lease: ...
        def _apply_rules(self, empty: bool = False) -> None: ...
        def _publish_names(self) -> None: ...

    # -- hooks ----------------------------------------------------------------------------------------
    def prepare(self, instance: Instance) -> Callable[[], None] | None:
        name = network_of(instance)
        if name is None:
            return None
        with self._lock:
            try:
                net = self.get(name)
            except NotFound as exc:
                hint = " (virtkitd could not make it: see its log)" if name == "default" else ""
                raise NotFound(f"network: '{name}' not found{hint} (see `virtkit network list`)") from exc
            self._check_ports(instance, hold=False)
            lease = self._allocate(net, instance, instance.spec.get("ip"), instance.spec.get("ip6"))
            try:
                subnet = ipaddress.IPv4Network(net.subnet)
                route = None if net.isolated else net.gateway
                v6 = _v6(net, lease.address6, route=True)
                if instance.type == "container":
                    made = self.fabric.attach(
                        instance_id=instance.id, network=net.name, index=net.index, address=lease.address,
                        prefixlen=subnet.prefixlen, gateway=route, mac=lease.mac, **v6)
                    extra: dict[str, Any] = {"gateway": net.gateway}
                else:   # a VM: its VMM opens the TAP; the guest's /init configures eth0 and its resolver from these
                    made = self.fabric.attach_tap(instance_id=instance.id, network=net.name, index=net.index)
                    extra = {"gateway": route, "dns": net.gateway}
                instance.spec["net"] = {**made, "network": net.name, "address": lease.address, "mac": lease.mac,
                                        "prefixlen": subnet.prefixlen, **extra, **v6}
                if instance.spec.get("rate") and instance.type == "container":
                    self.fabric.set_rate(instance.id, made["veth"], int(instance.spec["rate"]))
                self._apply_rules()
            except BaseException:
                self._release(instance, lease_only=True)
                raise
        return lambda: self._release(instance)

    def created(self, instance: Instance) -> None:
        """The instance's files exist: write its hosts file and its peers' (best effort: names only)."""
        name = network_of(instance)
        if name is not None and instance.spec.get("net"):
            self._refresh_hosts({name})

    def starting(self, instance: Instance) -> None:
        """Before a start: take its host ports; the namespace is still pinned (after a host reboot it is not:
        make it again, with the same addresses and MACs, from the spec)."""
        net_spec = instance.spec.get("net")
        if not net_spec:
            return
        with self._lock:
            if "tap" not in net_spec and not self.fabric.is_pinned(instance.id):
                self._rebuild(instance)
            held = instance.id in self.fabric.port_holders()
            self._check_ports(instance, hold=True)
            self._starting.add(instance.id)
            if held or instance.spec.get("ports"):
                self._apply_rules()

    def stopped(self, instance: Instance) -> None:
        """It stopped (or its start failed): its host ports are free again."""
        with self._lock:
            self._starting.discard(instance.id)
            if instance.id in self.fabric.port_holders():
                self.fabric.release_ports(instance.id)
                self._apply_rules()

    def removed(self, instance: Instance) -> None:
        if instance.spec.get("net"):
            self._release(instance)

    def renamed(self, before: Instance, after: Instance) -> None:
        """Its names follow on every network it is on: peers' hosts files and the VMs' name server know the new
        name, not the old. A container keeps the kernel hostname it was made with (as Docker's); its own hosts
        file goes on listing that one for its address (spec "uts_hostname"), peers' files do not."""
        if not after.spec.get("net"):
            return
        with self._lock:
            if after.type == "container" and not after.spec.get("hostname") and not after.spec.get("uts_hostname"):
                after = self.store.update_instance(after.id, spec={**after.spec, "uts_hostname": before.name})
            self._refresh_hosts({le.network for le in self.store.list_leases(instance_id=after.id)},
                                also=frozenset({after.id}))

    def _rebuild(self, instance: Instance) -> None:
        net_spec = instance.spec["net"]
        leases = self.store.list_leases(instance_id=instance.id)
        for le in leases:
            self.fabric.remove_interface(self.fabric.veth_name(instance.id, le.network))
        self.fabric.detach(instance.id, None)
        if net_spec.get("network"):
            primary = self.get(net_spec["network"])
            subnet = ipaddress.IPv4Network(primary.subnet)
            self.fabric.attach(instance_id=instance.id, network=primary.name, index=primary.index,
                               address=net_spec["address"], prefixlen=subnet.prefixlen,
                               gateway=None if primary.isolated else primary.gateway, mac=net_spec["mac"],
                               **_v6(primary, net_spec.get("address6"), route=True))
        else:
            self.fabric.ensure_netns(instance.id)
        for name, extra in (instance.spec.get("net_extra") or {}).items():
            net = self.get(name)
            self.fabric.add_interface(instance_id=instance.id, veth=extra["veth"], index=net.index,
                                      address=extra["address"], mac=extra["mac"], ifname=extra["ifname"],
                                      prefixlen=ipaddress.IPv4Network(net.subnet).prefixlen,
                                      **_v6(net, extra.get("address6"), route=False))
        if instance.spec.get("rate") and net_spec.get("veth"):
            self.fabric.set_rate(instance.id, net_spec["veth"], int(instance.spec["rate"]))

    def _release(self, instance: Instance, lease_only: bool = False) -> None:
        with self._lock:
            leases = self.store.list_leases(instance_id=instance.id)
            self.fabric.release_ports(instance.id)
            self._starting.discard(instance.id)
            if not leases and lease_only:
                return
            for le in leases:
                self.fabric.remove_interface(self.fabric.veth_name(instance.id, le.network))
            self.fabric.detach(instance.id, (instance.spec.get("net") or {}).get("veth"))
            self.store.delete_leases(instance.id)
            self._apply_rules()
            self._refresh_hosts({le.network for le in leases})

    # -- host ports -----------------------------------------------------------------------------------
    def _check_ports(self, instance: Instance, hold: bool) -> None:
        """Refuse ports another running instance holds, or the host has in use; with `hold`, take them."""
        mine = instance.spec.get("ports") or []
        if not mine or network_of(instance) is None:
            if hold:
                self.fabric.release_ports(instance.id)
            return
        by_id = {i.id: i for i in self.store.list_instances()}
        for iid in sorted(self.fabric.port_holders() - {instance.id}):
            other = by_id.get(iid)
            clash = next((q for p in (other.spec.get("ports") or []) for q in mine if ports_overlap(p, q)), None) \
                if other is not None else None
            if clash is None:
                continue
            if other is None or not self._holds(other):
                self.fabric.release_ports(iid)      # it stopped unnoticed: a stopped instance holds no port
                continue
            raise InUse(f"port: host port {_describe(clash)} is already allocated to instance '{other.name}'")
        if hold:
            self.fabric.reserve_ports(instance.id, _with_relay(instance))
        else:
            self.fabric.probe_ports(_with_relay(instance))

    def _holds(self, other: Instance) -> bool:
        if other.state in LIVE_STATES:
            return self.live(other)                 # asks the driver: it may have exited since
        return other.id in self._starting           # its start is under way (or the record is not written yet)

    def restore_ports(self) -> None:
        """At daemon start: running instances take their ports again (a port the host took meanwhile is lost:
        said in the log, its forward left out)."""
        by_id = {i.id: i for i in self.store.list_instances()}
        for inst in by_id.values():
            if not inst.spec.get("ports") or inst.state not in LIVE_STATES or network_of(inst) is None:
                continue
            try:
                if self.live(inst):
                    self.fabric.reserve_ports(inst.id, _with_relay(inst))
            except Exception as exc:
                print(f"virtkitd: instance '{inst.name}' lost its published ports: {exc}", file=sys.stderr,
                      flush=True)

    # -- connect / disconnect a (running or stopped) instance -----------------------------------------
    def connect(self, network: str, instance_name: str, ip: str | None = None,
                ip6: str | None = None) -> dict[str, Any]:
        """One more interface (eth1, eth2 ...) on `network`, without a default route (that stays on eth0); on an
        instance with no network left, eth0 with the default route and its published ports."""
        if ip is not None or ip6 is not None:
            from virtkit.core.options import validate_network_options

            asked = validate_network_options({"ip": ip, "ip6": ip6})
            ip, ip6 = asked["ip"], asked.get("ip6")
        with self._lock:
            inst = self.store.get_instance(instance_name)
            net = self.get(network)
            if not inst.spec.get("net") or "tap" in inst.spec["net"]:
                raise InvalidState(f"instance '{inst.name}' has no namespace of virtkit's to connect "
                                   "(--network none, or a VM)")
            if any(le.network == net.name for le in self.store.list_leases(instance_id=inst.id)):
                raise AlreadyExists(f"instance '{inst.name}' is already on network '{net.name}'")
            before = inst.spec
            primary = network_of(inst) is None
            extra = dict(inst.spec.get("net_extra") or {})
            used = {"eth0"} | {e["ifname"] for e in extra.values()}
            ifname = "eth0" if primary else next(f"eth{i}" for i in range(1, 64) if f"eth{i}" not in used)
            lease = self._allocate(net, inst, ip, ip6)
            veth = self.fabric.veth_name(inst.id, net.name)
            prefixlen = ipaddress.IPv4Network(net.subnet).prefixlen
            made = {"veth": veth, "ifname": ifname, "address": lease.address, "mac": lease.mac,
                    **({"address6": lease.address6} if lease.address6 else {})}
            v6 = _v6(net, lease.address6, route=primary)
            try:
                self.fabric.add_interface(instance_id=inst.id, veth=veth, index=net.index, address=lease.address,
                                          prefixlen=prefixlen, mac=lease.mac, ifname=ifname,
                                          gateway=net.gateway if primary and not net.isolated else None, **v6)
                if primary:
                    spec = {**inst.spec, "network": net.name,
                            "net": {**inst.spec["net"], **made, "network": net.name, "gateway": net.gateway,
                                    "prefixlen": prefixlen, **v6}}
                    inst = self.store.update_instance(inst.id, spec=spec)
                    if inst.spec.get("rate"):
                        self.fabric.set_rate(inst.id, veth, int(inst.spec["rate"]))
                    if inst.spec.get("ports") and self.live(inst):
                        self._check_ports(inst, hold=True)
                else:
                    extra[net.name] = made
                    inst = self.store.update_instance(inst.id, spec={**inst.spec, "net_extra": extra})
                self._apply_rules()
            except BaseException:
                self.fabric.remove_interface(veth)
                self.store.delete_leases(inst.id, network=net.name)
                self.store.update_instance(inst.id, spec=before)
                if primary:
                    self.fabric.release_ports(inst.id)
                self._apply_rules()
                raise
            self._refresh_hosts({net.name} | set(extra), also=frozenset({inst.id}))
            return {"network": net.name, "instance": inst.name, **made}

    def disconnect(self, network: str, instance_name: str) -> None:
        """Remove the instance's interface on `network`; on its primary network, its published ports go too."""
        with self._lock:
            inst = self.store.get_instance(instance_name)
            net = self.get(network)
            extra = dict(inst.spec.get("net_extra") or {})
            net_spec = inst.spec.get("net") or {}
            if network_of(inst) == net.name and net_spec.get("network") == net.name:
                if "tap" in net_spec:
                    raise InvalidState(f"instance '{inst.name}' is a VM: its network card cannot be removed "
                                       "(no hot-unplug); remove the VM or create it on another network")
                self.fabric.release_ports(inst.id)
                self.fabric.remove_interface(net_spec["veth"])
                self.store.delete_leases(inst.id, network=net.name)
                # the namespace stays (loopback, the other networks); the next connect makes a new primary
                spec = {**inst.spec, "network": NONE, "net": {"netns": net_spec["netns"]}}
            elif net.name in extra:
                self.fabric.remove_interface(extra.pop(net.name)["veth"])
                self.store.delete_leases(inst.id, network=net.name)
                spec = {**inst.spec, "net_extra": extra}
            else:
                raise NotFound(f"instance '{inst.name}' is not connected to network '{net.name}'")
            self.store.update_instance(inst.id, spec=spec)
            self._apply_rules()
            self._refresh_hosts({net.name} | set(extra) | {network_of(inst) or ""}, also=frozenset({inst.id}))

    # -- names ----------------------------------------------------------------------------------------
    def _refresh_hosts(self, networks: set[str], also: frozenset[str] = frozenset()) -> None:
        """Rewrite the hosts file of every instance on `networks` (and of the ids in `also`): each one lists
        the instances that share a network with it. The VMs' name server is told too."""
        from virtkit.net.hosts import render

        try:
            leases = self.store.list_leases()
            by_id = {i.id: i for i in self.store.list_instances()}
            affected = {le.instance_id for le in leases if le.network in networks} | set(also)
            for iid in affected:
                inst = by_id.get(iid)
                if inst is None or "tap" in (inst.spec.get("net") or {}):
                    continue
                mine = {le.network for le in leases if le.instance_id == iid}
                names = []
                for le in leases:
                    peer = by_id.get(le.instance_id)
                    if le.network in mine and peer is not None and le.instance_id != iid:
                        for addr in (le.address, le.address6):
                            if addr:
                                names.append((addr, peer.name))
                            if addr and peer.spec.get("hostname") and peer.spec["hostname"] != peer.name:
                                names.append((addr, peer.spec["hostname"]))
                host = inst.spec.get("hostname") or inst.name
                aliases = [a for a in (inst.spec.get("uts_hostname"),) if a and a != host]
                own = inst.spec.get("net") or {}
                self.fabric.write_hosts(iid, render(host, own.get("address"), names, aliases, own.get("address6")))
        except Exception as exc:  # a stale hosts file is not worth failing a create or rm for
            print(f"virtkitd: updating hosts files of {sorted(networks)} failed: {exc}", file=sys.stderr, flush=True)
        self._publish_names()
