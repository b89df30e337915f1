"""Escape attempts from inside a container; each must fail and leave the host untouched."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.root


def _run(runtime, cid, bundle, script: str) -> tuple[int, str]:
    bundle.args("sh", "-c", script).save()
    out = os.path.join(bundle.path, "out")
    with open(out, "w+") as f, open(os.devnull) as null:
        code = runtime.run(cid, bundle.path, stdio=(null.fileno(), f.fileno(), f.fileno()))
        f.seek(0)
        return code, f.read()


@pytest.fixture
def host_target(tmp_path, uid):
    """A host directory outside every rootfs that an escape would write into."""
    path = tmp_path / f"host-target-{uid}"
    path.mkdir()
    return path


@pytest.mark.parametrize("relative", [False, True])
def test_mount_destination_symlink_stays_in_rootfs(runtime, cid, bundle, host_target, relative, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "payload").write_text("x\n")
    target = os.path.relpath(host_target, os.path.join(bundle.rootfs, "mnt")) if relative else str(host_target)
    os.symlink(target, os.path.join(bundle.rootfs, "mnt/evil"))
    bundle.spec["mounts"].append({"destination": "/mnt/evil", "type": "bind", "source": str(vol),
                                  "options": ["rbind"]})
    bundle.spec["mounts"].append({"destination": "/mnt/evil2", "type": "tmpfs", "source": "tmpfs"})
    os.symlink(str(host_target) + "-b", os.path.join(bundle.rootfs, "mnt/evil2"))
    code, out = _run(runtime, cid, bundle, "cat /mnt/evil/payload; touch /mnt/evil2/planted; echo done")
    assert code == 0, out
    assert out.split() == ["x", "done"]
    assert os.listdir(host_target) == []
    assert not os.path.exists(str(host_target) + "-b")
    # the mounts landed inside the rootfs, where the symlinks point when read from inside
    assert os.path.isdir(os.path.join(bundle.rootfs, str(host_target).lstrip("/"))) or relative


def test_dev_null_symlink_to_host_file(runtime, cid, bundle, host_target):
    victim = host_target / "victim"
    victim.write_text("keep")
    os.symlink(str(victim), os.path.join(bundle.rootfs, "dev/null"))
    # no /dev tmpfs: devices are made directly in the rootfs's /dev
    bundle.spec["mounts"] = [m for m in bundle.spec["mounts"] if not m["destination"].startswith("/dev")]
    code, out = _run(runtime, cid, bundle, "echo gone > /dev/null; echo ok")
    assert "ok" in out
    assert victim.read_text() == "keep"
    assert os.listdir(host_target) == ["victim"]


def test_dev_symlink_to_host_dir(runtime, cid, bundle, host_target):
    os.rmdir(os.path.join(bundle.rootfs, "dev"))
    os.symlink(str(host_target), os.path.join(bundle.rootfs, "dev"))
    code, out = _run(runtime, cid, bundle, "ls /dev; echo ok")
    assert code == 0, out
    assert "null" in out
    assert os.listdir(host_target) == []


def test_no_host_fd_or_cwd_leaks(runtime, cid, bundle, tmp_path):
    leak = os.open(str(tmp_path), os.O_RDONLY)  # inheritable-looking fd the runtime must not pass on
    os.set_inheritable(leak, True)
    try:
        code, out = _run(runtime, cid, bundle, "ls /proc/self/fd; readlink /proc/1/cwd; pwd; "
                                               "ls -la /proc/self/cwd/.. | head -3")
    finally:
        os.close(leak)
    fds = out.split("\n")[:4]
    assert [f for f in fds if f.isdigit() and int(f) > 3] == [], out
    assert "/\n/\n" in out


def test_init_exe_not_reachable_while_created(runtime, cid, bundle, tmp_path):
    """PID 1 is the runtime's Python until start (runc's CVE-2019-5736 window): its exe is off limits."""
    bundle.args("true").save()
    runtime.create(cid, bundle.path)
    out = tmp_path / "out"
    with open(out, "w+") as f:
        runtime.exec(cid, {"args": ["sh", "-c", "readlink /proc/1/exe && echo readable; "
                                    "cat /proc/1/exe > /dev/null && echo opened; "
                                    "echo x >> /proc/1/exe && echo written; readlink /proc/1/fd/0 && echo fdlink; "
                                    "readlink /proc/1/cwd && echo cwdlink; true"]},
                     stdio=(0, f.fileno(), f.fileno()))
    text = out.read_text()
    assert "readable" not in text and "opened" not in text and "written" not in text and "link" not in text
    runtime.delete(cid, force=True)


def test_writes_to_proc_sys_and_sys_fail(runtime, cid, bundle):
    code, out = _run(runtime, cid, bundle,
                     "echo 1 > /proc/sys/vm/drop_caches && echo w1; echo x > /proc/sysrq-trigger && echo w2;"
                     "echo 1 > /sys/kernel/profiling && echo w3; mkdir /sys/fs/cgroup/pids/x && echo w4;"
                     "echo 1 > /sys/fs/cgroup/pids/cgroup.procs && echo w5; true")
    for w in ("w1", "w2", "w3", "w4", "w5"):
        assert w not in out.split(), out


def test_host_processes_invisible_and_unsignalable(runtime, cid, bundle):
    host_pid = os.getpid()
    code, out = _run(runtime, cid, bundle, f"kill -0 {host_pid} && echo reached; echo end")
    assert "reached" not in out
    assert time.time() > 0
