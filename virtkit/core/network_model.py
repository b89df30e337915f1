"""What a virtual network and an address lease are: the records, their parsing and validation, no side effects."""

from __future__ import annotations

import hashlib
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
# IPv6 (opt-in per network): a /64 of a ULA /48 (RFC 4193) whose global id comes from the home's id, so two
# homes pick apart; any size from /48 to /120 when given
MIN_PREFIX6, MAX_PREFIX6 = 48, 120
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
    subnet6: str | None = None   # "fd12:3456:789a:1::/64" when the network has IPv6
    gateway6: str | None = None  # the bridge's IPv6 address, the instances' default IPv6 route

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Lease:
    network: str
    address: str
    instance_id: str
    mac: str
    created_at: float
    address6: str | None = None  # on a network with IPv6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mac_for(address: str) -> str:
    """A locally administered unicast MAC derived from the address (unique on a network, like Docker's)."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def link_local_for(mac: str) -> str:
    """The link-local IPv6 address the kernel gives an interface with this MAC (modified EUI-64, RFC 4291)."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def ula_pool(home_key: str) -> ipaddress.IPv6Network:
    """The /48 this home picks IPv6 subnets from: fd00::/8 plus a 40-bit global id from the home's key."""
    gid = hashlib.sha256(home_key.encode()).digest()[:5]
    return ipaddress.IPv6Network((b"\xfd" + gid + bytes(10), 48))


def _network(value: Any, version: int, field: str, example: str, lo: int, hi: int) -> Any:
    """`value` as an IPv4 or IPv6 network of prefix length lo..hi; else InvalidArgument naming `field`."""
    cls: Any = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    try:
        net = cls(str(value), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {value!r} is not an IPv{version} network like {example} ({exc})") from exc
    if not lo <= net.prefixlen <= hi:
        raise InvalidArgument(f"{field}: prefix length must be /{lo} to /{hi} (got /{net.prefixlen})")
    return net


def parse_subnet6(value: Any) -> ipaddress.IPv6Network:
    net: ipaddress.IPv6Network = _network(value, 6, "subnet6", "fd00:77:1::/64", MIN_PREFIX6,
                                          MAX_PREFIX6)
    if net.is_link_local or net.is_multicast or net.is_loopback or net.is_unspecified or net.is_reserved \
            or net.is_site_local or net.overlaps(ipaddress.IPv6Network("::ffff:0:0/96")):
        raise InvalidArgument(f"subnet6: {net} is not a unicast range for hosts (use a ULA, fd00::/8, or a "
                              "global prefix of yours)")
    return net


def parse_ip6(value: Any, network: str) -> str:
    """--ip6: a static IPv6 address (whether it fits the network is checked when the address is leased)."""
    try:
        addr = ipaddress.IPv6Address(str(value).strip("[]"))
    except ValueError as exc:
        raise InvalidArgument(f"ip6: {value!r} is not an IPv6 address") from exc
    if network == NONE:
        raise InvalidArgument("ip6: an address needs a network (not --network none)")
    return str(addr)


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
    net: ipaddress.IPv4Network = _network(value, 4, "subnet", "10.77.1.0/24", MIN_PREFIX,
                                          MAX_PREFIX)
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
