"""cgroup v1: one directory per controller hierarchy (/sys/fs/cgroup/<controller>/<path>)."""

from __future__ import annotations

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
from virtkit.container.cgroups.resources import F, validate_resources
from virtkit.core.errors import SystemFailure, Unsupported

# "systemd" is the name=systemd hierarchy; joining it keeps systemd's view of the host tidy.
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "systemd")
# v1 reports "no memory limit" as PAGE_COUNTER_MAX pages, a number near 2**63.
_UNLIMITED_FLOOR = 1 << 62


_DISCOVERED: dict[str, tuple[dict[str, str], list[str]]] = {}


def _discover(root: str) -> tuple[dict[str, str], list[str]]:
    """Controller -> hierarchy dir, and one dir per distinct tree; looked up once per process (a start asks
    for it a dozen times, and resolving the co-mount links each time cost ~2 ms)."""
    found = _DISCOVERED.get(root)
    if found is None:
        hierarchies: dict[str, str] = {}
        trees: list[str] = []
        seen: set[str] = set()
        for ctrl in CONTROLLERS:
            base = os.path.join(root, ctrl)
            if os.path.isdir(base):
                hierarchies[ctrl] = base
                real = os.path.realpath(base)
                if real not in seen:
                    seen.add(real)
                    trees.append(base)
        found = _DISCOVERED[root] = (hierarchies, trees)
    return found


