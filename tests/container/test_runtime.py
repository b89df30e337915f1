"""Runtime lifecycle and isolation, for real (root): busybox containers created, started, exec'd, deleted."""

from __future__ import annotations

import os
import time

import pytest

from virtkit.core.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound

pytestmark = pytest.mark.root


def _run(runtime, cid, bundle, *args, **kw) -> tuple[int, str]:
    """run the container with stdout/stderr into a file; return (exit code, output)."""
    bundle.args(*args).save()
    out = os.path.join(bundle.path, f"out-{time.monotonic_ns()}")
    with open(out, "w+") as f, open(os.devnull) as null:
        code = runtime.run(cid, bundle.path, stdio=(null.fileno(), f.fileno(), f.fileno()), **kw)
        f.seek(0)
        return code, f.read()


def _wait_status(runtime, cid, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.state(cid)["status"] == want:
            return
        time.sleep(0.01)
    assert runtime.state(cid)["status"] == want


def test_lifecycle_create_start_stop_delete(runtime, cid, bundle, runtime_root, uid):
    bundle.args("sh", "-c", "sleep 0.3").save()
    st = runtime.create(cid, bundle.path)
    assert st["status"] == "created" and st["id"] == cid and st["bundle"] == bundle.path
    assert os.path.exists(f"/proc/{st['pid']}")
    assert runtime.state(cid)["status"] == "created"
    assert [s["id"] for s in runtime.list()] == [cid]
    with pytest.raises(AlreadyExists):
        runtime.create(cid, bundle.path)
    runtime.start(cid)
    assert runtime.state(cid)["status"] == "running"
    with pytest.raises(InvalidState):
        runtime.delete(cid)
    _wait_status(runtime, cid, "stopped")
    runtime.delete(cid)
    assert not os.path.exists(os.path.join(runtime_root, cid))
    assert not os.path.exists(f"/sys/fs/cgroup/pids/virtkit-test-{uid}/{cid}")
    with pytest.raises(NotFound):
        runtime.state(cid)


def test_create_with_start_runs_the_process_at_once_without_a_fifo(runtime, cid, bundle, runtime_root, tmp_path):
    out = tmp_path / "out"
    bundle.args("sh", "-c", "echo started; sleep 0.5").save()
    with open(out, "w") as f, open(os.devnull) as null:
        st = runtime.create(cid, bundle.path, stdio=(null.fileno(), f.fileno(), f.fileno()), start=True)
    assert st["status"] == "running" and runtime.state(cid)["status"] == "running"
    assert not os.path.exists(os.path.join(runtime_root, cid, "exec.fifo"))
    deadline = time.monotonic() + 5
    while out.read_text() != "started\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out.read_text() == "started\n"      # nobody called start
    with pytest.raises(InvalidState, match="is running, not created"):
        runtime.start(cid)
    _wait_status(runtime, cid, "stopped")
    runtime.delete(cid)


def test_create_with_start_keeps_the_hooks_order(runtime, cid, bundle, tmp_path):
    log = tmp_path / "hooks.log"
    bundle.spec["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"echo prestart >> {log}"]}]}
    bundle.args("true").save()
    st = runtime.create(cid, bundle.path, start=True)
    assert st["status"] == "created"            # with hooks, start stays a step of its own
    assert log.read_text() == "prestart\n"
    runtime.start(cid)
    _wait_status(runtime, cid, "stopped")
    runtime.delete(cid)


def test_run_returns_exit_code(runtime, cid, bundle):
    assert _run(runtime, cid, bundle, "sh", "-c", "exit 3")[0] == 3
    assert runtime.list() == []


def test_killed_process_gives_128_plus_signal(runtime, cid, bundle):
    import threading

    # PID 1 of a pid namespace cannot SIGKILL itself: the runtime kills it from outside
    timer = threading.Timer(0.5, lambda: runtime.kill(cid, 9))
    timer.start()
    try:
        assert _run(runtime, cid, bundle, "sleep", "30")[0] == 128 + 9
    finally:
        timer.cancel()


def test_isolation_pid_hostname_mounts_network(runtime, cid, bundle):
    bundle.spec["hostname"] = "vk-" + cid[-6:]
    code, out = _run(runtime, cid, bundle, "sh", "-c",
                     "echo pid=$$; hostname; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo;"
                     "cat /proc/self/mountinfo; echo ifaces; ls /sys/class/net; cat /sys/class/net/lo/operstate;"
                     "ip -o link")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "pid=1"
    assert lines[1] == "vk-" + cid[-6:]
    # only the container's own few processes: PID 1 and the pipeline's members
    assert "1" in lines[2].split() and max(int(x) for x in lines[2].split()) < 20, lines[2]
    mount_points = [ln.split()[4] for ln in lines[3:] if len(ln.split()) > 5 and ln.split()[0].isdigit()]
    assert mount_points[0] == "/"
    assert not any(m.startswith(("/work", "/home", "/tmp/")) for m in mount_points), mount_points
    ifaces = out.split("ifaces\n")[1].split()
    assert ifaces[0] == "lo" and "eth0" not in ifaces
    assert "UP" in out.split("ifaces\n")[1]


def test_user_groups_umask(runtime, cid, bundle):
    bundle.spec["process"]["user"] = {"uid": 1234, "gid": 2345, "additionalGids": [3456, 4567], "umask": 0o027}
    code, out = _run(runtime, cid, bundle, "sh", "-c", "id -u; id -g; id -G; umask; touch /tmp/f; stat -c %a /tmp/f")
    assert code == 0, out
    uid, gid, groups, umask, mode = out.split("\n")[:5]
    assert (uid, gid) == ("1234", "2345")
    assert set(groups.split()) == {"2345", "3456", "4567"}
    assert umask == "0027"
    assert mode == "640"


def test_rlimits(runtime, cid, bundle):
    bundle.spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654},
                                         {"type": "RLIMIT_NPROC", "soft": 77, "hard": 88}]
    code, out = _run(runtime, cid, bundle, "sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u")
    assert code == 0, out
    assert out.split() == ["321", "654", "77"]


