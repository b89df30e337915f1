#!/usr/bin/env python3
"""virtkit's container speed and memory benchmark, side by side with runc, crun and podman, in one run.

    .venv/bin/python bench/containers.py [--runs 30] [--idle 100] [--only cycle,sdk,cli,memory]

Parts:
  cycle   `virtkit-runtime run` vs `runc run` vs `crun run` of /bin/true on one busybox bundle
          (create + start + wait + delete; a fresh container id every run).
  sdk     client.run("busybox", ["/bin/true"], auto_remove=True, network="none") against a running virtkitd vs
          `crun run` (which sets up no network either).
  cli     `virtkit run --rm --network none busybox -- /bin/true` vs `podman run --rm --network none` of the same
          rootfs, end to end (both without a network: podman's bridge needs netavark/CNI set up on this host).
  memory  host memory (PSS) per idle container, N containers running `sleep 100000`: virtkit (container
          processes + the home's supervisor, amortised; virtkitd reported apart) vs podman (container processes
          + one conmon each); for the record also one conmon and one minimal Python monitor process.

Timed runs are interleaved (A, B, C, A, B, C ...) after one warm-up run of each, so that machine noise hits
all alike; only the ratios of one run count. Everything runs under a private temp dir: a private
VIRTKIT_HOME, a private --root for every runtime, a private podman root/runroot/tmpdir, cgroups under
/vkbench-<tag>; all of it is removed at the end, also on failure. Results: bench/results/containers.json
(raw figures, ratios, host facts) and bench/results/containers.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from lib import common, procmem  # noqa: E402 - after the sys.path setup above

PARTS = ("cycle", "sdk", "cli", "memory")
PODMAN_IMAGE = "localhost/vkbench-busybox"
# the flags this host needs for podman run (its default rlimits are above what the container may get)
PODMAN_RUN_FLAGS = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PACKAGES = ("podman", "crun", "runc", "conmon")
SETTLE_S = 3.0
GOALS = {
    "cycle": ("virtkit-runtime run not slower than runc run (median ratio <= 1.0)", "runc", 1.0, "<="),
    "sdk": ("SDK run faster than crun run (median ratio < 1.0)", "crun", 1.0, "<"),
    "cli": ("virtkit run under 40% of podman run (median ratio < 0.40)", "podman", 0.40, "<"),
    "memory": ("PSS per idle container no more than crun+conmon (ratio <= 1.0)", "podman", 1.0, "<="),
}
PY_MONITOR = ("import os\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os.execv('/bin/sleep', ['sleep', '100000'])\n"
              "os.waitpid(pid, 0)\n")


def log(msg: str) -> None:
    print(msg, flush=True)


def _goal_met(ratio: float | None, limit: float, op: str) -> bool | None:
    if ratio is None:
        return None
    return ratio <= limit if op == "<=" else ratio < limit


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:8]
        self.work = Path(tempfile.mkdtemp(prefix=f"vkbench-{self.tag}-", dir="/tmp"))
        self.home = self.work / "home"
        self.cg_prefix = f"/vkbench-{self.tag}"
        venv_bin = REPO / ".venv" / "bin"
        self.bin = venv_bin if (venv_bin / "virtkit").exists() else Path(sys.executable).parent
        self.client: Any = None
        self.client_error: str | None = None
        self.rootfs: Path | None = None
        self.rootfs_source: str | None = None
        self.spec_template: dict[str, Any] | None = None
        self.podman_ready = False
        self.counters: dict[str, itertools.count[int]] = {}
        self.notes: list[str] = []
        self.cgroup_view: str | None = None
        p = self.work / "podman"
        self.podman = ["podman", "--root", str(p / "root"), "--runroot", str(p / "runroot"),
                       "--tmpdir", str(p / "tmp"), "--network-config-dir", str(p / "net"),
                       "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--storage-driver", "overlay"]

    def note(self, msg: str) -> None:
        log(f"note: {msg}")
        self.notes.append(msg)

    # -- setup ----------------------------------------------------------------------------------------------
    def ensure_packages(self, parts: list[str]) -> None:
        need = {"runc", "crun"} if "cycle" in parts else set()
        if "sdk" in parts:
            need.add("crun")
        if {"cli", "memory"} & set(parts):
            need |= {"podman", "conmon", "crun"}
        missing = sorted(p for p in need if not self._have(p))
        if not missing:
            return
        argv = ["apt-get", "install", "-y", *PACKAGES]
        log(f"installing missing {', '.join(missing)}: {' '.join(argv)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log("apt-get install failed; running apt-get update and trying again")
            subprocess.run(["apt-get", "update"], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  check=False)
        still = [p for p in need if not self._have(p)]
        if still:
            self.note(f"still missing after apt-get: {', '.join(still)} ({proc.stderr.strip()[-500:]})")

    @staticmethod
    def _have(pkg: str) -> bool:
        if pkg == "conmon":
            return bool(shutil.which("conmon")) or os.path.exists("/usr/libexec/podman/conmon")
        return bool(shutil.which(pkg))

    def setup_virtkit(self) -> None:
        """Connect to (start) virtkitd in the private home and build the busybox image there."""
        os.environ["VIRTKIT_HOME"] = str(self.home)
        try:
            from virtkit.client import connect

            t0 = time.monotonic()
            self.client = connect(str(self.home))
            log(f"virtkitd started in {self.home} ({time.monotonic() - t0:.2f} s)")
            self.client.build_image("busybox")
            log("busybox image built")
        except Exception as exc:  # noqa: BLE001 - the peers can still be measured
            self.client_error = f"virtkit setup: {common.describe(exc)}"
            self.note(self.client_error)

    def need_client(self) -> Any:
        if self.client is None:
            raise RuntimeError(self.client_error or "virtkit client not set up")
        return self.client

    def setup_rootfs(self) -> Path:
        """One private copy of the busybox image's unpacked layer (so that no runtime can touch the shared
        image store), or busybox + applet links from the host as a fallback."""
        if self.rootfs is not None:
            return self.rootfs
        dest = self.work / "rootfs"
        try:
            if self.client is None:
                raise RuntimeError(self.client_error or "no virtkit home")
            from virtkit.images.store import ImageStore

            layer = ImageStore(self.home / "images").layer_paths("busybox")[0]
            shutil.copytree(layer, dest, symlinks=True)
            self.rootfs_source = f"virtkit busybox image layer {layer.name[:12]}"
        except Exception as exc:  # noqa: BLE001
            self.note(f"using the host's busybox for the bundle rootfs ({common.describe(exc)})")
            shutil.rmtree(dest, ignore_errors=True)
            self._host_busybox_rootfs(dest)
            self.rootfs_source = "host /usr/bin/busybox + applet symlinks"
        self.rootfs = dest
        log(f"bundle rootfs: {self.rootfs_source}")
        return dest

    @staticmethod
    def _host_busybox_rootfs(dest: Path) -> None:
        bb = shutil.which("busybox") or "/bin/busybox"
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "var"):
            (dest / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(bb, dest / "bin" / "busybox")
        applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for a in applets:
            if a != "busybox" and "/" not in a:
                os.symlink("busybox", dest / "bin" / a)
        (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (dest / "etc" / "group").write_text("root:x:0:\n")

    def bundle(self, runtime: str) -> Path:
        """A bundle of its own per runtime: `runc spec`'s config with terminal false, args /bin/true, the shared
        rootfs (absolute path, read-only as runc spec has it) and a cgroup below this run's prefix."""
        rootfs = self.setup_rootfs()
        if self.spec_template is None:
            spec_dir = self.work / "spec"
            spec_dir.mkdir()
            common.check_run(["runc", "spec", "--bundle", str(spec_dir)])
            self.spec_template = json.loads((spec_dir / "config.json").read_text())
        cfg = json.loads(json.dumps(self.spec_template))
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/true"]
        # runc spec lists ambient capabilities that are not inheritable: the kernel cannot raise them, runc and
        # crun skip them silently, virtkit-runtime refuses the config. Dropped for all alike (no effect).
        cfg["process"].get("capabilities", {}).pop("ambient", None)
        cfg["root"] = {"path": str(rootfs), "readonly": True}
        cfg["hostname"] = "vkbench"
        cfg.setdefault("linux", {})["cgroupsPath"] = f"{self.cg_prefix}/{runtime}"
        b = self.work / "bundles" / runtime
        b.mkdir(parents=True, exist_ok=True)
        (b / "config.json").write_text(json.dumps(cfg, indent=2))
        return b

    def runtime_argv(self, name: str) -> list[str]:
        exe = str(self.bin / "virtkit-runtime") if name == "virtkit-runtime" else name
        return [exe, "--root", str(self.work / "roots" / name)]

    def runtime_contestant(self, name: str, label: str | None = None) -> common.Contestant:
        bundle = str(self.bundle(name))
        argv = self.runtime_argv(name)
        counter = self.counters.setdefault(name, itertools.count())

        def fn() -> None:
            common.check_run(argv + ["run", "--bundle", bundle, f"vkb-{name}-{next(counter)}"], timeout=60)

        return common.Contestant(label or name, fn)

    def setup_podman(self) -> None:
        if self.podman_ready:
            return
        rootfs = self.setup_rootfs()
        for d in ("root", "runroot", "tmp", "net"):
            (self.work / "podman" / d).mkdir(parents=True, exist_ok=True)
        tar = self.work / "rootfs.tar"
        common.check_run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar), "."])
        common.check_run(self.podman + ["import", str(tar), PODMAN_IMAGE], timeout=300)
        info = json.loads(common.check_run(self.podman + ["info", "--format", "json"], timeout=120))
        host = info.get("host", {})
        self.podman_info = {
            "oci_runtime": (host.get("ociRuntime") or {}).get("name"),
            "oci_runtime_version": ((host.get("ociRuntime") or {}).get("version") or "").splitlines()[:1],
            "conmon": ((host.get("conmon") or {}).get("version") or "").splitlines()[:1],
            "cgroup_manager": host.get("cgroupManager"),
            "graph_driver": (info.get("store") or {}).get("graphDriverName"),
        }
        log(f"podman ready: image {PODMAN_IMAGE}, runtime {self.podman_info['oci_runtime']}")
        self.podman_ready = True

    def podman_run_argv(self, *extra: str) -> list[str]:
        return self.podman + ["run", *extra, *PODMAN_RUN_FLAGS, "--cgroup-parent", f"{self.cg_prefix}/podman"]

    # -- parts ----------------------------------------------------------------------------------------------
    def _speed_result(self, part: str, contestants: list[common.Contestant], virtkit: str,
                      peers: list[str]) -> dict[str, Any]:
        res: dict[str, Any] = {"contestants": {c.name: c.result() for c in contestants}}
        ratios = {}
        for peer in peers:
            a, b = res["contestants"][virtkit], res["contestants"][peer]
            ratios[f"{virtkit}/{peer}"] = {"median": common.ratio(a.get("median"), b.get("median")),
                                          "p90": common.ratio(a.get("p90"), b.get("p90"))}
        res["ratios"] = ratios
        text, goal_peer, limit, op = GOALS[part]
        r = ratios[f"{virtkit}/{goal_peer}"]["median"]
        res["goal"] = {"text": text, "met": _goal_met(r, limit, op)}
        errors = {c.name: c.error for c in contestants if c.error}
        if errors:
            res["errors"] = errors
        return res

    def part_cycle(self) -> dict[str, Any]:
        log("== cycle: <runtime> run of /bin/true on one busybox bundle")
        cs = [self.runtime_contestant(n) for n in ("virtkit-runtime", "runc", "crun")]
        common.interleaved(cs, self.args.runs, log)
        return self._speed_result("cycle", cs, "virtkit-runtime", ["runc", "crun"])

    def part_sdk(self) -> dict[str, Any]:
        log("== sdk: client.run('busybox', ['/bin/true'], auto_remove=True, network='none') vs crun run")

        def sdk_run() -> None:
            out: list[bytes] = []
            st = self.need_client().run("busybox", ["/bin/true"], auto_remove=True, network="none",
                                        output=out.append)
            if st.get("exit_code") != 0:
                raise RuntimeError(f"status {st}: {b''.join(out).decode(errors='replace').strip()[-500:]}")

        cs = [common.Contestant("virtkit-sdk", sdk_run), self.runtime_contestant("crun")]
        common.interleaved(cs, self.args.runs, log)
        res = self._speed_result("sdk", cs, "virtkit-sdk", ["crun"])
        self._check_no_instances(res)
        return res

    def part_cli(self) -> dict[str, Any]:
        log("== cli: virtkit run --rm --network none busybox -- /bin/true vs podman run --rm --network none")
        self.need_client()
        self.setup_podman()
        vk = [str(self.bin / "virtkit"), "--home", str(self.home), "run", "--rm", "--network", "none",
              "busybox", "--", "/bin/true"]
        pm = self.podman_run_argv("--rm") + [PODMAN_IMAGE, "/bin/true"]
        cs = [common.Contestant("virtkit-cli", lambda: common.check_run(vk, timeout=60) and None),
              common.Contestant("podman", lambda: common.check_run(pm, timeout=60) and None)]
        common.interleaved(cs, self.args.runs, log)
        res = self._speed_result("cli", cs, "virtkit-cli", ["podman"])
        res["commands"] = {"virtkit-cli": " ".join(vk), "podman": " ".join(pm)}
        res["podman"] = getattr(self, "podman_info", None)
        self._check_no_instances(res)
        return res

    def _check_no_instances(self, res: dict[str, Any]) -> None:
        if self.client is None:
            return
        try:
            left = self.client.instances()
        except Exception as exc:  # noqa: BLE001
            left = [f"cannot list: {exc}"]
        if left:
            res["leftover_instances"] = left
            self.note(f"{len(left)} virtkit instance(s) left after --rm/auto_remove runs")

    def part_memory(self) -> dict[str, Any]:
        n = self.args.idle
        log(f"== memory: PSS with {n} idle containers (sleep 100000)")
        res: dict[str, Any] = {"idle_containers": n, "settle_s": SETTLE_S, "unit": "KiB"}
        for key, fn in (("virtkit", self.mem_virtkit), ("podman", self.mem_podman),
                        ("python_monitor", self.mem_python_monitor)):
            try:
                res[key] = fn(n)
            except Exception as exc:  # noqa: BLE001
                res[key] = {"error": common.describe(exc)}
                log(f"  {key} FAILED: {res[key]['error']}")
        vk = res["virtkit"].get("per_container_pss_kib")
        pm = res["podman"].get("per_container_pss_kib")
        res["ratio_pss_virtkit/podman"] = common.ratio(vk, pm)
        res["ratio_uss_virtkit/podman"] = common.ratio(res["virtkit"].get("per_container_uss_kib"),
                                                       res["podman"].get("per_container_uss_kib"))
        try:  # how many containers one supervisor must hold to cost no more than one conmon each
            res["break_even_containers"] = round(res["virtkit"]["supervisor"]["pss_kib"]
                                                 / res["podman"]["one_conmon_pss_kib"]["median"], 1)
        except (KeyError, TypeError, ZeroDivisionError):
            res["break_even_containers"] = None
        text, _, limit, op = GOALS["memory"]
        res["goal"] = {"text": text, "met": _goal_met(res["ratio_pss_virtkit/podman"], limit, op)}
        return res

    def mem_virtkit(self, n: int) -> dict[str, Any]:
        client = self.need_client()
        from virtkit.config import Home

        names = [f"vkb-idle-{i}" for i in range(n)]
        started: list[str] = []
        out: dict[str, Any] = {}
        try:
            t0 = time.monotonic()
            for name in names:
                client.run("busybox", ["sleep", "100000"], detach=True, name=name)
                started.append(name)
            out["start_all_s"] = round(time.monotonic() - t0, 2)
            log(f"  virtkit: {n} started in {out['start_all_s']} s")
            time.sleep(SETTLE_S)
            running = [i for i in client.instances() if i.get("state") == "running"]
            out["running"] = len(running)
            if len(running) < n:
                bad = next((i for i in client.instances() if i.get("state") != "running"), {})
                try:
                    why = (self.home / "containers" / bad["id"] / "console.log").read_text().strip()[-400:]
                except (OSError, KeyError):
                    why = "no console.log"
                raise RuntimeError(f"only {len(running)} of {n} containers running; {bad.get('name')}: "
                                   f"{bad.get('state')}, exit {bad.get('exit_code')} ({bad.get('exit_reason')}): {why}")
            run_dir = self.home / "run"
            sup = int((run_dir / "supervisor.pid").read_text().strip())
            daemon = int((run_dir / "virtkitd.pid").read_text().strip())
            tree = procmem.ppids()
            under_sup = procmem.descendants([sup], tree)
            in_cg = procmem.in_cgroup(f"{Home(str(self.home)).cgroup_parent}/")
            # the supervisor's spare maker (container/spares.py) is supervision, a fixed cost like the supervisor
            maker = {p for p in under_sup if procmem.comm_of(p) == "vk-spare-maker"}
            containers = (under_sup | in_cg) - {sup, daemon} - maker
            other = procmem.descendants([daemon], tree) - {sup} - containers - maker
            c_tot = procmem.total(containers)
            # the supervisor's spares (container/spares.py: a PID 1 made ahead, one per kind of container asked
            # for) are counted with the containers; told apart here by their scheduling policy, SCHED_IDLE
            spares = {p for p in containers if _sched_policy(p) == os.SCHED_IDLE}
            out["spares"] = procmem.total(spares)
            s_mem = procmem.mem_of(sup) or {"pss": 0, "rss": 0, "uss": 0}
            for p in maker:
                m = procmem.mem_of(p) or {}
                s_mem = {k: s_mem[k] + m.get(k, 0) for k in ("pss", "rss", "uss")}
            d_mem = procmem.mem_of(daemon) or {"pss": 0, "rss": 0, "uss": 0}
            o_tot = procmem.total(other)
            pss = c_tot["pss_kib"] + s_mem["pss"] + o_tot["pss_kib"]
            uss = c_tot["uss_kib"] + s_mem["uss"] + o_tot["uss_kib"]
            out.update({
                "container_processes": c_tot,
                "supervisor": {"pid": sup, "pss_kib": s_mem["pss"], "rss_kib": s_mem["rss"], "uss_kib": s_mem["uss"]},
                "daemon_virtkitd": {"pid": daemon, "pss_kib": d_mem["pss"], "rss_kib": d_mem["rss"],
                                    "uss_kib": d_mem["uss"], "note": "shared by all containers; not in per-container"},
                "other_daemon_children": o_tot,
                "total_pss_kib": pss,
                "per_container_pss_kib": round(pss / n, 1),
                "per_container_uss_kib": round(uss / n, 1),
                "per_container_container_processes_pss_kib": round(c_tot["pss_kib"] / n, 1),
                "per_container_supervision_pss_kib": round((s_mem["pss"] + o_tot["pss_kib"]) / n, 1),
                "per_container_pss_with_daemon_kib": round((pss + d_mem["pss"]) / n, 1),
            })
            log(f"  virtkit: {c_tot['processes']} container processes, PSS {c_tot['pss_kib']} KiB; supervisor "
                f"{s_mem['pss']} KiB; virtkitd {d_mem['pss']} KiB -> {out['per_container_pss_kib']} KiB/container")
            return out
        finally:
            t0 = time.monotonic()
            for name in started:
                try:
                    client.remove(name, force=True)
                except Exception as exc:  # noqa: BLE001
                    self.note(f"virtkit remove {name}: {common.describe(exc)}")
            out["remove_all_s"] = round(time.monotonic() - t0, 2)

    def _our_conmons(self) -> list[int]:
        mark = str(self.work / "podman")
        out = []
        for name in os.listdir("/proc"):
            if (name.isdigit() and procmem.comm_of(int(name)) == "conmon"
                    and any(mark in a for a in procmem.cmdline_of(int(name)))):
                out.append(int(name))
        return out

    def mem_podman(self, n: int) -> dict[str, Any]:
        self.setup_podman()
        out: dict[str, Any] = {}
        try:
            t0 = time.monotonic()
            for i in range(n):
                common.check_run(self.podman_run_argv("-d", "--name", f"vkb-idle-{i}")
                                 + [PODMAN_IMAGE, "sleep", "100000"], timeout=120)
            out["start_all_s"] = round(time.monotonic() - t0, 2)
            log(f"  podman: {n} started in {out['start_all_s']} s")
            time.sleep(SETTLE_S)
            conmons = self._our_conmons()
            if len(conmons) < n:
                raise RuntimeError(f"only {len(conmons)} conmon processes for {n} containers")
            tree = procmem.ppids()
            containers = (procmem.descendants(conmons, tree)
                          | procmem.in_cgroup(f"{self.cg_prefix}/podman/")) - set(conmons)
            c_tot = procmem.total(containers)
            m_tot = procmem.total(conmons)
            each = [m for m in (procmem.mem_of(p) for p in conmons) if m]
            pss = c_tot["pss_kib"] + m_tot["pss_kib"]
            uss = c_tot["uss_kib"] + m_tot["uss_kib"]
            out.update({
                "runtime": (getattr(self, "podman_info", None) or {}).get("oci_runtime"),
                "container_processes": c_tot,
                "conmons": m_tot,
                "one_conmon_pss_kib": common.summary([m["pss"] for m in each], 1),
                "one_conmon_rss_kib": common.summary([m["rss"] for m in each], 1),
                "total_pss_kib": pss,
                "per_container_pss_kib": round(pss / n, 1),
                "per_container_uss_kib": round(uss / n, 1),
                "per_container_container_processes_pss_kib": round(c_tot["pss_kib"] / n, 1),
                "per_container_supervision_pss_kib": round(m_tot["pss_kib"] / n, 1),
            })
            log(f"  podman: {c_tot['processes']} container processes, PSS {c_tot['pss_kib']} KiB; "
                f"{m_tot['processes']} conmons {m_tot['pss_kib']} KiB -> {out['per_container_pss_kib']} KiB/container")
            return out
        finally:
            t0 = time.monotonic()
            try:
                common.check_run(self.podman + ["rm", "-a", "-f", "-t", "0"], timeout=600)
            except Exception as exc:  # noqa: BLE001
                self.note(f"podman rm -a -f: {common.describe(exc)}")
            out["remove_all_s"] = round(time.monotonic() - t0, 2)

    def mem_python_monitor(self, n: int) -> dict[str, Any]:
        """n minimal Python monitors (fork a `sleep`, waitpid on it): what one per container would cost."""
        py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(n):
                procs.append(subprocess.Popen([py, "-I", "-S", "-c", PY_MONITOR], stdin=subprocess.DEVNULL,
                                              start_new_session=True))
            time.sleep(SETTLE_S)
            each = [m for m in (procmem.mem_of(p.pid) for p in procs) if m]
            return {
                "command": f"{py} -I -S -c <fork sleep; waitpid>",
                "count": len(each),
                "pss_kib": common.summary([m["pss"] for m in each], 1),
                "rss_kib": common.summary([m["rss"] for m in each], 1),
                "uss_kib": common.summary([m["uss"] for m in each], 1),
            }
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: the monitor and its sleep
                except ProcessLookupError:
                    pass
                p.wait()

    # -- cleanup --------------------------------------------------------------------------------------------
    def cleanup(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        # runtimes' leftover containers (only after a failure)
        for name in ("virtkit-runtime", "runc", "crun"):
            root = self.work / "roots" / name
            if not root.is_dir():
                continue
            for cid in os.listdir(root):
                try:
                    common.check_run(self.runtime_argv(name) + ["delete", "--force", cid], timeout=60)
                except Exception as exc:  # noqa: BLE001
                    report.setdefault("runtime_delete_errors", []).append(f"{name} {cid}: {common.describe(exc)}")
        # podman
        if (self.work / "podman" / "root").exists():
            for argv in (["rm", "-a", "-f", "-t", "0"], ["rmi", "-a", "-f"]):
                try:
                    common.check_run(self.podman + argv, timeout=600)
                except Exception as exc:  # noqa: BLE001
                    report.setdefault("podman_errors", []).append(common.describe(exc))
            for pid in self._our_conmons():
                report.setdefault("killed_conmons", []).append(pid)
                os.kill(pid, signal.SIGKILL)
        # virtkit: instances, the daemon (client.shutdown()), the supervisor (SIGTERM to its pid)
        report.update(self._cleanup_virtkit())
        unmounted = common.unmount_under(str(self.work))
        if unmounted:
            report["unmounted"] = unmounted
        left = common.remove_cgroup_tree(self.cg_prefix)
        if left:
            report["cgroups_left"] = left
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():
            report["workdir_left"] = str(self.work)
        return report

    def _cleanup_virtkit(self) -> dict[str, Any]:
        from virtkit.config import Home

        report: dict[str, Any] = {}
        run_dir = self.home / "run"

        def pid_in(name: str) -> int | None:
            try:
                return int((run_dir / name).read_text().strip())
            except (OSError, ValueError):
                return None

        daemon, sup = pid_in("virtkitd.pid"), pid_in("supervisor.pid")
        if self.client is not None:
            try:
                for inst in self.client.instances():
                    self.client.remove(inst["name"], force=True)
                    report.setdefault("removed_instances", []).append(inst["name"])
            except Exception as exc:  # noqa: BLE001
                report["instances_error"] = common.describe(exc)
            try:
                self.client.shutdown()
            except Exception as exc:  # noqa: BLE001
                report["shutdown_error"] = common.describe(exc)
        for label, pid in (("virtkitd", daemon), ("supervisor", sup)):
            if pid is None or not _alive(pid) or not _is_ours(pid, str(self.home)):
                continue
            if label == "supervisor" or not _wait_gone(pid, 10):
                os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, 10):
                    os.kill(pid, signal.SIGKILL)
                    report.setdefault("killed", []).append(label)
                    _wait_gone(pid, 5)
            if label == "virtkitd" and _alive(pid):
                report.setdefault("still_alive", []).append(label)
        # the home's cgroups and mounts should be gone with its containers
        cg = Home(str(self.home)).cgroup_parent
        left = common.cgroups_present(cg)
        if left:
            report["virtkit_cgroups_left"] = left
        still = common.remove_cgroup_tree(cg)
        if still:
            report["virtkit_cgroups_not_removable"] = still
        mounts = [mp for mp, _ in common.mountinfo() if mp.startswith(str(self.home) + "/")]
        if mounts:
            report["virtkit_mounts_left"] = mounts
        return report


