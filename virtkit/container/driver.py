"""The container InstanceDriver: bundles from images, started under the home's supervisor, driven by the runtime."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from virtkit.config import Home
from virtkit.core.driver import ExitStatus
from virtkit.core.errors import DaemonUnavailable, NotFound, SystemFailure, VirtkitError
from virtkit.core.models import Instance


class ContainerDriver:
    type = "container"

    def __init__(self, home: Home, images: Any) -> None:
        self.home = home
        self.images = images
        self._runtime: Any = None
        self._lost_lock = threading.Lock()
        self._init_layer: str | None = None
        self._init_fits: dict[tuple[str, ...], bool] = {}   # an image's layers (immutable) -> initlayer.fits
        from virtkit.storage.trash import Trash

        self.trash = Trash(home.trash)
        self.trash.empty_later()

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            from virtkit.container.runtime import Runtime

            self._runtime = Runtime(self.home.runtime_root, discard=self.trash.discard)
        return self._runtime

    def _dir(self, instance: Instance) -> str:
        return self.home.instance_dir(instance.id)

    def _exit_file(self, instance: Instance) -> str:
        return os.path.join(self._dir(instance), "exit.json")

    def cgroup_path(self, instance: Instance) -> str:
        return f"{self.home.cgroup_parent}/{instance.id}"

    def _supervisor_file(self, instance: Instance) -> str:
        return os.path.join(self._dir(instance), "supervisor.json")

    def log_path(self, instance: Instance) -> str:
        """stdout and stderr as CRI records (container/logfile.py), kept across restarts."""
        return os.path.join(self._dir(instance), "console.log")

    def log_decoder(self, instance: Instance) -> Any:
        from virtkit.container.logfile import LogDecoder

        return LogDecoder()

    def watch(self, instance: Instance) -> Any:
        """A waiter that wakes when the instance writes output or its exit is recorded."""
        from virtkit.container.watch import DirWatch

        return DirWatch(self._dir(instance))

    # -- lifecycle ------------------------------------------------------------------------------------
    def create(self, instance: Instance) -> None:
        from virtkit.container.bundle import build_config, write_bundle

        info = self.images.get(instance.image)
        lowerdirs = [str(p) for p in self.images.layer_paths(instance.image)]
        # overlayfs takes the top-most lowerdir first; the store lists lowest first
        lowerdirs.reverse()
        lowerdirs = self._with_init_layer(lowerdirs)
        idir = self._dir(instance)
        hostname = instance.spec.get("hostname") or instance.name
        config = build_config(
            instance_id=instance.id, hostname=hostname, image_config=info.config, spec=instance.spec,
            lowerdirs=lowerdirs, instance_dir=idir, cgroup_path=self.cgroup_path(instance),
        )
        try:
            write_bundle(idir, hostname, config, address=(instance.spec.get("net") or {}).get("address"))
        except OSError as exc:
            shutil.rmtree(idir, ignore_errors=True)
            raise SystemFailure(f"cannot write bundle for '{instance.name}': {exc}") from exc

    def _with_init_layer(self, lowerdirs: list[str]) -> list[str]:
        """The image's layers under the home's init layer (container/initlayer.py), where the image allows it."""
        from virtkit.container import initlayer

        key = tuple(lowerdirs)
        fits = self._init_fits.get(key)
        if fits is None:
            fits = self._init_fits[key] = initlayer.fits(lowerdirs)
        if not fits:
            return lowerdirs
        if self._init_layer is None:
            self._init_layer = initlayer.ensure(os.path.join(self.home.root, initlayer.NAME))
        return [self._init_layer, *lowerdirs]

    # The home's cgroup (its instances' parent) is held while virtkitd runs by an empty child: each instance's
    # removal then leaves the parent, and the next start need not make it again (on cgroup v1 a mkdir and an
    # rmdir in each of ~9 hierarchies, ~1 ms of every start and every rm).
    _KEEP = ".keep"

    def _keep(self) -> Any:
        from virtkit.container.cgroups import manager_for

        return manager_for(f"{self.home.cgroup_parent}/{self._KEEP}")

    def hold_cgroup_parent(self) -> None:
        try:
            self._keep().create()
        except (VirtkitError, OSError) as exc:   # no cgroups here: instances make the parent themselves
            print(f"virtkitd: cannot hold the home's cgroup {self.home.cgroup_parent}: {exc}", file=sys.stderr,
                  flush=True)

    def release_cgroup_parent(self) -> None:
        """Let go of the home's cgroup: it goes too when no instance's cgroup is left in it."""
        try:
            keep = self._keep()
            if keep.exists():
                keep.remove_if_empty()
        except (VirtkitError, OSError) as exc:
            print(f"virtkitd: cannot let go of the home's cgroup: {exc}", file=sys.stderr, flush=True)

    def start(self, instance: Instance) -> int:
        from virtkit.container.supervisor import call, ensure_running

        self._forget_runtime_state(instance)
        for stale in (self._exit_file(instance), self._supervisor_file(instance)):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        request = {
            "op": "run", "id": instance.id, "bundle": os.path.join(self._dir(instance), "bundle"),
            "log": self.log_path(instance), "exit_file": self._exit_file(instance),
            "cgroup": self.cgroup_path(instance),
            "stdin": bool(instance.spec.get("interactive")), "tty": bool(instance.spec.get("tty")),
        }
        try:
            reply = call(self.home.supervisor_socket, request)
        except DaemonUnavailable:
            # not running (first start, or it was killed): start it and try once more
            ensure_running(self.home.run_dir, self.home.runtime_root, os.path.join(self.home.root, "supervisor.log"))
            reply = call(self.home.supervisor_socket, request)
        if reply.get("supervisor"):
            from virtkit.container.supervisor import write_atomic

            write_atomic(self._supervisor_file(instance), reply["supervisor"])
        return int(reply["pid"])

    def open_stdin(self, instance: Instance) -> int:
        """A copy of the running instance's stdin (its pipe, or its terminal's master with -t); the caller owns it."""
        from virtkit.container.supervisor import call_fd

        _reply, fd = call_fd(self.home.supervisor_socket, {"op": "stdin", "id": instance.id})
        return fd

    def close_stdin(self, instance: Instance) -> None:
        """EOF on the instance's stdin once the copies handed out are closed too (no-op with a terminal)."""
        from virtkit.container.supervisor import call

        call(self.home.supervisor_socket, {"op": "close_stdin", "id": instance.id})

    def _forget_runtime_state(self, instance: Instance) -> None:
        """A restart reuses the runtime id: clear the previous run's (stopped) state and cgroup first."""
        try:
            self.runtime.delete(instance.id, force=True)
        except NotFound:
            pass

    def status(self, instance: Instance) -> str:
        """The runtime's view: created, running, paused, stopped (or stopped when it knows nothing)."""
        try:
            return str(self.runtime.state(instance.id)["status"])
        except NotFound:
            return "stopped"

    def exit_status(self, instance: Instance) -> ExitStatus | None:
        """How the last run ended, as the supervisor recorded it; or, when the supervisor that ran it died before
        it could record anything, what is left is killed and the exit recorded here as "supervisor lost"."""
        data = self._exit_record(instance)
        if data is None and self._supervisor_lost(instance):
            with self._lost_lock:       # virtkitd's reconcile loop and a request may both find it
                data = self._exit_record(instance) or self._record_supervisor_lost(instance)
        if data is None:
            return None
        return ExitStatus(code=int(data["code"]), reason=str(data["reason"]), finished_at=float(data["finished_at"]))

    def exit_probe(self, instance: Instance) -> Callable[[], bool]:
        """Whether an exit record exists now (the supervisor writes it by rename): one stat."""
        return functools.partial(os.path.exists, self._exit_file(instance))

    def _exit_record(self, instance: Instance) -> dict[str, Any] | None:
        try:
            with open(self._exit_file(instance)) as f:
                return dict(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _supervisor_lost(self, instance: Instance) -> bool:
        """The supervisor that started this run is gone (its pid dead, a zombie, or another process's now)."""
        from virtkit.container.state import proc_start_time

        try:
            with open(self._supervisor_file(instance)) as f:
                sup = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return False        # not started by virtkit's supervisor (or by one too old to say who it is)
        return proc_start_time(int(sup["pid"])) != sup["start_time"]

    def _record_supervisor_lost(self, instance: Instance) -> dict[str, Any] | None:
        """Kill what is left of the run (as containerd does after a dead shim: SIGKILL, exit 137) and record it.

        Nothing could wait for it any more, and its output pipes are broken: left running, it would be a
        container nobody supervises.
        """
        from virtkit.container.cgroups import manager_for
        from virtkit.container.supervisor import write_atomic

        cg = manager_for(self.cgroup_path(instance))
        left: list[int] = []
        if cg.exists():
            left = cg.pids()
            cg.kill_all(signal.SIGKILL)
            if not cg.wait_empty(10.0):
                return None     # try again on the next look rather than record an exit that has not happened
        data = self._exit_record(instance)      # the supervisor wrote it after all, just before it died
        if data is not None:
            return data
        data = {"code": 128 + signal.SIGKILL, "reason": "supervisor lost", "finished_at": time.time()}
        write_atomic(self._exit_file(instance), data)
        print(f"virtkitd: the supervisor of instance '{instance.name}' died while it ran; killed what was left "
              f"({len(left)} process(es)) and recorded exit 137 (supervisor lost)", file=sys.stderr, flush=True)
        return data

    def kill(self, instance: Instance, sig: int) -> None:
        self.runtime.kill(instance.id, sig)

    def stop(self, instance: Instance, timeout: float) -> None:
        if self.status(instance) == "paused":
            self.runtime.resume(instance.id)
        try:
            self.runtime.kill(instance.id, signal.SIGTERM)
        except Exception:
            pass
        if self._wait_exit(instance, timeout):
            return
        from virtkit.container.cgroups import manager_for

        cg = manager_for(self.cgroup_path(instance))
        if cg.exists():
            cg.kill_all(signal.SIGKILL)
        if not self._wait_exit(instance, 10.0):
            raise SystemFailure(f"instance '{instance.name}' did not exit after SIGKILL")

    def _wait_exit(self, instance: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.exit_status(instance) is not None or self.status(instance) == "stopped":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def pause(self, instance: Instance) -> None:
        self.runtime.pause(instance.id)

    def resume(self, instance: Instance) -> None:
        self.runtime.resume(instance.id)

    def delete(self, instance: Instance) -> None:
        self._forget_runtime_state(instance)
        self.trash.discard(self._dir(instance))

    def update_cpu(self, instance: Instance, live: bool) -> None:
        """`virtkit update`: the new weight, cap and pinning into the bundle (for the next start) and, when `live`,
        into the running container's cgroup (as `docker update` does; there is no runtime verb in between)."""
        from virtkit.container.cgroups import detect_version, manager_for
        from virtkit.container.supervisor import write_atomic
        from virtkit.core.options import online_cpus
        from virtkit.sched.cpushare import CpuRequest, plan

        request = CpuRequest.from_spec(instance.spec)
        version = detect_version()
        path = os.path.join(self._dir(instance), "bundle", "config.json")
        with open(path) as f:
            config = json.load(f)
        res = config.setdefault("linux", {}).setdefault("resources", {})
        cpu = {k: v for k, v in (res.get("cpu") or {}).items() if k not in ("shares", "quota", "period", "cpus")}
        unified = {k: v for k, v in (res.get("unified") or {}).items() if k != "cpu.weight"}
        new = plan(request, None).oci(version)
        cpu.update(new.get("cpu") or {})
        unified.update(new.get("unified") or {})
        for key, value in (("cpu", cpu), ("unified", unified)):
            if value:
                res[key] = value
            else:
                res.pop(key, None)
        if live:
            cg = manager_for(self.cgroup_path(instance))
            if cg.exists():
                cg.write_controls(plan(request, online_cpus(), reset=True).controls(version))
        write_atomic(path, config)

    # -- the writable layer: snapshots, restore, publish -----------------------------------------------
    def upper_dir(self, instance: Instance) -> str:
        return os.path.join(self._dir(instance), "upper")

    @contextmanager
    def _quiesced(self, instance: Instance) -> Iterator[None]:
        """Freeze a running container's cgroup so its files hold still while we read them; thaw after,
        whatever happens. A paused one is frozen already and stays so."""
        if self.status(instance) != "running":
            yield
            return
        from virtkit.container.cgroups import manager_for

        cg = manager_for(self.cgroup_path(instance))
        cg.freeze()
        try:
            yield
        finally:
            try:
                cg.thaw()
            except VirtkitError:
                if cg.exists():         # gone: the container died meanwhile, nothing to thaw
                    raise

    def snapshot(self, instance: Instance, dest: str) -> int:
        """Copy the instance's upper layer to `dest` (frozen while running); returns the bytes copied."""
        from virtkit.storage.copytree import copy_tree

        with self._quiesced(instance):
            return copy_tree(self.upper_dir(instance), dest)

    def restore(self, instance: Instance, src: str) -> None:
        """Replace the (stopped) instance's upper layer by a copy of `src`."""
        from virtkit.storage.copytree import copy_tree

        idir = self._dir(instance)
        upper, new, old = self.upper_dir(instance), os.path.join(idir, "upper.new"), os.path.join(idir, "upper.old")
        for leftover in (new, old):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            copy_tree(src, new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        os.rename(upper, old)
        os.rename(new, upper)
        shutil.rmtree(old, ignore_errors=True)
        # overlayfs keeps copy-up scratch in its workdir; start the restored layer with a clean one
        work = os.path.join(idir, "work")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work, mode=0o755, exist_ok=True)

    def export_changes(self, instance: Instance, tar_path: str) -> None:
        """The instance's changes to its image as an OCI layer tar (frozen while running)."""
        from virtkit.storage.layer import write_layer

        with self._quiesced(instance):
            write_layer(self.upper_dir(instance), tar_path)

    def stats(self, instance: Instance) -> dict[str, Any]:
        from virtkit.container.cgroups import manager_for

        cg = manager_for(self.cgroup_path(instance))
        if not cg.exists():
            return {}
        return dict(cg.stats())

    def exec_argv(self, instance: Instance, command: list[str], *, tty: bool, env: list[str],
                  console_socket: str | None = None) -> list[str]:
        argv = [sys.executable, "-m", "virtkit.container.cli", "--root", self.home.runtime_root, "exec"]
        if tty:
            argv.append("--tty")
        if console_socket:
            argv += ["--console-socket", console_socket]
        for e in env:
            argv += ["--env", e]
        return argv + [instance.id, *command]
