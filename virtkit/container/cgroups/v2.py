"""cgroup v2: one unified directory (<root>/<path>) with controllers enabled from the root down."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py builds enums at import (~3 ms a start)
import os
import time

from virtkit.container.cgroups.base import (
    POLL_INTERVAL,
    CgroupManager,
    read_int,
    read_keyed,
    read_procs,
    read_text,
    remove_virtkit_parents,
    rmdir_tree,
    write_file,
)
from virtkit.container.cgroups.resources import F, ResourcePlan, cpu_max, shares_to_weight, validate_resources
from virtkit.core.errors import SystemFailure

WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


class V2Manager(CgroupManager):
    version = 2

    @property
    def dir(self) -> str:
        return self.root + self.path

    def v1_paths(self) -> dict[str, str]:
        return {"": self.dir}

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def _first_dir(self) -> str:
        return self.dir

    def create(self) -> None:
        current = self.root
        for part in self.path.strip("/").split("/"):
            self._enable_controllers(current)
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise SystemFailure(f"cgroup: cannot create {current}: {exc.strerror}") from exc
            else:
                self._created.add(current)

    @staticmethod
    def _enable_controllers(directory: str) -> None:
        """Delegate what the kernel offers here to the children.

        Failures are tolerated: a hybrid host's v1 may hold a controller, or a non-root
        ancestor may hold processes; apply() reports a missing controller if one is needed.
        """
        try:
            available = set(read_text(os.path.join(directory, "cgroup.controllers")).split())
            enabled = set(read_text(os.path.join(directory, "cgroup.subtree_control")).split())
        except FileNotFoundError:
            return
        for ctrl in WANTED_CONTROLLERS:
            if ctrl in available and ctrl not in enabled:
                try:
                    write_file(os.path.join(directory, "cgroup.subtree_control"), "+" + ctrl)
                except SystemFailure:
                    pass

    def _file(self, name: str, what: str) -> str:
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            from virtkit.core.errors import Unsupported

            ctrl = name.split(".", 1)[0]
            raise Unsupported(f"{what}: the cgroup v2 {ctrl!r} controller is not available at {self.dir}")
        return path

    def _control_path(self, name: str, field: str) -> str:
        return self._file(name, field)

    def apply(self, resources: dict | None) -> None:
        plan = validate_resources(resources)
        _refuse_v1_only(plan)
        writes: list[tuple[str, str | int, str | None]] = []

        def add(name: str, value: str | int, field: str) -> None:
            writes.append((self._file(name, field), value, field))

        if plan.cpu_shares is not None:
            add("cpu.weight", shares_to_weight(plan.cpu_shares), f"{F}.cpu.shares")
        line = cpu_max(plan.cpu_quota, plan.cpu_period)
        if line is not None:
            add("cpu.max", line, f"{F}.cpu.quota")
        if plan.cpus is not None:
            add("cpuset.cpus", plan.cpus, f"{F}.cpu.cpus")
        if plan.mems is not None:
            add("cpuset.mems", plan.mems, f"{F}.cpu.mems")
        if plan.memory_limit is not None:
            add("memory.max", "max" if plan.memory_limit == -1 else plan.memory_limit, f"{F}.memory.limit")
        if plan.memory_swap is not None:
            # OCI swap is memory+swap (the v1 memsw meaning); v2 limits swap alone.
            assert plan.memory_limit is not None or plan.memory_swap == -1
            swap = "max" if plan.memory_swap == -1 else plan.memory_swap - (plan.memory_limit or 0)
            add("memory.swap.max", swap, f"{F}.memory.swap")
        if plan.memory_reservation is not None:
            add("memory.low", "max" if plan.memory_reservation == -1 else plan.memory_reservation,
                f"{F}.memory.reservation")
        if plan.pids_limit is not None:
            add("pids.max", "max" if plan.pids_limit == -1 else plan.pids_limit, f"{F}.pids.limit")
        if plan.blkio_weight is not None:
            if os.path.exists(os.path.join(self.dir, "io.weight")):
                add("io.weight", f"default {plan.blkio_weight}", f"{F}.blockIO.weight")
            else:
                add("io.bfq.weight", plan.blkio_weight, f"{F}.blockIO.weight")
        for filename, text in plan.unified.items():
            # last: a unified value wins over the same setting given the OCI way (crun does the same)
            add(filename, text, f"{F}.unified.{filename}")
        for path, value, field in writes:
            write_file(path, value, field=field)
        self._attach_devices(plan.devices)

    def _attach_devices(self, rules: list[dict]) -> None:
        """The seam for device policy: v2 has no devices files, only a BPF program on the cgroup."""
        from virtkit.container import devices as _devices

        _devices.attach_v2(self.dir, rules)

    def add_pid(self, pid: int) -> None:
        try:
            write_file(os.path.join(self.dir, "cgroup.procs"), pid)
        except SystemFailure as exc:
            raise SystemFailure(f"cgroup: cannot move pid {pid} into {self.dir}: {exc.message}") from exc

    def pids(self) -> list[int]:
        return sorted(set(read_procs(self.dir)))

    def _wait_frozen(self, want: bool, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while read_keyed(os.path.join(self.dir, "cgroup.events")).get("frozen", 0) != int(want):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def freeze(self, timeout: float = 5.0) -> None:
        write_file(self._file("cgroup.freeze", "freeze"), 1)
        if not self._wait_frozen(True, timeout):
            write_file(os.path.join(self.dir, "cgroup.freeze"), 0)
            raise SystemFailure(f"cgroup {self.path}: did not freeze within {timeout:g}s")

    def thaw(self) -> None:
        write_file(self._file("cgroup.freeze", "thaw"), 0)
        self._wait_frozen(False, 5.0)

    def is_frozen(self) -> bool:
        return read_keyed(os.path.join(self.dir, "cgroup.events")).get("frozen", 0) == 1

    def _can_freeze(self) -> bool:
        return os.path.exists(os.path.join(self.dir, "cgroup.freeze"))

    def kill_all(self, sig: int) -> None:
        kill_file = os.path.join(self.dir, "cgroup.kill")
        if sig == signal.SIGKILL and os.path.exists(kill_file):
            try:
                write_file(kill_file, 1)
            except SystemFailure:
                if not self.gone():
                    raise       # else emptied and removed meanwhile: nothing left to kill
        else:
            super().kill_all(sig)

    def stats(self) -> dict:
        def get(name: str) -> int | None:
            return read_int(os.path.join(self.dir, name))

        return {
            "cpu_usage_ns": read_keyed(os.path.join(self.dir, "cpu.stat")).get("usage_usec", 0) * 1000,
            "memory_bytes": get("memory.current") or 0,
            "memory_limit": get("memory.max"),
            "pids_current": get("pids.current") or 0,
            "pids_limit": get("pids.max"),
            "oom_kills": read_keyed(os.path.join(self.dir, "memory.events")).get("oom_kill", 0),
        }

    def oom_killed(self) -> bool:
        """One file, not all of stats(): asked as a container's exit is recorded, on the way to its caller."""
        return bool(read_keyed(os.path.join(self.dir, "memory.events")).get("oom_kill", 0))

    def _rmdir_all(self) -> None:
        rmdir_tree(self.dir)
        try:
            remove_virtkit_parents(self.dir, self.root, self._created)
        except SystemFailure:
            pass


def _refuse_v1_only(plan: ResourcePlan) -> None:
    """Settings that only cgroup v1 has: refused before anything is written, as crun does.

    runc ignores both silently on v2; a container that asked not to be OOM-killed (or to swap less) and runs
    without that is worse than one that does not start and says why.
    """
    from virtkit.core.errors import Unsupported

    if plan.memory_swappiness is not None:
        raise Unsupported(f"{F}.memory.swappiness: cgroup v2 has no per-cgroup swappiness (memory.swappiness is "
                          "a cgroup v1 file); remove it, or run on a cgroup v1 host")
    if plan.disable_oom_killer:
        raise Unsupported(f"{F}.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer (there is no "
                          "memory.oom_control); remove it or set it to false, or run on a cgroup v1 host")
