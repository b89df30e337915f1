"""`virtkit network ...`: create, list, show, remove virtual networks."""

from __future__ import annotations

import argparse
import json

from virtkit.cli.commands import each, table
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


def add_parser(sub: Any) -> None:
    net = sub.add_parser("network", help="manage virtual networks").add_subparsers(dest="network_cmd", required=True)
    c = net.add_parser("create", help="create a network (a bridge with address management)")
    c.add_argument("name")
    c.add_argument("--subnet", help="IPv4 subnet, e.g. 10.77.1.0/24 (default: a free /24)")
    c.add_argument("--nat", action="store_true", help="masquerade traffic leaving the host")
    c.add_argument("--isolated", action="store_true", help="no route out of the network")
    c.add_argument("--ipv6", action="store_true", help="IPv6 too: each instance also gets an IPv6 address")
    c.add_argument("--subnet6", help="IPv6 subnet, e.g. fd00:77:1::/64 (default: a free /64 of a ULA prefix; "
                                     "implies --ipv6)")
    ls = net.add_parser("list", aliases=["ls"], help="list networks")
    ls.add_argument("--json", action="store_true")
    sh = net.add_parser("show", aliases=["inspect"], help="show a network as JSON")
    sh.add_argument("name")
    co = net.add_parser("connect", help="add an interface on NETWORK to an instance (running or not)")
    co.add_argument("network")
    co.add_argument("instance")
    co.add_argument("--ip", help="static address on the network")
    co.add_argument("--ip6", help="static IPv6 address on the network")
    dc = net.add_parser("disconnect", help="remove an instance's interface on NETWORK (its primary one too: its "
                                          "published ports go with it; connect makes a new primary)")
    dc.add_argument("network")
    dc.add_argument("instance")
    rm = net.add_parser("rm", help="remove networks (not while an instance is on them)")
    rm.add_argument("names", nargs="+")


def cmd_network(c: Client, a: argparse.Namespace) -> int:
    sub = {"ls": "list", "inspect": "show"}.get(a.network_cmd, a.network_cmd)
    if sub == "create":
        net = c.create_network(a.name, a.subnet, nat=a.nat, isolated=a.isolated, ipv6=a.ipv6, subnet6=a.subnet6)
        print(net["name"])
        return 0
    if sub == "list":
        nets = c.networks()
        if a.json:
            print(json.dumps(nets, indent=2))
            return 0
        table(["NAME", "SUBNET", "GATEWAY", "SUBNET6", "BRIDGE", "MODE", "INSTANCES"],
              [[n["name"], n["subnet"], n["gateway"], n.get("subnet6") or "-", n["bridge"],
                "isolated" if n["isolated"] else ("nat" if n["nat"] else "routed"),
                ",".join(i["name"] for i in n["instances"]) or "-"] for n in nets])
        return 0
    if sub == "show":
        print(json.dumps(c.network(a.name), indent=2))
        return 0
    if sub == "rm":
        return each(a.names, c.remove_network)
    if sub == "connect":
        made = c.connect_network(a.network, a.instance, ip=a.ip, ip6=a.ip6)
        print(" ".join(made[k] for k in ("instance", "ifname", "address", "address6") if made.get(k)))
        return 0
    if sub == "disconnect":
        c.disconnect_network(a.network, a.instance)
        return 0
    raise InvalidArgument(f"unknown network command {a.network_cmd!r}")
