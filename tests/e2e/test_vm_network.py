"""Names on a network with a VM on it: the guest resolves its peers (also ones that join after it booted) through
virtkitd's name server, and containers resolve the VM's name. One VM boot (QEMU under TCG here)."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.e2e.conftest import vk

pytestmark = pytest.mark.root

SERVE = "mkdir -p /www; echo hello-$(hostname) > /www/index.html; exec httpd -f -p 80 -h /www"


def _fetch(url: str, tries: int = 120) -> str:
    return f"for i in $(seq {tries}); do wget -qO- {url} 2>/dev/null && exit 0; sleep 0.5; done; exit 1"


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")


def test_names_resolve_in_a_vm_and_a_vms_name_in_containers(vk_home, client, name):
    net = f"n-{uuid.uuid4().hex[:6]}"
    assert vk(vk_home, "network", "create", net).returncode == 0
    early, late, vm = name, name + "-late", name + "-vm"
    try:
        assert vk(vk_home, "run", "-d", "--name", early, "--network", net, "busybox", "--", "sh", "-c",
                  SERVE).returncode == 0
        # the guest: ping and fetch a peer known at boot, serve what it got, then wait for a peer made later
        guest = (f"mkdir -p /www; ping -c1 -W5 {early} >/www/ping.txt 2>&1; "
                 f"until wget -qO- http://{early}/ >/www/early.html 2>/dev/null; do sleep 0.2; done; "
                 "httpd -p 80 -h /www; "
                 f"until wget -qO /tmp/late http://{late}/ 2>/dev/null; do sleep 0.2; done; "
                 "mv /tmp/late /www/late.html; sleep 600")
        r = vk(vk_home, "run", "-d", "--vm", "--name", vm, "--network", net, "busybox", "--", "sh", "-c", guest,
               timeout=120)
        assert r.returncode == 0, r.stderr
        r = vk(vk_home, "run", "--rm", "--network", net, "busybox", "--", "sh", "-c",
               _fetch(f"http://{vm}/early.html"), timeout=120)       # the VM's name, in a container
        assert r.returncode == 0 and r.stdout.decode() == f"hello-{early}\n", (r.stdout, r.stderr)
        r = vk(vk_home, "run", "--rm", "--network", net, "busybox", "--", "wget", "-qO-", f"http://{vm}/ping.txt")
        assert b"1 packets received" in r.stdout, r.stdout
        assert vk(vk_home, "run", "-d", "--name", late, "--network", net, "busybox", "--", "sh", "-c",
                  SERVE).returncode == 0
        r = vk(vk_home, "run", "--rm", "--network", net, "busybox", "--", "sh", "-c",
               _fetch(f"http://{vm}/late.html"), timeout=120)
        assert r.returncode == 0 and r.stdout.decode() == f"hello-{late}\n", (r.stdout, r.stderr)
    finally:
        vk(vk_home, "rm", "-f", early, late, vm)
        vk(vk_home, "network", "rm", net)
