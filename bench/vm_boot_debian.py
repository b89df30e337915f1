"""The Debian VM part of bench/vm_boot.py: a system image's VM booted, and started from its template.

Timed through the CLI as a user runs it (`virtkit run --vm -d --memory 1G deb-vm`, then `virtkit exec NAME --
true`), in a home that has the `image build debian --vm` image (built there when missing: minutes):
  cold        run --no-template, until exec answers (systemd boot, qemu-guest-agent up, network applied)
  template    run (the VM loaded from its image's template, then given its own identity), until run returns and
              until exec answers; with the driver's own phases (vms/<id>/boot.json): QEMU launched, state
              loaded and continued, agent answering, identity applied
  bare        the peer: the same QEMU argv with the same -incoming state, run directly: from launch to the
              guest running (QMP cont) and its agent answering a ping
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

IMAGE = "deb-vm"
VIRTKIT = os.path.join(os.path.dirname(sys.executable), "virtkit")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vk(home: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([VIRTKIT, "--home", home, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"virtkit {' '.join(args)}: exit {r.returncode}: {r.stderr[-500:]}")
    return r


def _vdir(home: str, name: str) -> str:
    iid = json.loads(vk(home, "inspect", name).stdout)["id"]
    return os.path.join(home, "vms", iid)


def _templates(home: str) -> list[str]:
    root = os.path.join(home, "vmtemplates")
    return [d for d in os.listdir(root) if not d.startswith(".")] if os.path.isdir(root) else []


def ensure_image(client: Any) -> None:
    try:
        client.image(IMAGE)
    except Exception:  # noqa: BLE001 - not there: build it (cached by its inputs)
        log(f"building {IMAGE} (image build debian --vm): minutes ...")
        client.build_image("debian", IMAGE, vm=True)


def time_run_exec(home: str, name: str, *extra: str) -> tuple[float, float, dict[str, Any]]:
    """ms to `run -d` returning and to the first `exec -- true` answering; the VM's boot record."""
    t0 = time.perf_counter()
    vk(home, "run", "--vm", "-d", "--name", name, "--memory", "1G", *extra, IMAGE)
    t_run = time.perf_counter()
    vk(home, "exec", name, "--", "true")
    t_exec = time.perf_counter()
    with open(os.path.join(_vdir(home, name), "boot.json")) as f:
        boot = json.load(f)
    return (t_run - t0) * 1000, (t_exec - t0) * 1000, boot


def ensure_template(home: str) -> None:
    if _templates(home):
        return
    log("  no template yet: booting the first VM, saved once its agent answers ...")
    vk(home, "run", "--vm", "-d", "--name", "bench-first", "--memory", "1G", IMAGE)
    deadline = time.monotonic() + 900
    while not _templates(home):
        if time.monotonic() > deadline:
            raise RuntimeError("no template saved in 900 s")
        time.sleep(0.5)
    vk(home, "rm", "-f", "bench-first")


def bare_incoming(home: str, tmp: str, bare_argv: Callable[..., list[str]], runs: int) -> dict[str, list[float]]:
    """The argv of a VM started from the template (its run.json), run directly with the same -incoming state
    and a fresh overlay on the template's disk (all linked into tmp)."""
    vk(home, "run", "--vm", "-d", "--name", "bench-argv", "--memory", "1G", IMAGE)
    vdir = _vdir(home, "bench-argv")
    with open(os.path.join(vdir, "run.json")) as f:
        argv = json.load(f)["argv"]
    with open(os.path.join(vdir, "vm.json")) as f:
        tdir = os.path.join(home, "vmtemplates", json.load(f)["template"]["key"])
    bdir = os.path.join(tmp, "deb")
    os.makedirs(bdir, exist_ok=True)
    for src, name in ((os.path.join(vdir, "vmlinux"), "vmlinux"), (os.path.join(vdir, "initramfs.cpio"),
                      "initramfs.cpio"), (os.path.join(tdir, "base.raw"), "base.raw"),
                      (os.path.join(tdir, "disk.qcow2"), "template.qcow2"),
                      (os.path.join(tdir, "memory.state.zst"), "template.state.zst")):
        os.link(src, os.path.join(bdir, name))
    vk(home, "rm", "-f", "bench-argv")
    argv = [a.replace(vdir, bdir) for a in argv]
    # a configuration tried: the state uncompressed (139 MB read by cat rather than 35 MB through zstd -d)
    raw = os.path.join(bdir, "template.state")
    subprocess.run(["zstd", "-dqf", os.path.join(bdir, "template.state.zst"), "-o", raw], check=True)
    argv_raw = [a.replace("exec:zstd -dcq " + os.path.join(bdir, "template.state.zst"), "exec:cat " + raw)
                for a in argv]
    samples: dict[str, list[float]] = {"zstd": [], "raw": []}
    for i in range(runs):
        for kind, av in (("zstd", argv), ("raw", argv_raw)):
            disk = os.path.join(bdir, "disk.qcow2")
            if os.path.exists(disk):
                os.unlink(disk)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "template.qcow2",
                            disk], cwd=bdir, check=True)
            samples[kind].append(_time_bare_incoming(bare_argv(av, tmp, f"deb{kind}{i}"), tmp, f"deb{kind}{i}"))
    return samples


