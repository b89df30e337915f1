"""`virtkit run --vm`: a VM with its own kernel (QEMU, TCG on this PVM host) through the CLI."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.e2e.conftest import vk

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")


def test_vm_runs_its_own_kernel_and_returns_the_status(vk_home, client, name):
    r = vk(vk_home, "run", "--vm", "--rm", "busybox", "--", "uname", "-r", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip().endswith("-cloud-amd64"), r.stdout   # the guest's kernel, not the host's
    r = vk(vk_home, "run", "--vm", "--rm", "--name", name, "busybox", "--", "sh", "-c", "echo in-guest; exit 3",
           timeout=120)
    assert r.returncode == 3
    assert r.stdout.decode() == "in-guest\n"            # no kernel messages, no virtkit marker
    assert name not in [i["name"] for i in json.loads(vk(vk_home, "list", "--json").stdout)]


def test_vm_bad_input_is_refused_with_nothing_left(vk_home, client, name):
    before = vk(vk_home, "list", "--json").stdout
    for args, message in ((["--accel", "kvm"], b"PVM"), (["--memory", "8M"], b"memory"),
                          (["--cpus", "512"], b"cpus"), (["-v", "/tmp:/x"], b"not supported for VMs")):
        r = vk(vk_home, "run", "--vm", "--name", name, *args, "busybox", "--", "true")
        if args == ["--accel", "kvm"] and b"PVM" not in r.stderr and r.returncode == 0:
            pytest.skip("this host has hardware KVM: forcing kvm works")
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert b"Traceback" not in r.stderr
    assert vk(vk_home, "list", "--json").stdout == before


def test_container_and_vm_on_one_network_reach_each_other(vk_home, client, name):
    net = f"n{name[-6:]}"
    assert vk(vk_home, "network", "create", net).returncode == 0
    try:
        client.run("busybox", ["sh", "-c", "echo served-by-container > /var/www/index.html; exec httpd -f -p 80 "
                                           "-h /var/www"], detach=True, name=name, network=net)
        address = client.instance(name)["spec"]["net"]["address"]
        r = vk(vk_home, "run", "--vm", "--rm", "--network", net, "busybox", "--", "sh", "-c",
               f"ip -o -4 addr show eth0; wget -qO- http://{address}/", timeout=120)
        out = r.stdout.decode()
        assert r.returncode == 0, (out, r.stderr)
        assert "served-by-container" in out and "eth0" in out, out
        # and the other way: a VM serving, a container fetching
        client.run("busybox", ["sh", "-c", "mkdir -p /www; echo served-by-vm > /www/index.html; "
                                           "exec httpd -f -p 80 -h /www"],
                   detach=True, name=name + "-vm", type="vm", network=net)
        vm_address = client.instance(name + "-vm")["spec"]["net"]["address"]
        r = vk(vk_home, "run", "--rm", "--network", net, "busybox", "--", "sh", "-c",
               f"for i in $(seq 60); do wget -qO- http://{vm_address}/ 2>/dev/null && exit 0; sleep 0.5; done; exit 1",
               timeout=120)
        assert r.returncode == 0 and b"served-by-vm" in r.stdout, (r.stdout, r.stderr)
    finally:
        vk(vk_home, "rm", "-f", name, name + "-vm")
        vk(vk_home, "network", "rm", net)


def test_two_vms_and_a_container_on_one_network_reach_each_other(vk_home, client, name):
    net = f"n{name[-6:]}"
    names = [name + "-c", name + "-vm1", name + "-vm2"]
    fetch = "for i in $(seq 120); do wget -qO- http://{0}/ 2>/dev/null && break; sleep 0.5; done"
    serve = "mkdir -p /www; echo {0} > /www/index.html; httpd -p 80 -h /www; "
    assert vk(vk_home, "network", "create", net).returncode == 0
    try:
        client.run("busybox", ["sh", "-c", serve.format("from-container") + "exec sleep 600"],
                   detach=True, name=names[0], network=net)
        c_addr = client.instance(names[0])["spec"]["net"]["address"]
        client.run("busybox", ["sh", "-c", serve.format("from-vm1") + "echo vm1 got $(" + fetch.format(c_addr) + ")"
                               + "; exec sleep 600"], detach=True, name=names[1], type="vm", network=net)
        vm1_addr = client.instance(names[1])["spec"]["net"]["address"]
        client.run("busybox", ["sh", "-c", serve.format("from-vm2") + "echo vm2 got $(" + fetch.format(c_addr)
                               + ") $(" + fetch.format(vm1_addr) + "); exec sleep 600"],
                   detach=True, name=names[2], type="vm", network=net)
        vm2_addr = client.instance(names[2])["spec"]["net"]["address"]
        r = vk(vk_home, "run", "--rm", "--network", net, "busybox", "--", "sh", "-c",
               f"echo $({fetch.format(vm1_addr)}) $({fetch.format(vm2_addr)})", timeout=120)
        assert r.returncode == 0 and r.stdout.decode().split() == ["from-vm1", "from-vm2"], (r.stdout, r.stderr)
        deadline = time.monotonic() + 90
        while True:
            logs = vk(vk_home, "logs", names[1]).stdout + vk(vk_home, "logs", names[2]).stdout
            if b"vm1 got" in logs and b"vm2 got" in logs or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert b"vm1 got from-container" in logs and b"vm2 got from-container from-vm1" in logs, logs
    finally:
        vk(vk_home, "rm", "-f", *names)
        vk(vk_home, "network", "rm", net)


def test_vm_stats_count_disk_and_network_io(vk_home, client, name):
    """`virtkit stats` of a VM: vCPU time and memory, and its disks' and network's counters as the guest sees them."""
    script = ("gw=$(ip route | awk '/default/ {print $3}'); ping -c 3 -W 2 $gw >/dev/null; "
              "cat /bin/busybox > /dev/null; sync; echo io-done; exec sleep 600")
    client.run("busybox", ["sh", "-c", script], detach=True, name=name, type="vm")
    try:
        deadline = time.monotonic() + 120
        while b"io-done" not in b"".join(client.logs(name)) and time.monotonic() < deadline:
            time.sleep(0.3)
        st = json.loads(vk(vk_home, "stats", "--json", name).stdout)
        assert st["cpu_usage_ns"] > 0 and st["memory_rss_bytes"] > 0, st
        assert st["disks"] and all(d["rd_bytes"] >= 0 for d in st["disks"].values()), st
        assert sum(d["rd_operations"] for d in st["disks"].values()) > 0, st   # the root disk was read at boot
        net = st["network"]
        assert net["tx_packets"] >= 3 and net["rx_packets"] >= 3 and net["tx_bytes"] > 0, net   # the pings
        table = vk(vk_home, "stats", name).stdout.decode()
        assert "DISK" in table and "INTERFACE" in table and net["interface"] in table, table
    finally:
        vk(vk_home, "rm", "-f", name)
