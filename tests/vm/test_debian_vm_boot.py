"""The Debian `--vm` image booted under QEMU, through the CLI as a user runs it, and VMs made from its template.

One module home (the shared build's, tests/vm/debian_vm_image.py) with its own virtkitd. The first VM boots
the image (systemd, qemu-guest-agent) and is saved as the template; the next ones start from it and must each
be their own machine (hostname, MAC, address, machine-id); a damaged template is not used but rebuilt; stop and
rm leave no process, tap or mount behind. Marked slow: a cold boot is ~20-30 s under TCG here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vm.conftest import needs_qemu, vm_processes
from tests.vm.debian_vm_image import shared_build
from virtkit.vm.qemu import qmp

pytestmark = [pytest.mark.slow, pytest.mark.root, needs_qemu]

VIRTKIT = os.path.join(os.path.dirname(sys.executable), "virtkit")
BOOT_TIMEOUT = 600


def vk(home: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VIRTKIT, "--home", home, *args], capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def home() -> Iterator[str]:
    root = str(shared_build()["home"])
    yield root
    for inst in json.loads(vk(root, "list", "--json").stdout or "[]"):
        vk(root, "rm", "-f", inst["name"])
    from virtkit.client import connect

    try:
        connect(root).shutdown()
    except Exception:
        pass
    for name in ("virtkitd.pid", "supervisor.pid"):      # gone before the suite's leak check looks
        _end(os.path.join(root, "run", name), root)


def _end(pid_file: str, home: str) -> None:
    """The home's process named by pid_file (its daemon, its container supervisor): 5 s to go, then SIGKILL."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if home.encode() not in f.read():
                return                      # gone, and the pid taken by another process since
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    return
        except OSError:
            return
        if pid_file.endswith("supervisor.pid"):
            os.kill(pid, 15)
        time.sleep(0.1)
    os.kill(pid, 9)


def inspect(home: str, name: str) -> dict[str, Any]:
    return dict(json.loads(ok(vk(home, "inspect", name))))


def guest(home: str, name: str, script: str) -> str:
    return ok(vk(home, "exec", name, "--", "sh", "-c", script, timeout=BOOT_TIMEOUT))


def identity(home: str, name: str) -> dict[str, str]:
    """What the guest says it is: hostname, its NIC's MAC and IPv4 address, machine-id."""
    out = guest(home, name, "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0; "
                            "cat /etc/machine-id")
    host, mac, addr, mid = out.splitlines()[:4]
    m = re.search(r"inet (\S+)/", addr)
    return {"hostname": host, "mac": mac, "ip": m.group(1) if m else "", "machine_id": mid}


def templates(home: str) -> list[str]:
    root = os.path.join(home, "vmtemplates")
    return sorted(d for d in os.listdir(root) if not d.startswith(".")) if os.path.isdir(root) else []