def _time_bare_incoming(argv: list[str], tmp: str, tag: str) -> float:
    from virtkit.vm.qemu import qmp
    from virtkit.vm.qemu.agent import GuestAgent

    qsock, asock = f"{tmp}/qmp-{tag}.sock", f"{tmp}/qga-{tag}.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bare QEMU exited: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("bare QEMU did not load the state in 60 s")
            try:
                if os.path.exists(qsock) and qmp.query_status(qsock).get("status") == "paused":
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.005)
        qmp.cont(qsock)
        GuestAgent(asock).ping()
        return (time.perf_counter() - t0) * 1000
    finally:
        proc.kill()
        proc.wait()
        for path in (f"{tmp}/console-{tag}.log", qsock, asock):
            if os.path.exists(path):
                os.unlink(path)


def run(home: str, client: Any, tmp: str, bare_argv: Callable[..., list[str]], runs: int,
        cold_runs: int) -> dict[str, Any]:
    """All of the Debian part's samples (ms), interleaving nothing: a cold boot loads the host for ~20 s."""
    from lib import common  # type: ignore[import-not-found]

    ensure_image(client)
    cold: dict[str, list[float]] = {"run_ms": [], "exec_ms": []}
    for i in range(cold_runs):
        r, e, _ = time_run_exec(home, f"bench-cold{i}", "--no-template")
        cold["run_ms"].append(r)
        cold["exec_ms"].append(e)
        vk(home, "rm", "-f", f"bench-cold{i}")
        log(f"  cold boot {i + 1}/{cold_runs}: run {r:.0f} ms, exec answers at {e:.0f} ms")
    ensure_template(home)
    time_run_exec(home, "bench-warm", )          # warm-up (page cache of the template's files)
    vk(home, "rm", "-f", "bench-warm")
    tpl: dict[str, list[float]] = {"run_ms": [], "exec_ms": [], "driver_launched_ms": [], "driver_loaded_ms": [],
                                   "driver_agent_ms": [], "driver_identity_ms": []}
    for i in range(runs):
        r, e, boot = time_run_exec(home, f"bench-tpl{i}")
        if boot.get("mode") != "template":
            raise RuntimeError(f"bench-tpl{i} did not start from the template: {boot}")
        ph = boot["phases"]
        for k, v in (("run_ms", r), ("exec_ms", e), ("driver_launched_ms", ph["launched"] * 1000),
                     ("driver_loaded_ms", ph["loaded"] * 1000), ("driver_agent_ms", ph["agent"] * 1000),
                     ("driver_identity_ms", boot["seconds"] * 1000)):
            tpl[k].append(v)
        vk(home, "rm", "-f", f"bench-tpl{i}")
        log(f"  template {i + 1}/{runs}: run {r:.0f} ms, exec {e:.0f} ms, phases {ph}, all {boot['seconds']} s")
    bare = bare_incoming(home, tmp, bare_argv, runs)
    log(f"  bare -incoming to agent: {bare}")

    def summ(d: dict[str, list[float]]) -> dict[str, Any]:
        return {k: {**common.summary(v, 1), "unit": "ms", "raw": [round(x, 1) for x in v]} for k, v in d.items()}

    return {"cold": summ(cold), "template": summ(tpl),
            "bare_incoming": summ({"agent_ms": bare["zstd"], "agent_ms_uncompressed_state": bare["raw"]})}
