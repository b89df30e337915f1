"""Rename on networks, over a real store and the fake fabric: names inside the networks follow."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.net.conftest import attach_instance
from virtkit.core.errors import AlreadyExists, InvalidArgument
from virtkit.core.models import Instance
from virtkit.core.names import validate_rename
from virtkit.core.networks import NetworkService


def _attach(svc, store, name: str, itype: str = "container", **req):  # type: ignore[no-untyped-def]
    return attach_instance(svc, store, name, itype, "running", **req)


def _rename(svc, store, inst, new: str):  # type: ignore[no-untyped-def]
    after = store.update_instance(inst.id, name=validate_rename(inst.name, new))
    svc.renamed(inst, after)
    return store.get_instance(inst.id)


def test_rename_updates_peers_hosts_files_and_keeps_the_kernel_hostname(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    svc.create({"name": "back", "subnet": "10.77.2.0/24"})
    a = _attach(svc, store, "a", network="front")
    peer = _attach(svc, store, "peer", network="front")
    other = _attach(svc, store, "other", network="back")
    svc.connect("back", "a")
    addr = a.spec["net"]["address"]
    a = _rename(svc, store, a, "a2")
    for iid in (peer.id, other.id):
        assert "\ta2\n" in fabric.hosts[iid] and "\ta\n" not in fabric.hosts[iid]
    assert f"{addr}\ta2\n" in fabric.hosts[peer.id]
    assert f"{addr}\ta2 a\n" in fabric.hosts[a.id]             # its own kernel hostname still resolves inside
    assert a.spec["uts_hostname"] == "a"
    a = _rename(svc, store, a, "a3")
    assert a.spec["uts_hostname"] == "a" and f"{addr}\ta3 a\n" in fabric.hosts[a.id]
    assert "\ta2\n" not in fabric.hosts[peer.id] and "\ta3\n" in fabric.hosts[peer.id]


def test_rename_with_an_explicit_hostname_and_of_a_vm(store, fabric):
    svc = NetworkService(store, fabric)
    svc.create({"name": "front", "subnet": "10.77.1.0/24"})
    h = _attach(svc, store, "h", network="front", hostname="box")
    vm = _attach(svc, store, "vm", itype="vm", network="front")
    h = _rename(svc, store, h, "h2")
    assert "uts_hostname" not in h.spec
    _rename(svc, store, vm, "vm2")
    names = fabric.zones["10.77.1.1"].names
    assert names["vm2"] == vm.spec["net"]["address"] and "vm" not in names
    assert names["h2"] == names["box"] == h.spec["net"]["address"] and "h" not in names
    lone = _attach(svc, store, "lone", network="none")
    _rename(svc, store, lone, "lone2")                        # no network: nothing to follow


def test_rename_checks():
    assert validate_rename("a", "b-1.x_y") == "b-1.x_y"
    for bad in ("", "-x", "a b", "x" * 64, None, 3):
        with pytest.raises(InvalidArgument, match="name"):
            validate_rename("a", bad)
    with pytest.raises(InvalidArgument, match="already named"):
        validate_rename("a", "a")


def test_store_refuses_a_taken_name(store):
    for n in ("a", "b"):
        store.add_instance(Instance(id=secrets.token_hex(16), name=n, type="container", state="created",
                                    image="busybox", spec={}, created_at=time.time()))
    a = store.get_instance("a")
    with pytest.raises(AlreadyExists, match="'b' is already in use"):
        store.update_instance(a.id, name="b")
    assert store.get_instance(a.id).name == "a"
