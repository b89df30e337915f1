"""Logs: a container's stdout and stderr stay apart and in order, from `virtkit run`, `virtkit logs` and the SDK."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.e2e.conftest import VENV_BIN, vk
from virtkit.core.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.root

# each write a while after the one before, so the order in which they were written is the order read
SCRIPT = "echo out1; sleep 0.5; echo err1 >&2; sleep 0.5; echo out2; sleep 0.5; printf no-newline >&2; "


def _wait_for(client, name: str, marker: bytes, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while marker not in b"".join(client.logs(name)) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_run_writes_stdout_and_stderr_to_ours(vk_home, client):
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"to-out\n", b"to-err\n")


def test_sdk_run_streams_output_as_it_comes_and_a_quick_one_whole(vk_home, client):
    got: list[tuple[float, bytes]] = []
    t0 = time.monotonic()
    st = client.run("busybox", ["sh", "-c", "echo first; sleep 1; echo second"], auto_remove=True,
                    output=lambda b: got.append((time.monotonic() - t0, b)))
    end = time.monotonic() - t0
    assert st["exit_code"] == 0 and b"".join(b for _t, b in got) == b"first\nsecond\n"
    assert got[0][1] == b"first\n" and end - got[0][0] > 0.7, got    # not held back until the end
    out: list[bytes] = []
    st = client.run("busybox", ["sh", "-c", "echo a; echo b >&2; exit 4"], auto_remove=True, output=out.append)
    assert (st["exit_code"], b"".join(out)) == (4, b"a\nb\n")


def test_logs_keeps_streams_apart_in_order_with_tail(vk_home, client, name):
    client.run("busybox", ["sh", "-c", SCRIPT + "sleep 600"], detach=True, name=name)
    _wait_for(client, name, b"no-newline")

    r = vk(vk_home, "logs", name)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out1\nout2\n", b"err1\nno-newline")
    assert list(client.log_stream(name)) == [("stdout", b"out1\n"), ("stderr", b"err1\n"), ("stdout", b"out2\n"),
                                             ("stderr", b"no-newline")]
    assert b"".join(client.logs(name)) == b"out1\nerr1\nout2\nno-newline"

    r = vk(vk_home, "logs", "--tail", "2", name)          # the last two lines, whichever stream they are on
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out2\n", b"no-newline")
    assert vk(vk_home, "logs", "-n", "0", name).stdout == b""
    assert vk(vk_home, "logs", "-n", "all", name).stdout == b"out1\nout2\n"
    assert b"".join(client.logs(name, stdout=False)) == b"err1\nno-newline"
    assert b"".join(client.logs(name, stderr=False, tail=3)) == b"out2\n"

    with pytest.raises(InvalidArgument, match="tail"):
        list(client.logs(name, tail=-1))
    with pytest.raises(InvalidArgument, match="at least one"):
        list(client.logs(name, stdout=False, stderr=False))
    r = vk(vk_home, "logs", "--tail", "many", name)
    assert r.returncode == 2 and b"--tail" in r.stderr
    client.remove(name, force=True)


def test_logs_of_unknown_instance(vk_home, client):
    with pytest.raises(NotFound):
        list(client.logs("no-such-instance-xyz"))
    r = vk(vk_home, "logs", "no-such-instance-xyz")
    assert r.returncode != 0 and b"no-such-instance-xyz" in r.stderr and b"Traceback" not in r.stderr


def test_logs_follow_until_exit_across_restarts(vk_home, client, name):
    client.run("busybox", ["sh", "-c", "echo first; sleep 2; echo second >&2; exit 0"], detach=True, name=name)
    r = vk(vk_home, "logs", "-f", name, timeout=30)       # returns when the instance stops
    assert (r.returncode, r.stdout, r.stderr) == (0, b"first\n", b"second\n")
    assert client.instance(name)["state"] == "stopped"

    client.start(name)                                    # a restart appends to the same log
    deadline = time.monotonic() + 15
    while client.instance(name)["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    r = vk(vk_home, "logs", name)
    assert (r.stdout, r.stderr) == (b"first\nfirst\n", b"second\nsecond\n")

    # follow while it runs: the lines come as they are written, then the command ends with the instance
    client.start(name)
    cli = [os.path.join(VENV_BIN, "virtkit"), "--home", vk_home]
    proc = subprocess.Popen([*cli, "logs", "-f", "-n", "0", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out in (b"", b"first\n") and err == b"second\n"   # "first" may come before -n 0 looked
    client.remove(name)


def test_much_output_is_all_there(vk_home, client, name):
    """More than a pipe holds, written faster than it is read: nothing is lost, no line is torn apart."""
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; echo err-$i >&2; i=$((i+1)); done"
    r = vk(vk_home, "run", "--name", name, "busybox", "--", "sh", "-c", script, timeout=120)
    assert r.returncode == 0
    assert r.stdout.decode().split() == [f"line-{i}" for i in range(20000)]
    assert r.stderr.decode().split() == [f"err-{i}" for i in range(20000)]
    logs = vk(vk_home, "logs", "--tail", "2", name)
    out, err = logs.stdout.split(), logs.stderr.split()
    assert len(out) + len(err) == 2 and (b"line-19999" in out or b"err-19999" in err)
    assert all(x.startswith(b"line-") for x in out) and all(x.startswith(b"err-") for x in err)
    client.remove(name)

