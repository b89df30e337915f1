"""`virtkit-runtime` end to end through its console script, as podman would drive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

EXE = os.path.join(os.path.dirname(sys.executable), "virtkit-runtime")


def vr(root: str, *args: str, **kw) -> subprocess.CompletedProcess:
    if args[0] == "create":
        # the container inherits stdio: capture pipes would stay open until it exits
        with open(os.path.join(root, "..", "create.err"), "w+") as err:
            r = subprocess.run([EXE, "--root", root, *args], stdout=subprocess.DEVNULL, stderr=err, timeout=30)
            err.seek(0)
            r.stderr = err.read()
            return r
    return subprocess.run([EXE, "--root", root, *args], capture_output=True, text=True, timeout=30, **kw)


def test_spec_writes_a_valid_config(tmp_path):
    r = subprocess.run([EXE, "spec"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from virtkit.container.spec import validate

    cfg = json.loads((tmp_path / "config.json").read_text())
    validate(cfg)
    assert cfg["process"]["args"] == ["sh"]
    again = subprocess.run([EXE, "spec"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    rootless = tmp_path / "rl"
    rootless.mkdir()
    subprocess.run([EXE, "spec", "--rootless"], cwd=rootless, check=True)
    assert {"type": "user"} in json.loads((rootless / "config.json").read_text())["linux"]["namespaces"]


def test_usage_errors_exit_2(tmp_path):
    r = subprocess.run([EXE, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = subprocess.run([EXE, "--systemd-cgroup", "list"], capture_output=True, text=True)
    assert r.returncode == 1 and "unsupported" not in r.stdout and "cgroupfs only" in r.stderr
    r = subprocess.run([EXE, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "virtkit-runtime version" in r.stdout
    log = tmp_path / "log.json"
    r = subprocess.run([EXE, "--root", str(tmp_path), "--log", str(log), "--log-format", "json", "state", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "does not exist" in r.stderr
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]


@pytest.mark.root
def test_cli_lifecycle(runtime, runtime_root, cid, bundle, tmp_path):
    bundle.args("sh", "-c", "sleep 30").save()
    pid_file = tmp_path / "pid"
    r = vr(runtime_root, "create", "--bundle", bundle.path, "--pid-file", str(pid_file), cid)
    assert r.returncode == 0, r.stderr
    state = json.loads(vr(runtime_root, "state", cid).stdout)
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert vr(runtime_root, "start", cid).returncode == 0
    assert json.loads(vr(runtime_root, "state", cid).stdout)["status"] == "running"
    listed = json.loads(vr(runtime_root, "list", "--format", "json").stdout)
    assert [s["id"] for s in listed] == [cid]
    ex = vr(runtime_root, "exec", cid, "sh", "-c", "echo $((6*7)); hostname")
    assert ex.returncode == 0 and ex.stdout.split()[0] == "42", ex.stderr
    assert vr(runtime_root, "exec", cid, "sh", "-c", "exit 5").returncode == 5
    assert state["pid"] in json.loads(vr(runtime_root, "ps", "--format", "json", cid).stdout)
    assert vr(runtime_root, "pause", cid).returncode == 0
    assert json.loads(vr(runtime_root, "state", cid).stdout)["status"] == "paused"
    assert vr(runtime_root, "resume", cid).returncode == 0
    r = vr(runtime_root, "delete", cid)
    assert r.returncode == 1 and "running" in r.stderr
    assert vr(runtime_root, "kill", cid, "KILL").returncode == 0
    for _ in range(300):
        if json.loads(vr(runtime_root, "state", cid).stdout)["status"] == "stopped":
            break
        time.sleep(0.01)
    assert vr(runtime_root, "delete", cid).returncode == 0
    assert os.listdir(runtime_root) == []
    with open("/proc/self/mountinfo") as f:
        assert bundle.path not in f.read()


@pytest.mark.root
def test_cli_run_exit_code_and_bad_input(runtime, runtime_root, cid, bundle):
    bundle.args("sh", "-c", "echo out; exit 4").save()
    r = vr(runtime_root, "run", "--bundle", bundle.path, cid)
    assert r.returncode == 4 and r.stdout == "out\n", r.stderr
    assert os.listdir(runtime_root) == []
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write("{")
    r = vr(runtime_root, "create", "--bundle", bundle.path, cid)
    assert r.returncode != 0 and "malformed JSON" in r.stderr
    bundle.spec["linux"]["namespaces"][2] = {"type": "foo"}
    bundle.save()
    r = vr(runtime_root, "create", "-b", bundle.path, cid)
    assert r.returncode != 0 and "linux.namespaces[2].type: unknown namespace type 'foo'" in r.stderr
    r = vr(runtime_root, "create", "-b", bundle.path, "bad/id")
    assert r.returncode != 0 and "container id" in r.stderr
    assert os.listdir(runtime_root) == []


@pytest.mark.root
def test_cli_duplicate_id(runtime, runtime_root, cid, bundle):
    bundle.args("sleep", "30").save()
    assert vr(runtime_root, "create", "-b", bundle.path, cid).returncode == 0
    r = vr(runtime_root, "create", "-b", bundle.path, cid)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert vr(runtime_root, "delete", "--force", cid).returncode == 0
    assert os.listdir(runtime_root) == []
