"""Virtual networks end to end: real traffic between instances on networks these tests make, never external."""

from __future__ import annotations

import json
import os
import random
import socket
import urllib.request
import uuid

import pytest

from tests.e2e.conftest import teardown_home, vk
from virtkit.config import Home

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /www; echo hello-$(hostname) > /www/index.html; exec httpd -f -p 80 -h /www"


def wget(url: str) -> str:
    """Shell: fetch url, retrying for up to 5 s while the server starts."""
    return f"for i in $(seq 50); do wget -qO- {url} 2>/dev/null && break; sleep 0.1; done"


def _net(vk_home: str, *opts: str) -> dict:
    name = f"n-{uuid.uuid4().hex[:6]}"
    r = vk(vk_home, "network", "create", name, *opts)
    assert r.returncode == 0, r.stderr
    return json.loads(vk(vk_home, "network", "show", name).stdout)


def _tiny_net(vk_home: str, *opts: str) -> dict:
    """A /29 at a random spot (another home may be running beside us: a clash is refused, try another)."""
    for _ in range(20):
        subnet = f"10.{random.randint(130, 250)}.{random.randint(0, 255)}.8/29"
        name = f"n-{uuid.uuid4().hex[:6]}"
        r = vk(vk_home, "network", "create", name, "--subnet", subnet, *opts)
        if r.returncode == 0:
            return json.loads(vk(vk_home, "network", "show", name).stdout)
        assert b"overlaps" in r.stderr, r.stderr
    raise AssertionError("no free /29 found")


