"""nftables rules of one virtkit home, generated as JSON and applied atomically through libnftables (net/libnft.py;
`nft -j -f -` where the library cannot be loaded).

Two tables per home, both named virtkit_<homeid>, rebuilt whole on every change (one transaction: the
kernel swaps old for new, so there is never a moment without rules):
- inet: NAT (masquerade of --nat networks, DNAT of published ports, hairpin), and forwarding policy
  (no traffic between two virtkit bridges, none out of an --isolated network).
- bridge: anti-spoofing on each instance's port: frames must carry the MAC, and IPv4/ARP the address,
  that virtkit gave it. IPv6 passes only on a network with IPv6, and only from the instance's own address, its
  link-local one (NDP, MLD) or none (::, duplicate address detection); neighbour advertisements only for those
  two; router advertisements and redirects never (the gateway is the only router).

IPv6 is NATed as IPv4 is (masquerade out of --nat networks, DNAT of published ports, hairpin), as Docker does.
Published ports reach the instance's IPv6 address from the host's IPv6 addresses; not [::1] (IPv6 has no
route_localnet: the kernel never sends a packet from ::1 out of a real interface): net.relay carries that one.

Published ports on 127.0.0.1 use output-chain DNAT plus route_localnet on the bridge (set where the bridge is
made) and masquerade of 127.0.0.0/8 sources: the kernel forwards a loopback-sourced packet out of a real
interface only with route_localnet, and the masquerade gives the instance an address it can answer to.
This keeps a single kernel path (no userland proxy process per port).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from virtkit.core.errors import SystemFailure, Unsupported

BRIDGE_GLOB = "vkb*"       # every virtkit bridge of every home


@dataclass
class NetRules:
    bridge: str
    subnet: str            # "10.77.1.0/24"
    nat: bool
    isolated: bool
    subnet6: str | None = None


@dataclass
class PortRules:
    veth: str              # host side of the instance's veth
    mac: str
    address: str
    address6: str | None = None      # None: no IPv6 from this port at all
    link_local: str | None = None


@dataclass
class Forward:
    host_ip: str | None    # None: every local address
    host_port: int
    proto: str             # tcp | udp
    address: str
    port: int
    address6: str | None = None   # also forwarded from the host's IPv6 addresses (only when host_ip is None)


@dataclass
class Ruleset:
    table: str
    networks: list[NetRules] = field(default_factory=list)
    ports: list[PortRules] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def _chain(family: str, table: str, name: str, ctype: str, hook: str, prio: int) -> dict[str, Any]:
    return {"add": {"chain": {"family": family, "table": table, "name": name, "type": ctype, "hook": hook,
                              "prio": prio, "policy": "accept"}}}


def _rule(family: str, table: str, chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}}


def _dnat_rules(rs: Ruleset, chain: str) -> list[dict[str, Any]]:
    out = []
    for f in rs.forwards:
        local = _m({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
        port = [_m(_meta("l4proto"), f.proto), _m(_payload(f.proto, "dport"), f.host_port)]
        expr = [local]
        if f.host_ip:
            expr.append(_m(_payload("ip", "daddr"), f.host_ip))
        expr += [*port, {"dnat": {"family": "ip", "addr": f.address, "port": f.port}}]
        out.append(_rule("inet", rs.table, chain, *expr))
        if f.address6 and not f.host_ip:
            out.append(_rule("inet", rs.table, chain, local, _m(_meta("nfproto"), "ipv6"),
                             _m(_payload("ip6", "daddr"), "::1", "!="), *port,
                             {"dnat": {"family": "ip6", "addr": f.address6, "port": f.port}}))
    return out


def _masquerade_rules(rs: Ruleset, n: NetRules) -> list[dict[str, Any]]:
    """Loopback-sourced forwards and hairpin (an instance to a published port of its own network), and with
    --nat what leaves the network; IPv6 the same, when the network has it."""
    oif, out = _meta("oifname"), []
    dnat = _m({"ct": {"key": "status"}}, "dnat", "in")
    out.append(_rule("inet", rs.table, "postrouting", _m(oif, n.bridge),
                     _m(_payload("ip", "saddr"), _prefix("127.0.0.0/8")), {"masquerade": None}))
    for fam, subnet in (("ip", n.subnet), ("ip6", n.subnet6)):
        if subnet is None:
            continue
        src = _m(_payload(fam, "saddr"), _prefix(subnet))
        out.append(_rule("inet", rs.table, "postrouting", _m(oif, n.bridge), src, dnat, {"masquerade": None}))
        if n.nat and not n.isolated:
            out.append(_rule("inet", rs.table, "postrouting", _m(oif, n.bridge, "!="), src, {"masquerade": None}))
    return out


ICMPV6 = 58
ND_ROUTER_ADVERT, ND_NEIGHBOR_ADVERT, ND_REDIRECT = 134, 136, 137


def _th(offset: int, length: int) -> dict[str, Any]:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _port_rules6(rs: Ruleset, p: PortRules) -> list[dict[str, Any]]:
    """IPv6 from an instance's port: its own addresses only (see the module's docstring). ICMPv6 fields are read
    at the transport header the kernel found (past extension headers), so a hop-by-hop header hides nothing."""
    iif = _m(_meta("iifname"), p.veth)
    if p.address6 is None:
        return [_rule("bridge", rs.table, "prerouting", iif, _m(_payload("ether", "type"), "ip6"), {"drop": None})]
    own = [p.address6, *([p.link_local] if p.link_local else [])]
    icmp = _m(_meta("l4proto"), ICMPV6)
    # the target of an advertisement, as one 128-bit number (nft 1.0.6 has no name for the field)
    targets = {"set": [hex(int(ipaddress.IPv6Address(a))) for a in own]}
    return [
        _rule("bridge", rs.table, "prerouting", iif, _m(_payload("ip6", "saddr"), {"set": [*own, "::"]}, "!="),
              {"drop": None}),
        _rule("bridge", rs.table, "prerouting", iif, icmp,
              _m(_th(0, 8), {"set": [ND_ROUTER_ADVERT, ND_REDIRECT]}), {"drop": None}),
        _rule("bridge", rs.table, "prerouting", iif, icmp, _m(_th(0, 8), ND_NEIGHBOR_ADVERT),
              _m(_th(64, 128), targets, "!="), {"drop": None}),
    ]


def build(rs: Ruleset, replace: bool = True) -> list[dict[str, Any]]:
    """The commands that make this home's tables what `rs` describes (or just remove them).

    replace=True deletes the tables and makes them anew. replace=False keeps the tables and their chains and
    swaps only the rules (flush, then add; one transaction too): deleting a chain on a hook unregisters the hook,
    which waits for an RCU grace period (~12 ms of a ~15 ms `nft` run here), on every instance's create and rm.
    """
    cmds: list[dict[str, Any]] = []
    for family in ("inet", "bridge"):
        ref = {"family": family, "name": rs.table}
        if replace or not rs.networks:
            cmds += [{"add": {"table": ref}}, {"delete": {"table": ref}}]
        else:
            cmds += [{"add": {"table": ref}}, {"flush": {"table": ref}}]
    if not rs.networks:
        return cmds
    t, i = rs.table, "inet"
    if replace:
        cmds.append({"add": {"table": {"family": i, "name": t}}})
    cmds += [_chain(i, t, "prerouting", "nat", "prerouting", -100), _chain(i, t, "output", "nat", "output", -100),
             _chain(i, t, "postrouting", "nat", "postrouting", 100),
             _chain(i, t, "forward", "filter", "forward", 0)]
    cmds += _dnat_rules(rs, "prerouting") + _dnat_rules(rs, "output")
    for n in rs.networks:
        cmds += _masquerade_rules(rs, n)
    # forward: answers to published ports pass; then no bridge-to-bridge traffic, nothing out of isolated nets
    cmds.append(_rule(i, t, "forward", _m({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}))
    for n in rs.networks:
        iif, oif = _meta("iifname"), _meta("oifname")
        if n.isolated:
            cmds.append(_rule(i, t, "forward", _m(iif, n.bridge), _m(oif, n.bridge, "!="), {"drop": None}))
            cmds.append(_rule(i, t, "forward", _m(oif, n.bridge), _m(iif, n.bridge, "!="), {"drop": None}))
        cmds.append(_rule(i, t, "forward", _m(iif, n.bridge), _m(oif, BRIDGE_GLOB), _m(oif, n.bridge, "!="),
                          {"drop": None}))
    b = "bridge"
    if replace:
        cmds.append({"add": {"table": {"family": b, "name": t}}})
    cmds.append(_chain(b, t, "prerouting", "filter", "prerouting", -200))
    for p in rs.ports:
        iif = _m(_meta("iifname"), p.veth)
        cmds.append(_rule(b, t, "prerouting", iif, _m(_payload("ether", "saddr"), p.mac, "!="), {"drop": None}))
        cmds.append(_rule(b, t, "prerouting", iif, _m(_payload("ether", "type"), "arp"),
                          _m(_payload("arp", "saddr ip"), p.address, "!="), {"drop": None}))
        cmds.append(_rule(b, t, "prerouting", iif, _m(_payload("ether", "type"), "arp"),
                          _m(_payload("arp", "saddr ether"), p.mac, "!="), {"drop": None}))
        cmds.append(_rule(b, t, "prerouting", iif, _m(_payload("ether", "type"), "ip"),
                          _m(_payload("ip", "saddr"), p.address, "!="), {"drop": None}))
        cmds += _port_rules6(rs, p)
    return cmds


def _nft() -> str | None:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def apply(rs: Ruleset) -> None:
    from virtkit.net import libnft

    lib = libnft.shared()
    nft = None if lib is not None else _nft()
    if lib is None and nft is None:
        raise Unsupported("nft not found: install Debian's nftables package (virtual networks need it)")
    # the rules swapped in the tables as they are; if that fails (say, a chain of an older virtkit with other hook
    # settings), the tables made anew
    for replace in (False, True):
        doc = json.dumps({"nftables": build(rs, replace=replace)})
        if lib is not None:
            error = lib.run(doc)
        else:
            r = subprocess.run([str(nft), "-j", "-f", "-"], input=doc.encode(), capture_output=True, timeout=30)
            error = r.stderr.decode(errors="replace").strip() if r.returncode else None
        if error is None:
            return
    raise SystemFailure(f"nft: {error}")


def table_exists(table: str) -> list[str]:
    """Families in which a table of this name exists (leak checks)."""
    nft = _nft()
    if nft is None:
        return []
    r = subprocess.run([nft, "-j", "list", "tables"], capture_output=True, timeout=30)
    if r.returncode != 0:
        return []
    found = []
    for item in json.loads(r.stdout or b"{}").get("nftables", []):
        tb = item.get("table")
        if tb and tb.get("name") == table:
            found.append(str(tb["family"]))
    return found
