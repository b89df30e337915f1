"""Podman (through conmon) drives `virtkit-runtime`: run --rm, run -d + exec + stop + rm, -it and exec -it.

Everything podman keeps lives under the test's tmp dir (--root, --runroot, --tmpdir, file locks, a private
containers.conf), the containers' cgroups under a private --cgroup-parent, and the network is `none`: the
host's podman state, /run/libpod, /dev/shm/libpod_lock and its firewall are never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

import pytest

from tests.container.conftest import _mounts_under, make_rootfs

pytestmark = pytest.mark.root

EXE = os.path.join(os.path.dirname(sys.executable), "virtkit-runtime")
CGROUP_ROOT = "/sys/fs/cgroup"
RUNTIME_ROOT = "/run/virtkit-runtime"  # podman passes no --root to a runtime it has no defaults for
# this host's limits are below what podman asks for by default; every runtime needs these here
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

if shutil.which("podman") is None:
    pytest.skip("podman is not installed (apt-get install podman)", allow_module_level=True)


class Podman:
    def __init__(self, base: str, uid: str) -> None:
        self.base = base
        self.uid = uid
        self.cgroup_parent = f"/virtkit-podman-{uid}"
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            # runtime_supports_json makes podman pass --log-format=json --log FILE, from which conmon reads
            # the runtime's error; file locks keep podman off the host-wide /dev/shm/libpod_lock
            f.write('[engine]\nruntime_supports_json = ["virtkit-runtime"]\nlock_type = "file"\n'
                    'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{base}/events.log"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self.argv = ["podman", "--root", f"{base}/root", "--runroot", f"{base}/runroot", "--tmpdir", f"{base}/tmp",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", EXE,
                     "--network-config-dir", f"{base}/networks"]

    def __call__(self, *args: str, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, env=self.env, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def run_opts(self) -> list[str]:
        return [*ULIMITS, "--network", "none", "--cgroup-parent", self.cgroup_parent]

    def in_tty(self, *args: str) -> subprocess.CompletedProcess:
        """Run podman under `script`, which gives it a terminal (what -it needs). Its stdin stays open, as a
        user's terminal does, until podman is done: at EOF on its stdin `script` sends an EOF into the
        terminal and may stop relaying, and the container's output was then lost now and then (CI saw it)."""
        cmd = shlex.join([*self.argv, *args])
        r, w = os.pipe()
        try:
            return subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                                  timeout=60, env=self.env, stdin=r)
        finally:
            os.close(r)
            os.close(w)


@pytest.fixture
def podman(tmp_path: Any, uid: str) -> Any:
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long for it
    base = tempfile.mkdtemp(prefix=f"vkpm-{uid}-", dir="/tmp")
    pm = Podman(base, uid)
    rootfs = make_rootfs(str(tmp_path / "rootfs"))
    tar = str(tmp_path / "busybox.tar")
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    pm("import", tar, f"localhost/virtkit-bb-{uid}:latest")
    yield pm
    ids = pm("ps", "-aq", "--no-trunc", check=False).stdout.split()
    pm("rm", "-f", "-a", "-t", "0", check=False)
    pm("rmi", "-a", "-f", check=False)
    pm("system", "prune", "-f", check=False)
    # podman's own cgroups (the parent and conmon's) are podman's business; ours must be gone by now
    leftover_state = [i for i in ids if os.path.exists(os.path.join(RUNTIME_ROOT, i))]
    mounts = _mounts_under(base)
    groups = _container_cgroups(pm)
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", m], check=False)
    for g in groups:
        _rmdir(g)
    # the parent and conmon's cgroup under it are podman's, made for this test alone
    for hier in os.listdir(CGROUP_ROOT):
        parent = os.path.join(CGROUP_ROOT, hier, pm.cgroup_parent.strip("/"))
        _rmdir(os.path.join(parent, "conmon"))
        _rmdir(parent)
    if not mounts:
        shutil.rmtree(base, ignore_errors=True)
    assert not ids, f"containers left in podman: {ids}"
    assert not leftover_state, f"runtime state left: {leftover_state}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not groups, f"container cgroups left behind: {groups}"


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _image(pm: Podman) -> str:
    return f"localhost/virtkit-bb-{pm.uid}:latest"


