"""A VM's CPU cgroup: made with its weight, cap and pinning before the VM's process starts, joined by that process
before it execs (see virtkit.vm.qemu.waiter), removed when it ends.

The whole process goes in (QEMU's or virtkit-vmm's), not only its vCPU threads: the emulator's own threads (QEMU's
main loop and I/O threads, the VMM's device threads) burn host CPU on the guest's behalf and belong under the same
cap and weight; and a process that joins before exec takes every thread it will ever make with it, with no window
in which a new thread runs outside (placing vCPU threads one by one after start would need a thread-mode subtree
on v2 and a race with thread creation on both). Per-vCPU pinning is a later refinement.

cgroup v1: the cpu, cpuacct and cpuset hierarchies (not a container's nine); v2: one directory. The path is the
containers' (<home's cgroup parent>/<instance id>), so the suite's leak checks see VMs too. The cgroup files are
written through virtkit.container.cgroups, the same code the OCI runtime uses.
"""

from __future__ import annotations

import logging
import os

from virtkit.config import Home
from virtkit.container.cgroups import CgroupManager, detect_version, manager_for
from virtkit.container.cgroups.base import remove_virtkit_parents
from virtkit.core.errors import InvalidState, SystemFailure, Unsupported
from virtkit.core.models import Instance
from virtkit.sched.cpushare import CpuRequest, CpuSettings, plan

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset")
log = logging.getLogger(__name__)


class VmCgroup:
    def __init__(self, home: Home, instance_id: str, *, root: str = "/sys/fs/cgroup",
                 version: int | None = None) -> None:
        self.path = f"{home.cgroup_parent}/{instance_id}"
        self.root = root
        self.version = detect_version(root) if version is None else version
        self.manager: CgroupManager = manager_for(self.path, root=root, version=self.version,
                                                  controllers=V1_CONTROLLERS)

    def dirs(self) -> list[str]:
        """This VM's cgroup directory in each hierarchy (co-mounted controllers counted once)."""
        seen: dict[str, str] = {}
        for directory in self.manager.v1_paths().values():
            base = directory[: len(directory) - len(self.path)]
            seen.setdefault(os.path.realpath(base), directory)
        return sorted(seen.values())

    def join_files(self) -> list[str]:
        """What the VM's process writes "0" into to move itself in: on v1 `tasks` (the process is one thread
        then, and moving one thread skips the thread-group lock that a cgroup.procs write takes), on v2
        cgroup.procs (v2 has no `tasks`)."""
        name = "tasks" if self.version == 1 else "cgroup.procs"
        return [os.path.join(d, name) for d in self.dirs()]

    def create(self, settings: CpuSettings) -> None:
        """Make the cgroup and write the settings; on failure nothing is left."""
        try:
            try:
                self.manager.create()
            except SystemFailure:
                # a sibling's removal may take the shared parent away between our two mkdirs: once more
                self.manager.create()
            self.manager.write_controls(settings.controls(self.version))
        except BaseException:
            self.remove()
            raise

    def update(self, settings: CpuSettings) -> None:
        if not self.manager.exists():
            raise InvalidState(f"cgroup {self.path}: does not exist (is the VM running?)")
        self.manager.write_controls(settings.controls(self.version))

    def pids(self) -> list[int]:
        return self.manager.pids() if self.manager.exists() else []

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup (the VM's process must be gone) and the home's parent cgroup if nothing else uses it.

        The waiter removes the leaf when the process ends; this also takes the parent, and is the fallback
        for a waiter that was killed.
        """
        if self.manager.exists():
            self.manager.destroy(timeout)         # removes empty virtkit parents too
            return
        for directory in self.dirs():
            try:
                remove_virtkit_parents(directory, directory[: len(directory) - len(self.path)], set())
            except SystemFailure:
                pass                              # a parent still in use is not this VM's to remove


def start_cgroup(home: Home, instance_id: str, settings: CpuSettings) -> VmCgroup | None:
    """The cgroup a VM starts in. Without CPU settings asked, a host where cgroups cannot be made (not root, no
    controllers) runs the VM without one (logged); with settings asked, that is an error."""
    asked = bool(settings.controls(1))
    try:
        cg = VmCgroup(home, instance_id)
        cg.create(settings)
    except (Unsupported, SystemFailure) as exc:
        if asked:
            raise
        log.warning("VM %s runs outside a cgroup (no CPU accounting or `virtkit update`): %s",
                    instance_id, exc.message)
        return None
    return cg


def update_running(home: Home, instance: Instance) -> None:
    """A running VM's cgroup gets the instance spec's weight, cap and pinning; what is not asked goes back to the
    default (no cap, every online CPU)."""
    from virtkit.core.options import online_cpus

    cg = VmCgroup(home, instance.id)
    if not cg.manager.exists():
        raise Unsupported(f"instance '{instance.name}' runs outside a cgroup (started where cgroups could not be "
                          "made): restart it to apply CPU settings")
    cg.update(plan(CpuRequest.from_spec(instance.spec or {}), online_cpus(), reset=True))


def remove_quietly(home: Home, instance: Instance) -> None:
    """At rm: the VM's cgroup (left only if its waiter was killed) and the home's parent cgroup when unused;
    a failure is logged, not raised (the VM's files still go)."""
    try:
        VmCgroup(home, instance.id).remove()
    except (SystemFailure, Unsupported, InvalidState) as exc:
        log.warning("VM %s: cannot remove its cgroup: %s", instance.name, exc.message)