class V1Manager(CgroupManager):
    version = 1

    def __init__(self, path: str, root: str, controllers: tuple[str, ...] | None = None) -> None:
        super().__init__(path, root)
        self._hierarchies, self._trees = _discover(self.root)
        if controllers is not None:
            # a VM's process needs only some hierarchies (cpu, cpuacct, cpuset), not a container's nine
            self._hierarchies = {c: b for c, b in self._hierarchies.items() if c in controllers}
            reals = {os.path.realpath(b) for b in self._hierarchies.values()}
            self._trees = [t for t in self._trees if os.path.realpath(t) in reals]

    def v1_paths(self) -> dict[str, str]:
        return {ctrl: base + self.path for ctrl, base in self._hierarchies.items()}

    def _unique_dirs(self) -> list[tuple[str, str]]:
        """(hierarchy root, our dir) once per tree: co-mounted controllers ("cpu,cpuacct") share one."""
        return [(base, base + self.path) for base in self._trees]

    def _dir(self, ctrl: str) -> str | None:
        base = self._hierarchies.get(ctrl)
        return None if base is None else base + self.path

    def exists(self) -> bool:
        return any(os.path.isdir(d) for _b, d in self._unique_dirs())

    def _first_dir(self) -> str:
        return self._trees[0] + self.path if self._trees else self.root + self.path

    def create(self) -> None:
        if not self._hierarchies:
            raise Unsupported(f"cgroup v1: no controller hierarchies found under {self.root}")
        for base, _leaf in self._unique_dirs():
            is_cpuset = os.path.exists(os.path.join(base, "cpuset.cpus"))
            current = base
            for part in self.path.strip("/").split("/"):
                parent, current = current, os.path.join(current, part)
                try:
                    os.mkdir(current, 0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise SystemFailure(f"cgroup: cannot create {current}: {exc.strerror}") from exc
                else:
                    self._created.add(current)
                if is_cpuset:
                    self._inherit_cpuset(parent, current)

    def _renamable_to(self, made: V1Manager) -> bool:
        """Whether `made` can be renamed to this one: v1 renames only within one parent, in the same trees."""
        return os.path.dirname(made.path) == os.path.dirname(self.path) and made._trees == self._trees

    def can_adopt(self, made: CgroupManager) -> bool:
        return isinstance(made, V1Manager) and self._renamable_to(made) \
            and not any(os.path.lexists(dst) for _base, dst in self._unique_dirs())

    def adopt(self, made: CgroupManager) -> bool:
        if not isinstance(made, V1Manager) or not self._renamable_to(made):
            return False
        done: list[tuple[str, str]] = []
        try:
            # a rename within one parent is what cgroup v1 allows; each hierarchy's dir keeps its settings
            for (_base, src), (_same, dst) in zip(made._unique_dirs(), self._unique_dirs(), strict=True):
                os.rename(src, dst)
                done.append((src, dst))
        except OSError:
            for src, dst in reversed(done):
                try:
                    os.rename(dst, src)
                except OSError:
                    pass
            return False
        return True

    @staticmethod
    def _inherit_cpuset(parent: str, child: str) -> None:
        # A new v1 cpuset starts with no cpus and no mems, and then refuses every task (ENOSPC).
        for name in ("cpuset.cpus", "cpuset.mems"):
            target = os.path.join(child, name)
            try:
                if read_text(target).strip():
                    continue
            except FileNotFoundError:
                continue
            write_file(target, read_text(os.path.join(parent, name)).strip() or "\n")

    def _need(self, ctrl: str, filename: str, what: str) -> str:
        directory = self._dir(ctrl)
        path = None if directory is None else os.path.join(directory, filename)
        if path is None or not os.path.exists(path):
            raise Unsupported(f"{what}: cgroup v1 has no {filename} here (controller {ctrl!r} missing?)")
        return path

    def _control_path(self, name: str, field: str) -> str:
        return self._need(name.split(".", 1)[0], name, field)

    def apply(self, resources: dict | None) -> None:
        from virtkit.container import devices as _devices

        plan = validate_resources(resources)
        if plan.unified:
            # as runc: the files named are v2 files, and guessing v1 equivalents would mislead
            raise Unsupported(f"{F}.unified: is for cgroup v2 hosts only ({', '.join(sorted(plan.unified))} "
                              "given); this host runs cgroup v1")
        writes: list[tuple[str, str | int, str | None]] = []
        if plan.cpu_shares is not None:
            writes.append((self._need("cpu", "cpu.shares", f"{F}.cpu.shares"), plan.cpu_shares, f"{F}.cpu.shares"))
        if plan.cpu_period is not None:
            writes.append((self._need("cpu", "cpu.cfs_period_us", f"{F}.cpu.period"), plan.cpu_period,
                           f"{F}.cpu.period"))
        if plan.cpu_quota is not None:
            writes.append((self._need("cpu", "cpu.cfs_quota_us", f"{F}.cpu.quota"), plan.cpu_quota,
                           f"{F}.cpu.quota"))
        if plan.cpus is not None:
            writes.append((self._need("cpuset", "cpuset.cpus", f"{F}.cpu.cpus"), plan.cpus, f"{F}.cpu.cpus"))
        if plan.mems is not None:
            writes.append((self._need("cpuset", "cpuset.mems", f"{F}.cpu.mems"), plan.mems, f"{F}.cpu.mems"))
        writes += self._memory_writes(plan.memory_limit, plan.memory_swap)
        if plan.memory_reservation is not None:
            writes.append((self._need("memory", "memory.soft_limit_in_bytes", f"{F}.memory.reservation"),
                           plan.memory_reservation, f"{F}.memory.reservation"))
        if plan.memory_swappiness is not None:
            writes.append((self._need("memory", "memory.swappiness", f"{F}.memory.swappiness"),
                           plan.memory_swappiness, f"{F}.memory.swappiness"))
        if plan.disable_oom_killer:
            # oom_kill_disable: a cgroup at its limit waits for memory (its tasks sleep) instead of losing one
            writes.append((self._need("memory", "memory.oom_control", f"{F}.memory.disableOOMKiller"), 1,
                           f"{F}.memory.disableOOMKiller"))
        if plan.pids_limit is not None:
            writes.append((self._need("pids", "pids.max", f"{F}.pids.limit"),
                           "max" if plan.pids_limit == -1 else plan.pids_limit, f"{F}.pids.limit"))
        if plan.blkio_weight is not None:
            directory = self._dir("blkio") or ""
            name = next((n for n in ("blkio.weight", "blkio.bfq.weight")
                         if os.path.exists(os.path.join(directory, n))), "blkio.weight")
            writes.append((self._need("blkio", name, f"{F}.blockIO.weight"), plan.blkio_weight,
                           f"{F}.blockIO.weight"))
        devdir = self._dir("devices")
        if devdir is None or not os.path.exists(os.path.join(devdir, "devices.allow")):
            raise Unsupported(f"{F}.devices: the v1 devices controller is missing; refusing to run "
                              "without device isolation")
        for filename, line in _devices.v1_lines(plan.devices):
            writes.append((os.path.join(devdir, filename), line, None))
        for path, value, field in writes:
            write_file(path, value, field=field)

    def _memory_writes(self, limit: int | None, swap: int | None) -> list[tuple[str, str | int, str | None]]:
        out: list[tuple[str, str | int, str | None]] = []
        if limit is not None:
            out.append((self._need("memory", "memory.limit_in_bytes", f"{F}.memory.limit"), limit,
                        f"{F}.memory.limit"))
        if swap is not None:
            memsw = self._need("memory", "memory.memsw.limit_in_bytes", f"{F}.memory.swap (swap accounting)")
            item = (memsw, swap, f"{F}.memory.swap")
            # The kernel keeps memsw >= limit at every step: raise memsw first when growing.
            current = read_int(memsw)
            if limit is not None and current is not None and limit > current:
                out.insert(0, item)
            else:
                out.append(item)
        return out

    def add_pid(self, pid: int) -> None:
        # A process moving itself, single-threaded (the runtime's own children are), writes "0" to `tasks`:
        # migrating only the current thread skips the global threadgroup lock, whose RCU sync costs ~15 ms
        # per container start on this kind of host; writing a pid to cgroup.procs always takes it.
        myself = pid == os.getpid() and len(os.listdir("/proc/self/task")) == 1
        target, value = ("tasks", 0) if myself else ("cgroup.procs", pid)
        for _base, directory in self._unique_dirs():
            try:
                write_file(os.path.join(directory, target), value)
            except SystemFailure as exc:
                raise SystemFailure(f"cgroup: cannot move pid {pid} into {directory}: {exc.message}") from exc

    def pids(self) -> list[int]:
        found: set[int] = set()
        for _base, directory in self._unique_dirs():
            found.update(read_procs(directory))
        return sorted(found)

    def _freezer_state(self) -> str:
        return read_text(self._need("freezer", "freezer.state", "freeze")).strip()

    def freeze(self, timeout: float = 5.0) -> None:
        path = self._need("freezer", "freezer.state", "freeze")
        deadline = time.monotonic() + timeout
        while True:
            write_file(path, "FROZEN")
            if self._freezer_state() == "FROZEN":
                return
            if time.monotonic() >= deadline:
                write_file(path, "THAWED")
                raise SystemFailure(f"cgroup {self.path}: did not freeze within {timeout:g}s")
            time.sleep(POLL_INTERVAL)

    def thaw(self) -> None:
        write_file(self._need("freezer", "freezer.state", "thaw"), "THAWED")

    def is_frozen(self) -> bool:
        return self._freezer_state() == "FROZEN"

    def _can_freeze(self) -> bool:
        directory = self._dir("freezer")
        return directory is not None and os.path.exists(os.path.join(directory, "freezer.state"))

    def stats(self) -> dict:
        def get(ctrl: str, name: str) -> int | None:
            directory = self._dir(ctrl)
            return None if directory is None else read_int(os.path.join(directory, name))

        limit = get("memory", "memory.limit_in_bytes")
        memdir = self._dir("memory")
        oom = read_keyed(os.path.join(memdir, "memory.oom_control")) if memdir else {}
        return {
            "cpu_usage_ns": get("cpuacct", "cpuacct.usage") or 0,
            "memory_bytes": get("memory", "memory.usage_in_bytes") or 0,
            "memory_limit": None if limit is None or limit >= _UNLIMITED_FLOOR else limit,
            "pids_current": get("pids", "pids.current") or 0,
            "pids_limit": get("pids", "pids.max"),
            "oom_kills": oom.get("oom_kill", 0),
        }

    def oom_killed(self) -> bool:
        """One file, not all of stats(): asked as a container's exit is recorded, on the way to its caller."""
        memdir = self._dir("memory")
        return bool(memdir and read_keyed(os.path.join(memdir, "memory.oom_control")).get("oom_kill", 0))

    def _rmdir_all(self) -> None:
        for _base, directory in self._unique_dirs():
            rmdir_tree(directory)
        for base, directory in self._unique_dirs():
            try:
                remove_virtkit_parents(directory, base, self._created)
            except SystemFailure:
                # A parent that cannot go is not this container's problem.
                pass


__all__ = ["CONTROLLERS", "V1Manager"]