def _container_cgroups(pm: Podman) -> list[str]:
    found = []
    for hier in os.listdir(CGROUP_ROOT):
        parent = os.path.join(CGROUP_ROOT, hier, pm.cgroup_parent.strip("/"))
        if os.path.isdir(parent):
            found += [os.path.join(parent, d) for d in os.listdir(parent) if d.startswith("libpod-")]
    return found


def test_podman_run_rm_output_and_exit_code(podman: Podman) -> None:
    r = podman("run", "--rm", *podman.run_opts(), _image(podman),
               "sh", "-c", "echo hello from $(cat /proc/1/comm); echo to-stderr >&2; exit 7", check=False)
    assert r.returncode == 7, r.stderr
    assert r.stdout == "hello from sh\n"
    assert "to-stderr" in r.stderr
    # the runtime's error reaches podman through conmon and the --log file, with podman's exit code for it
    r = podman("run", "--rm", *podman.run_opts(), _image(podman), "/no/such/binary", check=False)
    assert r.returncode == 127, r.stderr
    assert "executable file not found" in r.stderr
    assert podman("ps", "-aq").stdout.strip() == ""
    assert not _container_cgroups(podman)


def test_podman_detached_exec_stop_rm(podman: Podman) -> None:
    cid = podman("run", "-d", "--name", f"vk-{podman.uid}", "--oom-score-adj", "200", *podman.run_opts(),
                 _image(podman), "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done").stdout.strip()
    assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    assert os.path.isdir(os.path.join(RUNTIME_ROOT, cid))
    r = podman("exec", cid, "sh", "-c", "echo exec-out; cat /proc/1/cmdline | tr '\\0' ' '")
    assert r.stdout.startswith("exec-out\nsh -c")
    assert podman("exec", cid, "sh", "-c", "exit 3", check=False).returncode == 3
    assert podman("exec", cid, "cat", "/proc/1/oom_score_adj").stdout == "200\n"
    r = podman("exec", "-u", "65534", "-w", "/tmp", "-e", "FOO=bar", cid, "sh", "-c", "id -u; pwd; echo $FOO")
    assert r.stdout == "65534\n/tmp\nbar\n"
    r = podman("exec", "-i", cid, "cat", input="through stdin\n")
    assert r.stdout == "through stdin\n"
    assert _container_cgroups(podman), "the container runs in a cgroup under its --cgroup-parent"
    podman("pause", cid)
    assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "paused"
    podman("unpause", cid)
    podman("stop", "-t", "10", cid)
    assert podman("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
    assert not os.path.exists(os.path.join(RUNTIME_ROOT, cid))
    podman("rm", cid)
    assert podman("ps", "-aq").stdout.strip() == ""
    assert not _container_cgroups(podman)


def test_podman_terminal_run_and_exec(podman: Podman) -> None:
    if shutil.which("script") is None:
        pytest.skip("script (bsdutils) is not installed")
    r = podman.in_tty("run", "-it", "--rm", *podman.run_opts(), _image(podman),
                      "sh", "-c", "tty; [ -t 0 ] && echo stdin-is-tty; exit 5")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "/dev/pts/0" in r.stdout and "stdin-is-tty" in r.stdout
    cid = podman("run", "-dt", *podman.run_opts(), _image(podman), "sh").stdout.strip()
    r = podman.in_tty("exec", "-it", cid, "sh", "-c", "tty; echo exec-tty; exit 4")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "/dev/pts/" in r.stdout and "exec-tty" in r.stdout
    podman("rm", "-f", "-t", "0", cid)
    assert podman("ps", "-aq").stdout.strip() == ""