def wait_template(home: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while not templates(home):
        assert time.monotonic() < deadline, "no template was saved"
        time.sleep(0.5)
    return templates(home)[0]


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_debian_vm_boots_execs_and_clones_from_its_template(home: str) -> None:
    before_procs = vm_processes()
    for t in templates(home):          # a kept developer home: start from a cold boot
        shutil.rmtree(os.path.join(home, "vmtemplates", t))
    # the image boots its own init: a command of virtkit's is refused, and nothing is made
    r = vk(home, "run", "--vm", "--name", "dvm0", "deb-vm", "--", "echo", "hi")
    assert r.returncode == 2 and "boots its own system as a VM and runs no command" in r.stderr, r.stderr
    assert "dvm0" not in ok(vk(home, "list"))
    r = vk(home, "run", "--vm", "-d", "--name", "dvm1", "--memory", "1G", "deb-vm")
    assert ok(r).strip() == "dvm1"
    assert "dvm1 boots: no template" in r.stderr
    osr = ok(vk(home, "exec", "dvm1", "--", "cat", "/etc/os-release", timeout=BOOT_TIMEOUT))
    assert 'ID=debian' in osr and "bookworm" in osr
    r = vk(home, "exec", "dvm1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = vk(home, "exec", "dvm1", "--", "no-such-command")
    assert r.returncode == 127 and "not found" in r.stderr
    first = identity(home, "dvm1")
    net = inspect(home, "dvm1")["spec"]["net"]
    assert first["hostname"] == "dvm1" and first["ip"] == net["address"] and first["mac"] == net["mac"]
    # no guest configuration: the kernel command line turned cloud-init off before any of its units ran
    assert guest(home, "dvm1", "test -e /run/cloud-init/enabled && echo on; systemctl is-active cloud-init-local "
                               "cloud-final || true").split() == ["inactive", "inactive"]
    assert ok(vk(home, "exec", "dvm1", "--", "uname", "-r")).strip() == \
        shared_build()["vm"].config["config"]["Labels"]["org.virtkit.vm.kernel.release"]
    wait_template(home)

    # two VMs from the template: each its own machine, both answering
    seen = [first]
    for name in ("dvm2", "dvm3"):
        r = vk(home, "run", "--vm", "-d", "--name", name, "--memory", "1G", "deb-vm")
        assert ok(r).strip() == name
        assert f"{name} started from the saved template" in r.stderr, r.stderr
        ident = identity(home, name)
        info = inspect(home, name)
        net = info["spec"]["net"]
        assert ident["hostname"] == name and ident["ip"] == net["address"] and ident["mac"] == net["mac"]
        # set in the guest, the MAC reached QEMU's virtio-net device too (what the bridge sees it send from)
        sock = os.path.join(home, "run", f"qmp-{info['id'][:16]}.sock")
        assert [f["main-mac"] for f in qmp.execute(sock, "query-rx-filter")] == [net["mac"]]
        seen.append(ident)
    for key in ("hostname", "mac", "ip", "machine_id"):
        assert len({s[key] for s in seen}) == 3, (key, seen)
    assert "PRETTY_NAME" in ok(vk(home, "exec", "dvm2", "--", "cat", "/etc/os-release"))
    r = vk(home, "exec", "dvm3", "--", "sh", "-c", "exit 5")
    assert r.returncode == 5
    # the clones reach each other on the network (their addresses are their own, and ARP learns the new MACs)
    dvm2_ip = seen[1]["ip"]
    assert ok(vk(home, "exec", "dvm3", "--", "sh", "-c", f"timeout 5 bash -c '</dev/tcp/{dvm2_ip}/1' 2>&1; "
                                                         "ip neigh show")).count(dvm2_ip) >= 1

    # stop (ACPI power button: systemd powers off), then rm: nothing of theirs is left
    vm_taps = {inspect(home, n)["spec"]["net"]["tap"] for n in ("dvm1", "dvm2", "dvm3")}
    assert len(vm_taps) == 3 and vm_taps <= host_links()
    out = ok(vk(home, "stop", "dvm2", timeout=120))
    assert "dvm2" in out and inspect(home, "dvm2")["state"] == "stopped"
    for name in ("dvm1", "dvm2", "dvm3"):
        ok(vk(home, "rm", "-f", name))
    assert vm_processes() - before_procs == set()
    assert vm_taps & host_links() == set()
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if home in line]
    assert os.listdir(os.path.join(home, "vms")) == []


def test_a_template_that_fails_to_load_is_dropped_the_vm_boots_and_a_new_one_is_saved(home: str) -> None:
    """(A template found damaged at create is not used at all: tests/vm/test_system_image_parts.py.)"""
    from virtkit.client import connect

    key = wait_template(home)
    client = connect(home)
    client.create("deb-vm", name="dvm4", type="vm", memory="1G")       # whole at create: made from it
    with open(os.path.join(home, "vmtemplates", key, "template.json")) as f:
        state = os.path.join(home, "vmtemplates", key, json.load(f)["state"])   # .zst where zstd is installed
    with open(state, "r+b") as f:          # damaged after: bytes flipped near the start and in the middle
        for pos in (100, os.path.getsize(state) // 2):
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0xFF]))
    ok(vk(home, "start", "dvm4", timeout=BOOT_TIMEOUT))
    boot = client.stats("dvm4")["boot"]
    assert boot["mode"] == "boot" and "the template could not be used" in boot["why"], boot
    assert identity(home, "dvm4")["hostname"] == "dvm4"
    assert wait_template(home) == key            # saved anew, from dvm4
    with open(os.path.join(home, "vmtemplates", key, "template.json")) as f:
        assert json.load(f)["from"] == "dvm4"
    r = vk(home, "run", "--vm", "-d", "--name", "dvm5", "--memory", "1G", "deb-vm")
    assert "dvm5 started from the saved template" in r.stderr, r.stderr
    assert identity(home, "dvm5")["hostname"] == "dvm5"
    for name in ("dvm4", "dvm5"):
        ok(vk(home, "rm", "-f", name))


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0fOdJKZPu6PhqAhKRUsB7u2VDdVGqYdWlCyHY1kvYq me@host"


def test_a_vm_given_user_data_and_a_key_boots_and_cloud_init_applies_them(home: str, tmp_path: Any) -> None:
    ud, key = tmp_path / "user-data", tmp_path / "id_ed25519.pub"
    ud.write_text("#cloud-config\nwrite_files:\n - path: /root/from-user-data\n   content: made by cloud-init\n")
    key.write_text(KEY + "\n")
    # a file that is not there: a usage error, and nothing is made
    r = vk(home, "run", "--vm", "-d", "--name", "dci0", "--ssh-key", str(tmp_path / "nope.pub"), "deb-vm")
    assert r.returncode == 2 and "ssh_keys:" in r.stderr and "nope.pub: no such file" in r.stderr, r.stderr
    assert "dci0" not in ok(vk(home, "list"))

    r = vk(home, "run", "--vm", "-d", "--name", "dci1", "--memory", "1G", "--user-data", str(ud),
           "--ssh-key", str(key), "deb-vm")
    assert ok(r).strip() == "dci1"
    assert "dci1 boots: guest configuration given (--user-data, --ssh-key)" in r.stderr, r.stderr
    out = guest(home, "dci1", "cloud-init status --wait; cat /root/from-user-data; echo; "
                              "cat /root/.ssh/authorized_keys; hostname")
    lines = [ln.strip() for ln in out.splitlines() if ln.strip() and not ln.strip().startswith(".")]
    assert lines == ["status: done", "made by cloud-init", KEY, "dci1"], out
    ok(vk(home, "rm", "-f", "dci1"))
    assert "dci1" not in ok(vk(home, "list"))