def test_env_and_cwd(runtime, cid, bundle):
    bundle.spec["process"]["env"] = ["PATH=/bin", "FOO=bar baz"]
    bundle.spec["process"]["cwd"] = "/tmp"
    code, out = _run(runtime, cid, bundle, "sh", "-c", 'echo "$FOO"; pwd')
    assert out.split("\n")[:2] == ["bar baz", "/tmp"]


def test_masked_and_readonly_paths_and_ro_volume(runtime, cid, bundle, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("data")
    bundle.spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol),
                                  "options": ["rbind", "ro"]})
    bundle.spec["linux"]["maskedPaths"].append("/etc/passwd")
    bundle.spec["linux"]["maskedPaths"].append("/proc/acpi")
    code, out = _run(runtime, cid, bundle, "sh", "-c",
                     "cat /proc/keys | wc -c; cat /etc/passwd | wc -c; ls /proc/acpi | wc -l; cat /vol/f; echo;"
                     "echo 1 > /proc/sys/kernel/hostname && echo wrote-sys;"
                     "echo x > /vol/f && echo wrote-vol; touch /vol/new && echo wrote-new; true")
    assert out.split("\n")[:4] == ["0", "0", "0", "data"], out
    assert "wrote" not in out
    assert "Read-only file system" in out
    assert (vol / "f").read_text() == "data"
    assert not (vol / "new").exists()


def test_readonly_root(runtime, cid, bundle):
    bundle.spec["root"]["readonly"] = True
    code, out = _run(runtime, cid, bundle, "sh", "-c", "touch /etc/x && echo wrote; touch /tmp/y && echo tmp")
    assert "wrote" not in out and "Read-only" in out
    assert not os.path.exists(os.path.join(bundle.rootfs, "etc/x"))


def test_exec_joins_namespaces_and_cgroup(runtime, cid, bundle, tmp_path):
    bundle.spec["hostname"] = "exechost"
    bundle.args("sh", "-c", "echo inside > /tmp/marker; sleep 30").save()
    st = runtime.create(cid, bundle.path)
    runtime.start(cid)
    out = tmp_path / "exec-out"
    for _ in range(200):
        if os.path.exists(os.path.join(bundle.rootfs, "tmp/marker")):
            break
        time.sleep(0.01)
    with open(out, "w+") as f:
        code = runtime.exec(cid, {"args": ["sh", "-c", "hostname; cat /tmp/marker; echo $$; ls /proc | grep -c '^[0-9]'"
                                           "; cat /proc/self/cgroup | grep pids"]},
                            stdio=(0, f.fileno(), f.fileno()))
    text = out.read_text().split("\n")
    assert code == 0, text
    assert text[0] == "exechost" and text[1] == "inside"
    assert int(text[2]) > 1
    assert cid in text[4] or text[4].endswith(":/"), text
    pids = runtime.ps(cid)
    assert st["pid"] in pids
    assert runtime.exec(cid, {"args": ["sh", "-c", "exit 7"]}) == 7
    gpid = runtime.exec(cid, {"args": ["sleep", "30"]}, detach=True)
    assert gpid in runtime.ps(cid)
    runtime.delete(cid, force=True)
    assert not os.path.exists(f"/proc/{gpid}/cmdline") or open(f"/proc/{gpid}/cmdline").read() == ""


def test_exec_into_stopped_container_fails(runtime, cid, bundle):
    bundle.args("true").save()
    runtime.create(cid, bundle.path)
    runtime.start(cid)
    _wait_status(runtime, cid, "stopped")
    with pytest.raises(InvalidState, match="is not running"):
        runtime.exec(cid, {"args": ["true"]})


def test_kill_and_pause_resume(runtime, cid, bundle):
    bundle.args("sleep", "30").save()
    runtime.create(cid, bundle.path)
    runtime.start(cid)
    runtime.pause(cid)
    assert runtime.state(cid)["status"] == "paused"
    runtime.resume(cid)
    assert runtime.state(cid)["status"] == "running"
    runtime.kill(cid, 9)
    _wait_status(runtime, cid, "stopped")
    with pytest.raises(InvalidState):
        runtime.kill(cid, 9)
    runtime.delete(cid)


