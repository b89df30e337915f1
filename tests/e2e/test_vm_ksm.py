"""`virtkit system ksm`: same pages of several VMs kept once, host-wide, only when the user turns it on."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.e2e.conftest import vk
from virtkit.core.errors import InvalidArgument, Unsupported
from virtkit.vm import ksm

pytestmark = pytest.mark.root


def _fake_ksm(root) -> str:
    for name, value in (("run", "0"), ("pages_shared", "0"), ("pages_sharing", "0"), ("pages_to_scan", "100"),
                        ("sleep_millisecs", "20")):
        (root / name).write_text(value + "\n")
    return str(root)


def test_turning_it_on_sets_virtkits_scan_rate_and_off_unmerges(tmp_path):
    root = _fake_ksm(tmp_path)
    st = ksm.set_enabled(True, root)
    assert st["enabled"] and st["pages_to_scan"] == ksm.PAGES_TO_SCAN and st["sleep_millisecs"] == ksm.SLEEP_MS
    st = ksm.set_enabled(False, root)
    assert not st["enabled"] and (tmp_path / "run").read_text() == "2"     # stop and unmerge


def test_bad_input_and_a_kernel_without_ksm_are_clear_errors(tmp_path):
    root = _fake_ksm(tmp_path)
    with pytest.raises(InvalidArgument, match="enabled: must be true or false"):
        ksm.set_enabled("yes", root)
    assert (tmp_path / "run").read_text().strip() == "0"                    # nothing changed
    with pytest.raises(Unsupported, match="CONFIG_KSM"):
        ksm.set_enabled(True, str(tmp_path / "missing"))
    assert ksm.status(str(tmp_path / "missing")) == {"available": False, "enabled": False}


@pytest.fixture
def host_ksm():
    if not os.path.isdir(ksm.KSM_DIR):
        pytest.skip("this kernel has no KSM (/sys/kernel/mm/ksm)")
    saved = {n: open(os.path.join(ksm.KSM_DIR, n)).read().strip() for n in ("run", "pages_to_scan", "sleep_millisecs")}
    yield
    with open(os.path.join(ksm.KSM_DIR, "run"), "w") as f:
        f.write("2" if saved["run"] != "1" else "1")        # unmerge what the test merged
    for n in ("pages_to_scan", "sleep_millisecs", "run"):
        with open(os.path.join(ksm.KSM_DIR, n), "w") as f:
            f.write(saved[n])


@pytest.mark.slow
def test_two_idle_vms_share_pages_once_it_is_on(vk_home, client, name, host_ksm):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    client.ksm(False)
    names = [f"{name}-a", f"{name}-b"]
    try:
        for n in names:
            client.run("busybox", ["sh", "-c", "echo up; exec sleep 600"], detach=True, name=n, type="vm",
                       network="none")
        for n in names:
            deadline = time.monotonic() + 120
            while b"up" not in b"".join(client.logs(n)) and time.monotonic() < deadline:
                time.sleep(0.2)
        before = client.ksm()["pages_sharing"]
        r = vk(vk_home, "system", "ksm", "on")
        assert r.returncode == 0 and b"KSM: on" in r.stdout, r.stderr
        deadline = time.monotonic() + 60
        while client.ksm()["pages_sharing"] < before + 2560 and time.monotonic() < deadline:
            time.sleep(0.5)
        on = client.ksm()
        # the two guests' copies of the kernel alone are tens of MiB alike; 10 MiB is a floor, not the figure
        assert on["enabled"] and on["pages_sharing"] >= before + 2560, on
        r = vk(vk_home, "system", "ksm", "off")
        assert r.returncode == 0 and b"KSM: off" in r.stdout, r.stderr
        assert not client.ksm()["enabled"]
    finally:
        vk(vk_home, "rm", "-f", *names)
