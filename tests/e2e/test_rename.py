"""`virtkit rename` end to end: names inside networks follow (real lookups and traffic from inside), and bad
renames change nothing."""

from __future__ import annotations

import json

import pytest

from tests.e2e import test_network
from tests.e2e.conftest import vk
from tests.e2e.test_network import HTTPD, _net, _run, _sh, wget

pytestmark = pytest.mark.root
cleanup = test_network.cleanup          # the fixture: what a test registers is removed, and checked gone


def _names(vk_home: str) -> set[str]:
    return {i["name"] for i in json.loads(vk(vk_home, "list", "--json").stdout)}


def _lookup(name: str) -> str:
    """Shell: 'unknown' when `name` is not in the hosts file and does not lead to a server (an unknown name goes
    to the host's resolvers, which may answer 'bad address' or nothing at all), else 'found'."""
    in_hosts = f"grep -qE '[[:space:]]{name}([[:space:]]|$)' /etc/hosts"
    served = f"timeout 3 wget -qO- http://{name}/ 2>/dev/null | grep -q hello"
    return f"if {in_hosts} || {served}; then echo found; else echo unknown; fi"


def _web(vk_home: str, name: str, made: dict) -> tuple[dict, str]:
    """A network of its own with a web server `name` on it; returns the network and the name to rename it to."""
    net = _net(vk_home)
    made["networks"].append(net["name"])
    made["instances"] += [name + "-new", name]
    _run(vk_home, "--name", name, "--network", net["name"], "busybox", "--", "sh", "-c", HTTPD)
    return net, name + "-new"


def test_rename_a_running_container_on_a_network(vk_home, client, name, cleanup):
    net, new = _web(vk_home, name, cleanup)
    cleanup["instances"].append(_run(vk_home, "--name", name + "-p", "--network", net["name"], "busybox", "--",
                                     "sleep", "600"))
    before = json.loads(vk(vk_home, "inspect", name).stdout)
    r = vk(vk_home, "rename", name, new)
    assert r.returncode == 0, r.stderr
    # a peer that was there before, and one that comes after, reach it by the new name only
    r = vk(vk_home, "exec", name + "-p", "--", "sh", "-c", f"{wget(f'http://{new}/')}; {_lookup(new)}; "
                                                           f"{_lookup(name)}")
    assert r.stdout.decode().split() == [f"hello-{name}", "found", "unknown"], (r.stdout, r.stderr)
    r = _sh(vk_home, net["name"], f"{wget(f'http://{new}/')}; {_lookup(name)}")
    assert r.stdout.decode().split() == [f"hello-{name}", "unknown"], (r.stdout, r.stderr)
    # inside, its kernel hostname (made at create, as Docker's) still resolves to its own address
    r = vk(vk_home, "exec", new, "--", "sh", "-c", "wget -qO- http://$(hostname)/")
    assert r.stdout.decode().split() == [f"hello-{name}"], (r.stdout, r.stderr)
    assert new in _names(vk_home) and name not in _names(vk_home)
    after = json.loads(vk(vk_home, "inspect", new).stdout)
    assert after["id"] == before["id"] and after["state"] == "running"
    assert after["spec"]["net"]["address"] == before["spec"]["net"]["address"]
    assert vk(vk_home, "inspect", name).returncode == 1
    assert [m["name"] for m in json.loads(vk(vk_home, "network", "show", net["name"]).stdout)["instances"]] \
        == [new, name + "-p"]
    r = vk(vk_home, "logs", new)
    assert r.returncode == 0, r.stderr
    assert vk(vk_home, "rm", "-f", new).returncode == 0
    r = vk(vk_home, "exec", name + "-p", "--", "cat", "/etc/hosts")
    assert new not in r.stdout.decode() and f"\t{name}\n" not in r.stdout.decode()


def test_rename_a_stopped_container_then_start_it(vk_home, client, name, cleanup):
    net, new = _web(vk_home, name, cleanup)
    assert vk(vk_home, "stop", "-t", "1", name).returncode == 0
    r = vk(vk_home, "rename", name, new)
    assert r.returncode == 0, r.stderr
    assert json.loads(vk(vk_home, "inspect", new).stdout)["state"] == "stopped"
    assert vk(vk_home, "start", new).returncode == 0
    r = _sh(vk_home, net["name"], f"{wget(f'http://{new}/')}; {_lookup(name)}")
    assert r.stdout.decode().split() == [f"hello-{name}", "unknown"], (r.stdout, r.stderr)


def test_bad_renames_change_nothing(vk_home, client, name, cleanup):
    cleanup["instances"] += [name, name + "-b"]
    _run(vk_home, "--name", name, "--network", "none", "busybox", "--", "sleep", "600")
    _run(vk_home, "--name", name + "-b", "--network", "none", "busybox", "--", "sleep", "600")
    names = _names(vk_home)
    r = vk(vk_home, "rename", name, name + "-b")
    assert r.returncode == 1 and f"name: '{name}-b' is already in use by instance".encode() in r.stderr, r.stderr
    r = vk(vk_home, "rename", name, "bad name!")
    assert r.returncode == 2 and b"name: invalid name" in r.stderr, r.stderr
    r = vk(vk_home, "rename", name, name)
    assert r.returncode == 2 and b"already named" in r.stderr, r.stderr
    r = vk(vk_home, "rename", "nope-" + name, name + "-c")
    assert r.returncode == 1 and f"instance 'nope-{name}' not found".encode() in r.stderr, r.stderr
    assert _names(vk_home) == names
    assert json.loads(vk(vk_home, "inspect", name).stdout)["state"] == "running"
