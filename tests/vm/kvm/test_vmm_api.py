"""The VMM's API socket (state, stats, pause/resume, snapshot, bad requests) and the errors when KVM is missing."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtkit.vm.kvm.errors import KvmUnavailable
from virtkit.vm.kvm.kvm import Kvm

needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (absent on this host)")

# 64-bit flat guest: forever { ~65k-iteration busy loop; out '.' to COM1 }
LOOPER = bytes.fromhex("48 31 c9 48 ff c1 48 f7 c1 ff ff 00 00 75 f4 66 ba f8 03 b0 2e ee eb eb")


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def _call(sock: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    conn = _UnixHTTP(sock)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_missing_kvm_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KvmUnavailable, match="does not exist"):
        Kvm(str(tmp_path / "kvm"))


@needs_kvm
def test_api_socket_reports_and_controls_a_running_vm(tmp_path: Path) -> None:
    guest = tmp_path / "loop.bin"
    guest.write_bytes(LOOPER)
    sock, serial = str(tmp_path / "api.sock"), tmp_path / "serial.log"
    proc = subprocess.Popen([sys.executable, "-m", "virtkit.vm.kvm.cli", "--kernel", str(guest), "--kernel-format",
                             "flat", "--memory", "8M", "--serial", str(serial), "--api-sock", sock],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        status, vm = _call(sock, "GET", "/vm")
        assert status == 200 and vm["state"] == "running" and vm["memory"] == 8 << 20
        while serial.stat().st_size < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, stats = _call(sock, "GET", "/stats")
        assert status == 200 and stats["exits"]["IO"] >= 1 and stats["vcpus"][0]["cpu_time_s"] > 0
        assert _call(sock, "PUT", "/actions", {"action": "pause"})[1]["state"] == "paused"
        size = serial.stat().st_size
        time.sleep(0.5)
        assert serial.stat().st_size == size                      # a paused guest prints nothing
        assert _call(sock, "PUT", "/actions", {"action": "resume"})[1]["state"] == "running"
        status, body = _call(sock, "PUT", "/actions", {"action": "explode"})
        assert status == 400 and "unknown action 'explode'" in body["message"]
        status, body = _call(sock, "PUT", "/actions", {"action": "snapshot"})
        assert status == 400 and "'dir'" in body["message"]
        assert _call(sock, "GET", "/nothing")[0] == 404
        snap = tmp_path / "snap"
        assert _call(sock, "PUT", "/actions", {"action": "snapshot", "dir": str(snap)})[0] == 200
        assert (snap / "state.json").exists() and (snap / "memory-0.bin").stat().st_size == 8 << 20
        assert _call(sock, "PUT", "/actions", {"action": "stop"})[0] == 200
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert not os.path.exists(sock)                                # removed on exit


@needs_kvm
def test_second_vmm_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    guest = tmp_path / "g.bin"
    guest.write_bytes(LOOPER)
    sock = tmp_path / "api.sock"
    sock.write_text("")
    proc = subprocess.run([sys.executable, "-m", "virtkit.vm.kvm.cli", "--kernel", str(guest), "--kernel-format",
                           "flat", "--memory", "8M", "--api-sock", str(sock)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0 and "already exists" in proc.stderr