def _sched_policy(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[38])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_ours(pid: int, home: str) -> bool:
    return any(home in a for a in procmem.cmdline_of(pid))


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


# -- report -------------------------------------------------------------------------------------------------
def _fmt(x: Any, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def _cell(r: dict[str, Any]) -> list[str]:
    if not r.get("n"):
        return ["failed", "", ""]
    return [_fmt(r["median"]), _fmt(r["p90"]), f"{_fmt(r['min'])}-{_fmt(r['max'])}"]


def table(results: dict[str, Any]) -> list[str]:
    rows = [("| part | virtkit | median | p90 | min-max | peer | median | p90 | min-max | ratio median | ratio p90 "
            "| goal | met |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for part in ("cycle", "sdk", "cli"):
        r = results.get(part)
        if r is None:
            continue
        if "contestants" not in r:
            rows.append(f"| {part} | error: {r.get('error', '?')[:120]} |" + " |" * 11)
            continue
        vk = next(iter(r["contestants"]))
        for key, rat in r["ratios"].items():
            peer = key.split("/", 1)[1]
            a, b = r["contestants"][vk], r["contestants"][peer]
            goal = r["goal"]["text"].split(" (")[0] if peer == GOALS[part][1] else ""
            met = _fmt(r["goal"]["met"]) if goal else ""
            cells = [f"{part} (ms)", vk, *_cell(a), peer, *_cell(b), _fmt(rat["median"], digits=2),
                     _fmt(rat["p90"], digits=2), goal, met]
            rows.append("| " + " | ".join(cells) + " |")
    m = results.get("memory")
    if m is not None:
        if "virtkit" not in m:
            rows.append(f"| memory | error: {m.get('error', '?')[:120]} |" + " |" * 11)
        else:
            vk, pm = m.get("virtkit", {}), m.get("podman", {})
            cells = [f"memory (PSS KiB per idle container, N={m['idle_containers']})", "virtkit (+supervisor)",
                     _fmt(vk.get("per_container_pss_kib", "failed")), "", "", "podman (crun+conmon)",
                     _fmt(pm.get("per_container_pss_kib", "failed")), "", "",
                     _fmt(m.get("ratio_pss_virtkit/podman"), digits=2),
                     "", m["goal"]["text"].split(" (")[0], _fmt(m["goal"]["met"])]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def memory_lines(m: dict[str, Any]) -> list[str]:
    out = []
    vk, pm, py = m.get("virtkit", {}), m.get("podman", {}), m.get("python_monitor", {})
    if "daemon_virtkitd" in vk:
        out.append(f"- virtkit: container processes {_fmt(vk['per_container_container_processes_pss_kib'])} KiB + "
                   f"supervisor {_fmt(vk['per_container_supervision_pss_kib'])} KiB per container "
                   f"(supervisor and its spare maker {vk['supervisor']['pss_kib']} KiB in all); virtkitd (shared) "
                   f"{vk['daemon_virtkitd']['pss_kib']} KiB PSS, {_fmt(vk['per_container_pss_with_daemon_kib'])} "
                   f"KiB per container with it")
        if vk.get("spares", {}).get("processes"):
            sp = vk["spares"]
            out.append(f"- of the container processes, {sp['processes']} spare(s) made ahead by the supervisor (one "
                       f"per kind of container asked for): {sp['pss_kib']} KiB PSS in all, a fixed cost")
        if m.get("break_even_containers"):
            out.append(f"- the supervisor alone costs as much as {m['break_even_containers']} conmons: below that many "
                       "idle containers, one conmon each would cost less")
    elif vk.get("error"):
        out.append(f"- virtkit: failed: {vk['error'][:300]}")
    if "conmons" in pm:
        out.append(f"- podman: container processes {_fmt(pm['per_container_container_processes_pss_kib'])} KiB + "
                   f"conmon {_fmt(pm['per_container_supervision_pss_kib'])} KiB per container; one conmon: PSS "
                   f"median {_fmt(pm['one_conmon_pss_kib'].get('median'))} KiB, RSS median "
                   f"{_fmt(pm['one_conmon_rss_kib'].get('median'))} KiB")
    elif pm.get("error"):
        out.append(f"- podman: failed: {pm['error'][:300]}")
    if "pss_kib" in py:
        out.append(f"- a minimal Python monitor (python3 -I -S, fork + waitpid; {py['count']} of them): PSS median "
                   f"{_fmt(py['pss_kib'].get('median'))} KiB, RSS median {_fmt(py['rss_kib'].get('median'))} KiB, "
                   f"USS median {_fmt(py['uss_kib'].get('median'))} KiB")
    return out


def write_reports(doc: dict[str, Any], out_json: Path) -> list[str]:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=2) + "\n")
    h = doc["host"]
    lines = ["# Container benchmark: virtkit vs runc, crun, podman", "",
             f"{h['date']} on {h['cpu_model']} ({h['cpus']} CPUs), kernel {h['kernel']}, cgroups {h['cgroups']}; "
             f"{doc['config']['runs']} interleaved runs after one warm-up each, {doc['config']['idle']} idle "
             f"containers. Versions: " + "; ".join(f"{k}: {v}" for k, v in h["versions"].items()) + ".", "",
             *table(doc["results"]), ""]
    if "memory" in doc["results"]:
        lines += memory_lines(doc["results"]["memory"]) + [""]
    errors = []
    for part, r in doc["results"].items():
        if r.get("error"):
            errors.append(f"- {part}: {r['error'][:400]}")
        for name, e in (r.get("errors") or {}).items():
            errors.append(f"- {part} / {name}: {e[:400]}")
        for key in ("virtkit", "podman", "python_monitor"):
            if isinstance(r.get(key), dict) and r[key].get("error"):
                errors.append(f"- {part} / {key}: {r[key]['error'][:400]}")
    if errors:
        lines += ["Failures:", "", *errors, ""]
    lines += ["Raw figures, host facts and commands: `containers.json`. Produced by `bench/containers.py`.", ""]
    out_json.with_suffix(".md").write_text("\n".join(lines))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs of each contestant (default 30)")
    ap.add_argument("--idle", type=int, default=100, help="idle containers for the memory part (default 100)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: cycle,sdk,cli,memory")
    ap.add_argument("--out", default=str(BENCH / "results" / "containers.json"), help="the JSON to write")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or args.runs < 1 or args.idle < 1:
        ap.error(f"unknown parts {bad}" if bad else "--runs and --idle must be positive")
    if os.geteuid() != 0:
        ap.error("needs root (namespaces, cgroups, podman's root)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    t_start = time.monotonic()
    host_cgroups = common.cgroup_mode()
    bench = Bench(args)
    log(f"work dir {bench.work}; parts {','.join(parts)}; {args.runs} runs; {args.idle} idle containers")
    results: dict[str, Any] = {}
    cleanup: dict[str, Any] = {}
    try:
        bench.ensure_packages(parts)
        bench.cgroup_view = host_cgroups
        v2_controllers = common.unified_controllers()
        if bench.cgroup_view.startswith("hybrid") and v2_controllers:
            # crun (alone, and under podman) refuses hybrid mode when the v2 hierarchy holds controllers
            # (hugetlb here). All contestants then run in a private mount namespace without the v2 mount.
            common.hide_unified_hierarchy()
            bench.note(f"host cgroups are hybrid with controllers {','.join(v2_controllers)} on v2, which "
                       "crun refuses: this run happens in a private mount namespace without "
                       "/sys/fs/cgroup/unified, so every contestant sees cgroup v1 only")
            bench.cgroup_view = common.cgroup_mode()
        if set(parts) & {"cycle", "sdk", "cli", "memory"}:
            bench.setup_virtkit()
        for part in parts:
            t0 = time.monotonic()
            try:
                results[part] = getattr(bench, f"part_{part}")()
            except Exception as exc:  # noqa: BLE001 - one part's failure keeps the others
                results[part] = {"error": common.describe(exc)}
                log(f"{part} FAILED: {results[part]['error']}")
            results[part]["elapsed_s"] = round(time.monotonic() - t0, 1)
    finally:
        log("cleaning up")
        try:
            cleanup = bench.cleanup()
        except Exception as exc:  # noqa: BLE001
            cleanup = {"error": common.describe(exc)}
        if cleanup:
            log(f"cleanup: {json.dumps(cleanup)}")
    tools = {
        "runc": ["runc", "--version"], "crun": ["crun", "--version"], "podman": ["podman", "--version"],
        "conmon": ["conmon", "--version"],
        "virtkit": [sys.executable, "-c", "import importlib.metadata as m; print(m.version('virtkit'))"],
        "virtkit_git": ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
    }
    doc = {
        "benchmark": "containers",
        "host": common.host_facts(tools, host_cgroups),
        "config": {"runs": args.runs, "idle": args.idle, "parts": parts, "warmup_runs": 1,
                   "order": "interleaved, fixed order per round", "rootfs": bench.rootfs_source,
                   "cgroups_seen_by_contestants": bench.cgroup_view,
                   "podman_run_flags": PODMAN_RUN_FLAGS, "podman_global_flags": bench.podman[1:]},
        "results": results,
        "notes": bench.notes,
        "cleanup": cleanup,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    lines = write_reports(doc, Path(args.out))
    log("")
    log("\n".join(lines))
    log(f"wrote {args.out} and {Path(args.out).with_suffix('.md')} ({doc['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
