"""Fixtures for network tests: a fake fabric that records what it was asked (no root needed)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest


class FakeFabric:
    table = "virtkit_test"

    def __init__(self) -> None:
        self.bridges: dict[int, str] = {}
        self.attached: dict[str, dict[str, Any]] = {}
        self.rules: Any = None
        self.hosts: dict[str, str] = {}
        self.routes = [ipaddress.IPv4Network("10.80.0.0/24"), ipaddress.IPv4Network("192.0.2.0/24")]
        self.routes6 = [ipaddress.IPv6Network("fd00::/64"), ipaddress.IPv6Network("fe80::/64"),
                        ipaddress.IPv6Network("::/0")]
        self.bridges6: dict[int, str] = {}
        self.forward6 = False
        self.other_bridges: dict[str, ipaddress.IPv4Network] = {}    # interfaces not of this home, by name
        self.fail_attach = False
        self.removed_ifaces: list[str] = []
        self.busy: set[tuple[str | None, int, str]] = set()
        self.held: dict[str, list[dict[str, Any]]] = {}
        self.zones: dict[str, Any] = {}
        self.closed = False

    def bridge_name(self, index: int) -> str:
        return f"vkbtest{index}"

    def veth_name(self, instance_id: str, network: str) -> str:
        return f"vkvtest{instance_id[:6]}"

    def ensure_network(self, index: int, gateway: str, prefixlen: int, gateway6: str | None = None,
                       prefixlen6: int | None = None, forward6: bool = False) -> None:
        self.bridges[index] = f"{gateway}/{prefixlen}"
        if gateway6:
            self.bridges6[index] = f"{gateway6}/{prefixlen6}"
        self.forward6 = self.forward6 or forward6

    def remove_network(self, index: int) -> None:
        self.bridges.pop(index, None)
        self.bridges6.pop(index, None)

    def subnet_users(self, subnet: ipaddress.IPv4Network, index: int) -> list[str]:
        return [name for name, net in self.other_bridges.items() if net.overlaps(subnet)]

    def host_routes(self) -> list[ipaddress.IPv4Network]:
        return list(self.routes)

    def host_routes6(self) -> list[ipaddress.IPv6Network]:
        return list(self.routes6)

    def apply_rules(self, rs: Any) -> None:
        self.rules = rs

    def attach(self, **kw: Any) -> dict[str, Any]:
        if self.fail_attach:
            from virtkit.core.errors import SystemFailure

            raise SystemFailure("veth: boom")
        self.attached[kw["instance_id"]] = kw
        return {"netns": f"/ns/{kw['instance_id']}", "veth": self.veth_name(kw["instance_id"], kw["network"])}

    def attach_tap(self, **kw: Any) -> dict[str, Any]:
        self.attached[kw["instance_id"]] = kw
        return {"tap": "vkvtap", "veth": "vkvtap"}

    def add_interface(self, **kw: Any) -> None:
        self.attached[kw["instance_id"] + "/" + kw["ifname"]] = kw

    def remove_interface(self, veth: str) -> None:
        self.removed_ifaces.append(veth)

    def detach(self, instance_id: str, veth: str | None) -> None:
        self.attached.pop(instance_id, None)

    def is_pinned(self, instance_id: str) -> bool:
        return instance_id in self.attached

    def set_rate(self, instance_id: str, veth: str, rate_bits: int) -> None:
        pass

    def write_hosts(self, instance_id: str, content: str) -> None:
        self.hosts[instance_id] = content

    def ensure_netns(self, instance_id: str) -> dict[str, Any]:
        self.attached[instance_id] = {"instance_id": instance_id}
        return {"netns": f"/ns/{instance_id}"}

    # host ports: `busy` plays the host's other programs
    def probe_ports(self, ports: list[dict[str, Any]]) -> None:
        from virtkit.core.errors import InUse

        for p in ports:
            if (p.get("host_ip"), p["host_port"], p["proto"]) in self.busy or \
                    (None, p["host_port"], p["proto"]) in self.busy:
                raise InUse(f"port: host port {p['host_port']}/{p['proto']} is in use on the host")

    def reserve_ports(self, instance_id: str, ports: list[dict[str, Any]]) -> None:
        self.held.pop(instance_id, None)
        self.probe_ports(ports)
        if ports:
            self.held[instance_id] = ports

    def release_ports(self, instance_id: str) -> None:
        self.held.pop(instance_id, None)

    def port_holders(self) -> set[str]:
        return set(self.held)

    def serve_names(self, zones: dict[str, Any]) -> list[str]:
        self.zones = zones
        return []

    def close(self) -> None:
        self.held.clear()
        self.closed = True


def attach_instance(svc: Any, store: Any, name: str, itype: str = "container", state: str = "created",
                    **req: Any) -> Any:
    """An instance record made as InstanceService.create makes it, through the network hooks (prepare, created)."""
    import secrets
    import time

    from virtkit.core.models import Instance
    from virtkit.core.options import validate_create

    inst = Instance(id=secrets.token_hex(16), name=name, type=itype, state=state, image="busybox",
                    spec=validate_create({"image": "busybox", **req}), created_at=time.time())
    store.add_instance(inst)
    svc.prepare(inst)
    inst = store.update_instance(inst.id, spec=inst.spec)
    svc.created(inst)
    return inst


@pytest.fixture
def fabric() -> FakeFabric:
    return FakeFabric()


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    from virtkit.store.sqlite import SQLiteStore

    s = SQLiteStore(str(tmp_path / "virtkit.db"))
    yield s
    s.close()
