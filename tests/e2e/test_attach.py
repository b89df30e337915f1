"""`virtkit run -i/-t` and `virtkit attach`: stdin into a container, a terminal for it, as `docker run -it` does."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest

from tests.e2e.conftest import VENV_BIN, vk
from virtkit.config import Home
from virtkit.core.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.root
CLI = os.path.join(VENV_BIN, "virtkit")


def _gone(client, name: str) -> bool:
    try:
        client.instance(name)
        return False
    except NotFound:
        return True


def test_run_interactive_feeds_stdin_then_ends_it(vk_home, client, name):
    r = vk(vk_home, "run", "-i", "--rm", "--name", name, "busybox", "--", "sh", "-c",
           "read x; echo got $x; cat; echo err >&2; exit 4", input=b"hello\nthe rest\n")
    assert (r.returncode, r.stdout, r.stderr) == (4, b"got hello\nthe rest\n", b"err\n")
    assert _gone(client, name)                          # --rm


def test_run_without_i_gives_no_stdin(vk_home, client):
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c", "cat; echo done", input=b"not for it\n")
    assert (r.returncode, r.stdout) == (0, b"done\n")


def test_run_interactive_input_larger_than_a_pipe(vk_home, client):
    data = os.urandom(600_000)
    r = vk(vk_home, "run", "-i", "--rm", "busybox", "--", "sh", "-c", "sleep 1; md5sum", input=data, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_run_tty_runs_on_a_terminal(vk_home, client):
    r = vk(vk_home, "run", "-t", "--rm", "busybox", "--", "sh", "-c", "tty; echo $TERM; echo to-err >&2")
    assert r.returncode == 0, r.stderr
    # one terminal for all three: its output is stdout, with the terminal's line endings
    assert r.stdout == b"/dev/pts/0\r\nxterm\r\nto-err\r\n" and r.stderr == b""
    leftovers = [f for f in os.listdir(Home.from_env(vk_home).run_dir) if f.startswith("console-")]
    assert leftovers == []


def test_run_it_on_our_terminal(vk_home, client, name):
    """On a real terminal: ours goes raw, the container's terminal has our size, ours is as before afterwards."""
    master, slave = pty.openpty()
    import fcntl
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([CLI, "--home", vk_home, "run", "-it", "--rm", "--name", name, "busybox", "--", "sh"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    out = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    return

    try:
        read_until(b"# ")                                 # the shell's prompt
        os.write(master, b"stty size; echo $((6*7))-answer; exit 7\r")
        read_until(b"42-answer")
        assert proc.wait(timeout=30) == 7, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = termios.tcgetattr(slave)
    os.close(master)
    os.close(slave)
    assert b"33 111" in out, out
    assert after == before                                # raw mode undone
    assert _gone(client, name)


def test_detached_interactive_then_attach(vk_home, client, name):
    r = vk(vk_home, "run", "-d", "-i", "--name", name, "busybox", "--", "sh", "-c",
           "echo before; read x; echo got $x; echo bye >&2; exit 3")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while b"before" not in b"".join(client.logs(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    r = vk(vk_home, "attach", name, input=b"line1\n")
    # only what came after attaching; the exit code is the instance's
    assert (r.returncode, r.stdout, r.stderr) == (3, b"got line1\n", b"bye\n")
    r = vk(vk_home, "attach", name)
    assert r.returncode == 1 and b"it is stopped" in r.stderr
    client.remove(name)


def test_leaving_closes_its_stdin_and_leaves_it_running(vk_home, client, name):
    proc = subprocess.Popen([CLI, "--home", vk_home, "run", "-i", "--name", name, "busybox", "--", "sh", "-c",
                             "cat; echo eof-seen; sleep 600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"typed\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"typed\n"
    proc.kill()                                           # the client goes away, its stdin still open
    proc.wait()
    deadline = time.monotonic() + 15
    while b"eof-seen" not in b"".join(client.logs(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"".join(client.logs(name)) == b"typed\neof-seen\n"
    assert client.instance(name)["state"] == "running"
    client.remove(name, force=True)


def test_attach_bad_input(vk_home, client, name):
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    with pytest.raises(InvalidArgument, match="not created with -i or -t"):
        client.attach(name, stdin=iter([b"x"]))
    r = vk(vk_home, "run", "--vm", "-t", "--rm", "busybox", "--", "true")
    assert r.returncode == 2 and b"tty: not supported for VMs" in r.stderr
    with pytest.raises(InvalidArgument, match="console_size"):
        client.create("busybox", ["true"], tty=True, console_size=[24])
    r = vk(vk_home, "attach", "no-such-instance-xyz")
    assert r.returncode != 0 and b"not found" in r.stderr
    client.remove(name, force=True)


def test_many_attached_runs_at_once_leave_the_api_answering(vk_home, client, name):
    """Each `virtkit run` that streams its output holds one of virtkitd's request threads while it waits: with 45
    of them waiting (more than anyio's default pool of 40), another request is still answered at once; it used
    to wait until one of the runs ended."""
    import threading

    from virtkit.client import connect
    from virtkit.client.transport import Transport

    n = 45
    codes: list[int] = []

    def attached(i: int) -> None:
        st = connect(vk_home).run("busybox", ["sleep", "12"], name=f"{name}-{i}", auto_remove=True,
                                  network="none", output=lambda b: None)
        codes.append(st["exit_code"])

    threads = [threading.Thread(target=attached, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        c = connect(vk_home)
        deadline = time.monotonic() + 9
        while True:     # every run started, so every stream is waiting for its container's end
            running = [i for i in c.instances() if i["name"].startswith(f"{name}-") and i["state"] == "running"]
            if len(running) == n:
                break
            assert time.monotonic() < deadline, f"only {len(running)} of {n} attached runs started"
            time.sleep(0.2)
        time.sleep(0.5)
        impatient = Transport(Home.from_env(vk_home).socket, timeout=2)
        assert len(impatient.request("GET", "/v1/instances")) >= n
    finally:
        for t in threads:
            t.join(60)
    assert codes == [0] * n
    assert not [i for i in connect(vk_home).instances() if i["name"].startswith(f"{name}-")]