def _run(vk_home: str, *args: str) -> str:
    r = vk(vk_home, "run", "-d", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def _sh(vk_home: str, net: str, script: str, *opts: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    return vk(vk_home, "run", "--rm", "--network", net, "--cap-add", "NET_RAW", *opts, "busybox", "--",
              "sh", "-c", script, timeout=timeout)


def _addr(vk_home: str, net: str, inst: str) -> str:
    members = json.loads(vk(vk_home, "network", "show", net).stdout)["instances"]
    return next(m["address"] for m in members if m["name"] == inst)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _http(url: str, wait: float = 0) -> str:
    """GET url; with `wait`, retry refused connections that long (the server may still be starting)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def cleanup(vk_home):  # type: ignore[no-untyped-def]
    """Instances and networks a test registers are removed after it; then none of their veths, namespace
    files or bridges may remain."""
    from virtkit.net import links

    made: dict[str, list[str]] = {"instances": [], "networks": []}
    yield made
    expect_gone: list[str] = []
    for n in made["instances"]:
        r = vk(vk_home, "inspect", n)
        if r.returncode == 0:
            net = json.loads(r.stdout)["spec"].get("net") or {}
            expect_gone += [x for x in (net.get("veth"), net.get("netns")) if x]
        vk(vk_home, "rm", "-f", n)
    for n in made["networks"]:
        r = vk(vk_home, "network", "show", n)
        if r.returncode == 0:
            expect_gone.append(json.loads(r.stdout)["bridge"])
        vk(vk_home, "network", "rm", n)
    present = set(links.link_names("vk"))
    left = [x for x in expect_gone if x in present or os.path.exists(x)]
    assert not left, f"left behind: {left}"


def test_default_network_and_none(vk_home, client, name, cleanup):
    nets = {n["name"]: n for n in json.loads(vk(vk_home, "network", "list", "--json").stdout)}
    assert "default" in nets and nets["default"]["nat"]
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c", "ip -o -4 addr show eth0; ip route")
    assert r.returncode == 0, r.stderr
    assert nets["default"]["subnet"].rsplit(".", 1)[0] in r.stdout.decode()
    assert f"default via {nets['default']['gateway']}" in r.stdout.decode()
    r = vk(vk_home, "run", "--rm", "--network", "none", "busybox", "--", "ip", "-o", "link")
    assert [ln.split(":")[1].strip() for ln in r.stdout.decode().splitlines()] == ["lo"]


def test_same_network_ping_http_and_names(vk_home, client, name, cleanup):
    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    r = _sh(vk_home, net["name"], f"ping -c1 -W2 {name} >/dev/null && echo pinged; {wget(f'http://{name}/')}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["pinged", f"hello-{name}"]
    r = vk(vk_home, "exec", name, "--", "cat", "/etc/resolv.conf")
    assert r.returncode == 0


def test_names_update_on_create_and_rm(vk_home, client, name, cleanup):
    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    cleanup["instances"] += [_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                  "sleep", "600")]
    cleanup["instances"].append(_run(vk_home, "--name", name + "-b", "--network", net["name"], "busybox", "--",
                                     "sleep", "600"))
    hosts = vk(vk_home, "exec", name, "--", "cat", "/etc/hosts").stdout.decode()
    assert f"{_addr(vk_home, net['name'], name + '-b')}\t{name}-b" in hosts
    assert vk(vk_home, "rm", "-f", name + "-b").returncode == 0
    assert f"{name}-b" not in vk(vk_home, "exec", name, "--", "cat", "/etc/hosts").stdout.decode()


def check_isolation(vk_home: str, name: str, cleanup: dict, *, v6: bool = False) -> None:
    """Same network reaches the server; another network does not; an isolated one has no route out (IPv4, or
    with `v6` IPv6 on networks made with --ipv6)."""
    opts = ("--ipv6",) if v6 else ()
    ping, route, key = ("ping6", "ip -6 route", "6") if v6 else ("ping", "ip route", "")
    a, b, iso = _net(vk_home, *opts), _net(vk_home, *opts), _net(vk_home, *opts, "--isolated")
    cleanup["networks"] += [a["name"], b["name"], iso["name"]]
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", a["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    members = json.loads(vk(vk_home, "network", "show", a["name"]).stdout)["instances"]
    target = next(m["address" + key] for m in members if m["name"] == name)
    url = f"http://[{target}]/" if v6 else f"http://{target}/"
    ok = _sh(vk_home, a["name"], f"{ping} -c1 -W2 {target} >/dev/null && echo reached")
    assert ok.stdout.decode().strip() == "reached", ok.stderr
    r = _sh(vk_home, b["name"], f"{ping} -c1 -W2 {target} >/dev/null && echo reached; "
                                f"timeout 3 wget -qO- {url} || echo blocked")
    assert "reached" not in r.stdout.decode() and "blocked" in r.stdout.decode(), r.stdout
    r = _sh(vk_home, iso["name"], f"{route}; {ping} -c1 -W2 {a['gateway' + key]} >/dev/null && echo reached; "
                                  f"{ping} -c1 -W2 {target} >/dev/null && echo reached; echo done")
    out = r.stdout.decode()
    assert "default" not in out and "reached" not in out and "done" in out, out


def test_cross_network_blocked_and_isolated_no_route_out(vk_home, client, name, cleanup):
    check_isolation(vk_home, name, cleanup)


def test_port_forward_from_host_and_hairpin(vk_home, client, name, cleanup):
    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    local, anyaddr = _free_port(), _free_port()
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"],
                                     "-p", f"127.0.0.1:{local}:80", "-p", f"{anyaddr}:80", "busybox", "--",
                                     "sh", "-c", HTTPD))
    want = f"hello-{name}\n"
    assert _http(f"http://127.0.0.1:{local}/", wait=10) == want
    assert _http(f"http://{net['gateway']}:{anyaddr}/") == want          # a host address, not loopback
    r = _sh(vk_home, net["name"], f"wget -qO- http://{net['gateway']}:{anyaddr}/")  # hairpin
    assert r.stdout.decode() == want, r.stderr
    r = vk(vk_home, "run", "-d", "--network", net["name"], "-p", f"{anyaddr}:81", "busybox", "--", "true")
    assert r.returncode == 1 and f"0.0.0.0:{anyaddr}/tcp is already allocated to instance '{name}'".encode() \
        in r.stderr, r.stderr
    vk(vk_home, "rm", "-f", name)
    with pytest.raises(OSError):
        _http(f"http://127.0.0.1:{local}/")


def test_spoofing_ip_or_mac_fails(vk_home, client, name, cleanup):
    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                     "sleep", "600"))
    victim, gw = _addr(vk_home, net["name"], name), net["gateway"]
    script = (
        f"me=$(ip -o -4 addr show eth0 | awk '{{print $4}}'); mac=$(cat /sys/class/net/eth0/address);"
        f"ping -c1 -W2 {gw} >/dev/null && echo own-ok;"
        f"ip addr flush dev eth0; ip addr add {victim}/24 dev eth0;"
        f"ping -c1 -W2 {gw} >/dev/null && echo ip-spoof-passed; arping -c1 -w2 -I eth0 {gw} >/dev/null && "
        f"echo arp-spoof-passed;"
        f"ip addr flush dev eth0; ip addr add $me dev eth0; ip link set eth0 down;"
        f"ip link set eth0 address 02:42:de:ad:be:ef; ip link set eth0 up;"
        f"ping -c1 -W2 {gw} >/dev/null && echo mac-spoof-passed;"
        f"ip link set eth0 down; ip link set eth0 address $mac; ip link set eth0 up;"
        f"ping -c1 -W3 {gw} >/dev/null && echo own-ok-again; echo done"
    )
    r = _sh(vk_home, net["name"], script, "--cap-add", "NET_ADMIN", timeout=90)
    assert r.stdout.decode().split() == ["own-ok", "own-ok-again", "done"], (r.stdout, r.stderr)


def test_static_ip_exhaustion_and_in_use(vk_home, client, name, cleanup):
    net = _tiny_net(vk_home)                  # a /29: 5 addresses besides the gateway
    cleanup["networks"].append(net["name"])
    base = net["subnet"].rsplit(".", 1)[0]
    static = f"{base}.14"
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "--ip", static,
                                     "busybox", "--", "sleep", "600"))
    r = vk(vk_home, "exec", name, "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert f"{static}/29" in r.stdout.decode()
    r = vk(vk_home, "run", "-d", "--network", net["name"], "--ip", static, "busybox", "--", "true")
    assert r.returncode == 1 and b"already in use" in r.stderr, r.stderr
    for i in range(4):
        cleanup["instances"].append(_run(vk_home, "--name", f"{name}-{i}", "--network", net["name"],
                                         "busybox", "--", "sleep", "600"))
    addrs = [m["address"] for m in json.loads(vk(vk_home, "network", "show", net["name"]).stdout)["instances"]]
    assert len(set(addrs)) == 5
    r = vk(vk_home, "run", "-d", "--network", net["name"], "busybox", "--", "true")
    assert r.returncode == 1 and b"no free address" in r.stderr, r.stderr
    r = vk(vk_home, "network", "rm", net["name"])
    assert r.returncode == 1 and b"in use by instance" in r.stderr and name.encode() in r.stderr
    r = vk(vk_home, "run", "-d", "--network", "nope-" + name, "busybox", "--", "true")
    assert r.returncode == 1 and b"not found" in r.stderr
    r = vk(vk_home, "run", "-d", "-p", "99999:80", "busybox", "--", "true")
    assert r.returncode == 2 and b"ports" in r.stderr
    r = vk(vk_home, "network", "create", "bad", "--subnet", "10.1.2.3/24")
    assert r.returncode == 2 and b"subnet" in r.stderr


def test_restart_keeps_leases(vk_home, client, name, cleanup):
    from virtkit.client import connect

    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    before = _addr(vk_home, net["name"], name)
    client.shutdown()
    c2 = connect(vk_home)
    assert c2.network(net["name"])["instances"] == [{"name": name, "address": before, "mac": _mac(before)}]
    r = _sh(vk_home, net["name"], f"ip -o -4 addr show eth0; wget -qO- http://{name}/")
    assert f" {before}/" not in r.stdout.decode().splitlines()[0] and f"hello-{name}" in r.stdout.decode(), r.stdout


def _mac(addr: str) -> str:
    from virtkit.core.networks import mac_for

    return mac_for(addr)


def test_nothing_left_behind_in_a_home(tmp_path_factory):
    """A home of its own: networks, instances, forwards, then rm and shutdown: no link, namespace, table."""
    from virtkit.client import connect
    from virtkit.net.fabric import NetFabric
    from virtkit.net.nft import table_exists

    home = str(tmp_path_factory.mktemp("vkhome"))
    fab = NetFabric(Home.from_env(home))
    try:
        c = connect(home)
        c.build_image("busybox")
        c.create_network("a", nat=True)
        c.run("busybox", ["sleep", "600"], detach=True, name="x", network="a", ports=[f"{_free_port()}:80"])
        c.run("busybox", ["sleep", "600"], detach=True, name="y")
        assert any("vkv" in x for x in fab.leftovers()) and table_exists(fab.table)
        c.remove("x", force=True)
        c.remove_network("a")
    finally:
        leaks = teardown_home(home)
    assert not leaks
    assert fab.leftovers() == [] and not os.path.exists(os.path.join(home, "netns"))


def test_rate_limit_roughly(vk_home, client, name, cleanup):
    import time

    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    port = _free_port()
    cleanup["instances"].append(_run(
        vk_home, "--name", name, "--network", net["name"], "--rate", "8mbit", "-p", f"127.0.0.1:{port}:80",
        "busybox", "--", "sh", "-c", "mkdir /www; dd if=/dev/zero of=/www/blob bs=1k count=2000 2>/dev/null;"
                                     "exec httpd -f -p 80 -h /www"))
    time.sleep(0.3)
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=30) as r:
        size = len(r.read())
    elapsed = time.monotonic() - t0
    assert size == 2000 * 1024
    mbit = size * 8 / elapsed / 1e6
    assert 4 < mbit < 10, f"{mbit:.1f} Mbit/s through an 8mbit limit"


def test_connect_and_disconnect_a_running_instance(vk_home, client, name, cleanup):
    front, back = _net(vk_home), _net(vk_home)
    cleanup["networks"] += [front["name"], back["name"]]
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", front["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    cleanup["instances"].append(_run(vk_home, "--name", name + "-b", "--network", back["name"], "busybox", "--",
                                     "sleep", "600"))
    fetch = ["exec", name + "-b", "--", "sh", "-c", f"timeout 2 wget -qO- http://{name}/ 2>/dev/null || echo no"]
    assert vk(vk_home, *fetch).stdout.decode().strip() == "no"
    r = vk(vk_home, "network", "connect", front["name"], name + "-b")
    assert r.returncode == 0 and r.stdout.decode().split()[1] == "eth1", r.stderr
    assert vk(vk_home, *fetch).stdout.decode().strip() == f"hello-{name}"
    assert vk(vk_home, "network", "rm", front["name"]).returncode == 1
    r = vk(vk_home, "network", "disconnect", front["name"], name + "-b")
    assert r.returncode == 0, r.stderr
    assert vk(vk_home, *fetch).stdout.decode().strip() == "no"
    r = vk(vk_home, "exec", name + "-b", "--", "ip", "-o", "link")
    assert "eth1" not in r.stdout.decode()


def test_start_after_the_namespace_was_lost(vk_home, client, name, cleanup):
    """As after a host reboot: the pinned namespace is gone; start makes it again with the same address."""
    from virtkit.net import netns

    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "busybox", "--",
                                     "sh", "-c", HTTPD))
    before = _addr(vk_home, net["name"], name)
    assert vk(vk_home, "stop", "-t", "1", name).returncode == 0
    inst = json.loads(vk(vk_home, "inspect", name).stdout)
    netns.remove(inst["spec"]["net"]["netns"])
    open(inst["spec"]["net"]["netns"], "w").close()          # what a reboot leaves: the plain file
    r = vk(vk_home, "start", name)
    assert r.returncode == 0, r.stderr
    r = _sh(vk_home, net["name"], wget(f"http://{before}/"))
    assert r.stdout.decode() == f"hello-{name}\n", r.stderr


def _names(vk_home: str) -> list[str]:
    return [i["name"] for i in json.loads(vk(vk_home, "list", "--json").stdout)]


def test_host_port_conflicts(vk_home, client, name, cleanup):
    """Docker's rule: a running instance holds its host ports, a stopped one none; the host's own are seen too;
    a refused run leaves nothing."""
    net = _net(vk_home)
    cleanup["networks"].append(net["name"])
    port = _free_port()
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", net["name"], "-p",
                                     f"127.0.0.1:{port}:80", "busybox", "--", "sh", "-c", HTTPD))
    with socket.socket() as s, pytest.raises(OSError):     # held while it runs: nothing else can take it
        s.bind(("127.0.0.1", port))
    before = (_names(vk_home), json.loads(vk(vk_home, "network", "show", net["name"]).stdout)["instances"])
    r = vk(vk_home, "run", "-d", "--name", name + "-b", "--network", net["name"], "-p", f"{port}:80",
           "busybox", "--", "true")
    assert r.returncode == 1, r.stderr
    assert f"host port 0.0.0.0:{port}/tcp is already allocated to instance '{name}'".encode() in r.stderr
    with socket.socket() as s:                             # a program of the host's on another port
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        r = vk(vk_home, "run", "-d", "--network", net["name"], "-p", f"127.0.0.1:{busy}:80", "busybox", "--", "true")
        assert r.returncode == 1 and f"127.0.0.1:{busy}/tcp is in use on the host".encode() in r.stderr, r.stderr
    other = _free_port()
    r = vk(vk_home, "run", "-d", "--network", net["name"], "-p", f"{other}:80", "-p", f"127.0.0.1:{other}:81",
           "busybox", "--", "true")
    assert r.returncode == 2 and b"given twice" in r.stderr, r.stderr
    assert (_names(vk_home), json.loads(vk(vk_home, "network", "show", net["name"]).stdout)["instances"]) == before
    # stopped: the port is free; another instance takes it, and the first cannot start on it any more
    assert vk(vk_home, "stop", "-t", "1", name).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    cleanup["instances"].append(_run(vk_home, "--name", name + "-c", "--network", net["name"], "-p", f"{port}:80",
                                     "busybox", "--", "sh", "-c", HTTPD))
    assert _http(f"http://127.0.0.1:{port}/", wait=10) == f"hello-{name}-c\n"
    r = vk(vk_home, "start", name)
    assert r.returncode == 1 and f"already allocated to instance '{name}-c'".encode() in r.stderr, r.stderr
    assert vk(vk_home, "rm", "-f", name + "-c").returncode == 0
    assert vk(vk_home, "start", name).returncode == 0
    assert _http(f"http://127.0.0.1:{port}/", wait=10) == f"hello-{name}\n"
    client.shutdown()                                      # a new virtkitd takes the running one's port again
    r = vk(vk_home, "run", "-d", "--network", net["name"], "-p", f"{port}:80", "busybox", "--", "true")
    assert r.returncode == 1 and f"allocated to instance '{name}'".encode() in r.stderr, r.stderr
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", port))
    assert _http(f"http://127.0.0.1:{port}/") == f"hello-{name}\n"


def test_disconnect_the_primary_network_and_connect_back(vk_home, client, name, cleanup):
    front, back = _net(vk_home), _net(vk_home)
    cleanup["networks"] += [front["name"], back["name"]]
    port = _free_port()
    cleanup["instances"].append(_run(vk_home, "--name", name, "--network", front["name"], "-p",
                                     f"127.0.0.1:{port}:80", "busybox", "--", "sh", "-c", HTTPD))
    cleanup["instances"].append(_run(vk_home, "--name", name + "-p", "--network", front["name"], "busybox", "--",
                                     "sleep", "600"))
    assert _http(f"http://127.0.0.1:{port}/", wait=10) == f"hello-{name}\n"
    assert vk(vk_home, "network", "connect", back["name"], name).returncode == 0
    r = vk(vk_home, "network", "disconnect", front["name"], name)
    assert r.returncode == 0, r.stderr
    links = vk(vk_home, "exec", name, "--", "ip", "-o", "link").stdout.decode()
    assert "eth0" not in links and "eth1" in links and "lo" in links, links
    assert vk(vk_home, "exec", name, "--", "ip", "route").stdout.decode().count("default") == 0
    with pytest.raises(OSError):
        _http(f"http://127.0.0.1:{port}/")                  # its published port went with the network
    assert f"\t{name}\n" not in vk(vk_home, "exec", name + "-p", "--", "cat", "/etc/hosts").stdout.decode()
    r = _sh(vk_home, back["name"], wget(f"http://{name}/"))  # still served on the other network, by name
    assert r.stdout.decode() == f"hello-{name}\n", r.stderr
    r = vk(vk_home, "network", "connect", front["name"], name)
    assert r.returncode == 0 and r.stdout.decode().split()[1] == "eth0", r.stderr
    route = vk(vk_home, "exec", name, "--", "ip", "route").stdout.decode()
    assert f"default via {front['gateway']}" in route, route
    assert _http(f"http://127.0.0.1:{port}/", wait=10) == f"hello-{name}\n"
    r = vk(vk_home, "exec", name + "-p", "--", "sh", "-c", wget(f"http://{name}/"))
    assert r.stdout.decode() == f"hello-{name}\n", r.stderr


@pytest.fixture
def outside_host():  # type: ignore[no-untyped-def]
    """A host "outside": a namespace behind a veth of the host's own (10.251.77.0/30), listening on TCP 8000
    and answering "outside-ok". The host routes to it; it has no route back to any virtkit network."""
    from pyroute2 import IPRoute

    from virtkit.net import netns

    path, host_if = f"/run/vk-outside-{uuid.uuid4().hex[:6]}", f"vko{uuid.uuid4().hex[:6]}"
    netns.create(path)
    listener: list[socket.socket] = []
    try:
        with IPRoute() as ipr:
            fd = os.open(path, os.O_RDONLY)
            try:
                ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            finally:
                os.close(fd)
            idx = ipr.link_lookup(ifname=host_if)[0]
            ipr.addr("add", index=idx, address="10.251.77.1", prefixlen=30)
            ipr.link("set", index=idx, state="up")

        def inside() -> socket.socket:
            with IPRoute() as ipr:
                for name in ("lo", "eth0"):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address="10.251.77.2", prefixlen=30)
            s = socket.socket()
            s.bind(("10.251.77.2", 8000))
            s.listen(4)
            return s

        listener.append(netns.run_in(path, inside))

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener[0].accept()
                except OSError:
                    return
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\noutside-ok\n")

        import threading

        threading.Thread(target=serve, daemon=True).start()
        yield "10.251.77.2"
    finally:
        for s in listener:
            s.close()
        from virtkit.net import links

        links.delete_link(host_if)
        netns.remove(path)


def test_nat_reaches_outside_on_a_host_that_did_not_forward(vk_home, client, name, cleanup, outside_host):
    """Debian leaves net.ipv4.ip_forward off: a --nat network turns it on, as Docker does, or nothing leaves."""
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        saved = f.read().strip()
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("0")
        net = _net(vk_home, "--nat")
        cleanup["networks"].append(net["name"])
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            assert f.read().strip() == "1"
        # (busybox 1.35's wget -T segfaults, on the host too: timeout instead)
        r = _sh(vk_home, net["name"], f"timeout 10 wget -qO- http://{outside_host}:8000/")
        assert r.stdout.decode() == "outside-ok\n", (r.stdout.decode(), r.stderr.decode())
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(saved)
