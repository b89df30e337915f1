"""What a virtual network and an address lease are: the records, their parsing and validation, no side effects."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from virtkit.core.errors import InvalidArgument
from virtkit.core.models import Instance

DEFAULT = "default"
NONE = "none"
MIN_PREFIX, MAX_PREFIX = 16, 29
# where subnets are picked when none is given: 10.80.0.0/24 ... 10.127.255.0/24, skipping host routes
POOL = ipaddress.IPv4Network("10.80.0.0/12")
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
    """The instance's primary network: its default route and published ports (None: loopback only, or every
    network disconnected)."""
    name = instance.spec.get("network", DEFAULT)
    return None if name in (None, NONE) else str(name)


def ports_overlap(p: dict[str, Any], q: dict[str, Any]) -> bool:
    """Two published ports want the same host socket: same port and protocol, and the same address or either on
    every address (host_ip None)."""
    return (p["host_port"], p["proto"]) == (q["host_port"], q["proto"]) and \
        (p.get("host_ip") is None or q.get("host_ip") is None or p["host_ip"] == q["host_ip"])