@pytest.fixture
def traversable(bundle):
    """The mapped root must be able to reach the rootfs: open up pytest's 0700 ancestors for the test."""
    changed = []
    path = os.path.dirname(bundle.rootfs)
    while path not in ("/", "/tmp"):
        mode = os.stat(path).st_mode & 0o7777
        if mode & 0o011 != 0o011:
            changed.append((path, mode))
            os.chmod(path, mode | 0o011)
        path = os.path.dirname(path)
    yield
    for path, mode in changed:
        os.chmod(path, mode)


def test_user_namespace_mapping(runtime, cid, bundle, traversable):
    base = 100000
    os.chown(bundle.rootfs, base, base)
    bundle.spec["linux"]["namespaces"].append({"type": "user"})
    bundle.spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
    bundle.spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
    bundle.args("sh", "-c", "id -u; cat /proc/self/uid_map; sleep 30").save()
    st = runtime.create(cid, bundle.path)
    runtime.start(cid)
    time.sleep(0.2)
    with open(f"/proc/{st['pid']}/status") as f:
        status = f.read()
    uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(base)] * 4
    runtime.delete(cid, force=True)


def test_overlay_rootfs_annotation(runtime, cid, bundle, tmp_path):
    import json as _json

    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    bundle.spec["annotations"] = {"org.virtkit.rootfs.overlay": _json.dumps(
        {"lowerdir": [bundle.rootfs], "upperdir": str(upper), "workdir": str(work)})}
    code, out = _run(runtime, cid, bundle, "sh", "-c", "echo hi > /etc/new; grep -c overlay /proc/self/mountinfo")
    assert code == 0, out
    assert (upper / "etc/new").read_text() == "hi\n"
    assert not os.path.exists(os.path.join(bundle.rootfs, "etc/new"))


def test_hooks_run_and_failing_hook_rolls_back(runtime, cid, bundle, tmp_path, runtime_root):
    log = tmp_path / "hooks.log"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\necho \"$1 $(cat)\" >> {log}\n")
    script.chmod(0o755)
    bundle.spec["hooks"] = {k: [{"path": str(script), "args": ["hook.sh", k]}]
                            for k in ("prestart", "createRuntime", "poststart", "poststop")}
    code, _ = _run(runtime, cid, bundle, "true")
    kinds = [ln.split()[0] for ln in log.read_text().splitlines()]
    assert kinds == ["prestart", "createRuntime", "poststart", "poststop"]
    assert f'"id": "{cid}"' in log.read_text()
    bundle.spec["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    bundle.save()
    with pytest.raises(Exception, match="createRuntime hook"):
        runtime.create(cid, bundle.path)
    assert os.listdir(runtime_root) == []


def test_bad_input_leaves_nothing(runtime, cid, bundle, runtime_root):
    bundle.spec["linux"]["namespaces"].append({"type": "foo"})
    bundle.save()
    with pytest.raises(InvalidArgument, match=r"linux.namespaces\[6\].type: unknown namespace type 'foo'"):
        runtime.create(cid, bundle.path)
    with pytest.raises(InvalidArgument, match="container id"):
        runtime.create("../evil", bundle.path)
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(InvalidArgument, match="malformed JSON"):
        runtime.create(cid, bundle.path)
    bundle.spec["linux"]["namespaces"].pop()
    bundle.args("/no/such/binary").save()
    with pytest.raises(Exception, match="not found"):
        runtime.create(cid, bundle.path)
    assert os.listdir(runtime_root) == []


def test_failing_mount_reports_clear_error(runtime, cid, bundle, runtime_root):
    bundle.spec["mounts"].append({"destination": "/x", "type": "bind", "source": "/no/such/dir"})
    bundle.save()
    with pytest.raises(Exception, match="/no/such/dir on /x"):
        runtime.create(cid, bundle.path)
    assert os.listdir(runtime_root) == []


def test_memory_swappiness_and_oom_killer_reach_the_cgroup(runtime, cid, bundle, runtime_root, uid):
    from virtkit.container.cgroups import detect_version
    if detect_version() != 1:
        pytest.skip("cgroup v1 host only (v2 refuses these settings; see test_cgroups)")
    bundle.spec["linux"]["resources"] = {"memory": {"limit": 64 << 20, "swappiness": 500}}
    bundle.args("sleep", "30").save()
    with pytest.raises(InvalidArgument, match=r"linux.resources.memory.swappiness: must be 0..100 \(got 500\)"):
        runtime.create(cid, bundle.path)
    assert os.listdir(runtime_root) == []
    bundle.spec["linux"]["resources"]["memory"].update(swappiness=3, disableOOMKiller=True)
    bundle.save()
    runtime.create(cid, bundle.path)
    memdir = f"/sys/fs/cgroup/memory/virtkit-test-{uid}/{cid}"
    with open(f"{memdir}/memory.swappiness") as f:
        assert f.read().strip() == "3"
    with open(f"{memdir}/memory.oom_control") as f:
        assert "oom_kill_disable 1" in f.read()
    runtime.delete(cid, force=True)
    assert not os.path.exists(memdir)
