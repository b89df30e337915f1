"""Instance lifecycle services: create, start, stop, exec, rm ... over a Store and the drivers. No syscalls here."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from virtkit.core import lifecycle
from virtkit.core.driver import InstanceDriver
from virtkit.core.errors import InvalidArgument, NotFound, Unsupported, VirtkitError
from virtkit.core.models import Instance, InstanceState
from virtkit.core.names import generate_name
from virtkit.core.options import validate_create
from virtkit.store.base import Store

S = InstanceState


class InstanceService:
    def __init__(self, store: Store, drivers: dict[str, InstanceDriver], images: Any) -> None:
        self.store = store
        self.drivers = drivers
        self.images = images
        self._lock = threading.RLock()
        self._held: dict[str, int] = {}     # instance id -> attached readers; auto-remove waits for them
        # Services with a stake in an instance's life (volumes, snapshots). Each may have
        # prepare(inst) -> undo | None (before the driver creates it), created(inst) (after; must not
        # raise), starting(inst), stopped(inst) (it stopped, or its start failed; must not raise),
        # removed(inst).
        self.hooks: list[Any] = []
        self._quiescing: set[str] = set()   # frozen by us for a copy: not a user's pause

    def hold(self, instance_id: str) -> None:
        with self._lock:
            self._held[instance_id] = self._held.get(instance_id, 0) + 1

    def release(self, instance_id: str) -> None:
        """Drop a reader; an auto-remove instance that has stopped meanwhile is removed now."""
        with self._lock:
            n = self._held.get(instance_id, 0) - 1
            if n > 0:
                self._held[instance_id] = n
                return
            self._held.pop(instance_id, None)
        try:
            inst = self.reconcile(self.store.get_instance(instance_id))
        except NotFound:
            return
        if inst.state == S.STOPPED and inst.spec.get("auto_remove"):
            self._remove(inst)

    @contextmanager
    def quiescing(self, instance_id: str) -> Iterator[None]:
        """While held, a frozen cgroup of this instance is ours (a snapshot's copy), not a pause to record."""
        with self._lock:
            self._quiescing.add(instance_id)
        try:
            yield
        finally:
            with self._lock:
                self._quiescing.discard(instance_id)

    def driver(self, instance: Instance) -> InstanceDriver:
        return self.drivers[instance.type]

    # -- queries --------------------------------------------------------------------------------------
    def get(self, name: str) -> Instance:
        return self.reconcile(self.store.get_instance(name))

    def record(self, name: str) -> Instance:
        """The stored record, without asking its driver how it is now (get does: ~1 ms for a running one)."""
        return self.store.get_instance(name)

    def list_all(self) -> list[Instance]:
        out = []
        for inst in self.store.list_instances():
            try:
                out.append(self.reconcile(inst))
            except NotFound:    # removed while we looked (an --rm that exited): not in the list, not an error
                continue
        return out

    def reconcile_exited(self, everything: bool = False) -> None:
        """Fold recorded exits into the store: of every running instance whose driver's probe says one may be
        there (or that has no probe), or with `everything`, of all (as list_all)."""
        for inst in self.store.list_instances():
            if inst.state not in (S.RUNNING, S.PAUSED):
                continue
            probe = None if everything else self.exit_probe(inst)
            if probe is None or probe():
                try:
                    self.reconcile(inst)
                except NotFound:    # removed meanwhile: the others still get their exits recorded
                    continue

    def reconcile(self, inst: Instance) -> Instance:
        """Fold what the driver knows (the process exited, how) into the stored record."""
        if inst.state not in (S.RUNNING, S.PAUSED):
            return inst
        drv = self.driver(inst)
        status = drv.exit_status(inst)
        if status is None:
            runtime_state = drv.status(inst)
            if runtime_state == "paused" and inst.state != S.PAUSED and inst.id not in self._quiescing:
                return self.store.update_instance(inst.id, state=S.PAUSED.value)
            if runtime_state != "stopped":
                return inst
            status = self._late_exit_status(drv, inst)
        with self._lock:
            fresh = self.store.get_instance(inst.id)
            if fresh.state not in (S.RUNNING, S.PAUSED):
                return fresh
            updated = self.store.update_instance(
                inst.id, state=S.STOPPED.value, exit_code=status.code if status else None,
                exit_reason=status.reason if status else "unknown (exit not recorded)",
                finished_at=status.finished_at if status else time.time(),
            )
        self._stopped(updated)
        if updated.spec.get("auto_remove") and inst.id not in self._held:
            self._remove(updated)
        return updated

    def _stopped(self, inst: Instance) -> None:
        """Tell the hooks (networks: host ports are free again); their failure must not undo the stop."""
        for hook in self.hooks:
            if hasattr(hook, "stopped"):
                try:
                    hook.stopped(inst)
                except Exception as exc:
                    print(f"virtkitd: after '{inst.name}' stopped: {exc}", file=sys.stderr, flush=True)

    @staticmethod
    def _late_exit_status(drv: InstanceDriver, inst: Instance) -> Any:
        # the runtime sees the init gone a moment before the supervisor has written how it ended
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            status = drv.exit_status(inst)
            if status is not None:
                return status
            time.sleep(0.001)
        return None

    # -- create / start -------------------------------------------------------------------------------
    def create(self, req: dict[str, Any], start: bool = False) -> Instance:
        spec = validate_create(req)
        itype = req.get("type") or "container"
        if itype not in self.drivers:
            raise InvalidArgument(f"type: unknown instance type {itype!r} (known: {', '.join(self.drivers)})")
        image = self.images.get(req["image"])   # NotFound with a clear message when missing
        name = req.get("name") or self._unused_name()
        inst = Instance(
            id=secrets.token_hex(16), name=name, type=itype, state=S.CREATED.value, image=image.name,
            spec=spec, created_at=time.time(),
        )
        for hook in self.hooks:                     # what only fills in the spec: stored with it
            if hasattr(hook, "annotate"):
                hook.annotate(inst)
        self.store.add_instance(inst)               # AlreadyExists for a duplicate name, nothing made yet
        drv = self.drivers[itype]
        undo: list[Any] = []
        try:
            for hook in self.hooks:
                if hasattr(hook, "prepare") and (u := hook.prepare(inst)) is not None:
                    undo.append(u)
            if undo:                                # hooks filled in the spec (volume host paths)
                inst = self.store.update_instance(inst.id, spec=inst.spec)
            drv.create(inst)
        except BaseException:
            self.store.delete_instance(inst.id)
            for u in reversed(undo):
                u()
            raise
        for hook in self.hooks:
            if hasattr(hook, "created"):
                hook.created(inst)
        if start:
            try:
                return self.start(inst.name)
            except VirtkitError:
                if spec.get("auto_remove"):
                    self._remove(self.store.get_instance(inst.id))
                raise
        return inst

    def _unused_name(self) -> str:
        for _ in range(50):
            name = generate_name()
            try:
                self.store.get_instance(name)
            except NotFound:
                return name
        return f"instance-{secrets.token_hex(4)}"

    def start(self, name: str) -> Instance:
        inst = self.get(name)
        lifecycle.require(inst, "start")
        try:
            for hook in self.hooks:
                if hasattr(hook, "starting"):
                    hook.starting(inst)
            pid = self.driver(inst).start(inst)
        except BaseException:
            self._stopped(inst)         # what the hooks took for the run (host ports) is let go
            raise
        return self.store.update_instance(
            inst.id, state=S.RUNNING.value, pid=pid, started_at=time.time(),
            finished_at=None, exit_code=None, exit_reason=None,
        )

    # -- stop / kill / pause --------------------------------------------------------------------------
    def stop(self, name: str, timeout: float = 10.0) -> Instance:
        if timeout < 0:
            raise InvalidArgument(f"timeout: must be >= 0 (got {timeout:g})")
        inst = self.get(name)
        lifecycle.require(inst, "stop")
        self.driver(inst).stop(inst, timeout)
        return self._settle(inst)

    def _settle(self, inst: Instance) -> Instance:
        """After a stop, record the exit (reconcile waits briefly for the supervisor's report)."""
        deadline = time.monotonic() + 2.0
        while True:
            cur = self.reconcile(self.store.get_instance(inst.id)) if not self._gone(inst) else inst
            if cur.state == S.STOPPED or time.monotonic() > deadline:
                return cur
            time.sleep(0.01)

    def _gone(self, inst: Instance) -> bool:
        try:
            self.store.get_instance(inst.id)
            return False
        except NotFound:
            return True

    def restart(self, name: str, timeout: float = 10.0) -> Instance:
        inst = self.get(name)
        lifecycle.require(inst, "restart")
        # an auto-remove instance is removed when it stops by itself, not when a restart stops it (as Docker)
        self.hold(inst.id)
        try:
            if inst.state in (S.RUNNING, S.PAUSED):
                self.stop(name, timeout)
            return self.start(name)
        finally:
            self.release(inst.id)

    def kill(self, name: str, sig: int = 9) -> Instance:
        if not 1 <= sig <= 64:
            raise InvalidArgument(f"signal: {sig} is not a valid signal number")
        inst = self.get(name)
        lifecycle.require(inst, "kill")
        self.driver(inst).kill(inst, sig)
        return self.get(name)

    def pause(self, name: str) -> Instance:
        inst = self.get(name)
        lifecycle.require(inst, "pause")
        self.driver(inst).pause(inst)
        return self.store.update_instance(inst.id, state=S.PAUSED.value)

    def resume(self, name: str) -> Instance:
        inst = self.get(name)
        lifecycle.require(inst, "resume")
        self.driver(inst).resume(inst)
        return self.store.update_instance(inst.id, state=S.RUNNING.value)

    def update(self, name: str, changes: dict[str, Any]) -> Instance:
        """Change an instance's CPU weight, cap or pinning; a running one gets them at once, any at its next start."""
        import dataclasses

        from virtkit.core.options import validate_cpu_update

        inst = self.get(name)
        lifecycle.require(inst, "update")
        spec = validate_cpu_update(inst.spec, changes)
        drv: Any = self.driver(inst)
        if not hasattr(drv, "update_cpu"):
            raise Unsupported(f"update: {inst.type} instances cannot change their CPU settings")
        drv.update_cpu(dataclasses.replace(inst, spec=spec), inst.state in (S.RUNNING, S.PAUSED))
        return self.store.update_instance(inst.id, spec=spec)

    def rename(self, name: str, new_name: Any) -> Instance:
        """Docker's rename, in any state: the name is checked as at create and must be free; then the hooks with
        a `renamed(before, after)` (networks: names inside the instance's networks) follow. Nothing else keys on
        the name: files, cgroups and logs go by id."""
        from virtkit.core.errors import AlreadyExists
        from virtkit.core.names import validate_rename

        inst = self.get(name)
        new_name = validate_rename(inst.name, new_name)
        with self._lock:
            clash = next((i for i in self.store.list_instances() if i.name == new_name), None)
            if clash is not None:
                raise AlreadyExists(f"name: '{new_name}' is already in use by instance {clash.id[:12]}; remove "
                                    "or rename that one first")
            renamed = self.store.update_instance(inst.id, name=new_name)
        for hook in self.hooks:
            if hasattr(hook, "renamed"):
                hook.renamed(inst, renamed)
        return renamed

    # -- remove ---------------------------------------------------------------------------------------
    def remove(self, name: str, force: bool = False) -> None:
        inst = self.get(name)
        if force and inst.state in (S.RUNNING, S.PAUSED):
            self.driver(inst).stop(inst, 0)
            inst = self._settle(inst)
        lifecycle.require(inst, "rm")
        self._remove(inst)

    def _remove(self, inst: Instance) -> None:
        self.driver(inst).delete(inst)
        self.store.delete_instance(inst.id)
        for hook in self.hooks:
            if hasattr(hook, "removed"):
                hook.removed(inst)

    # -- exec / stats / logs --------------------------------------------------------------------------
    def exec_argv(self, name: str, command: list[str], tty: bool = False, env: list[str] | None = None,
                  console_socket: str | None = None) -> list[str]:
        if not command or not all(isinstance(c, str) for c in command):
            raise InvalidArgument("command: exec needs a command (a list of strings)")
        for e in env or []:
            if not isinstance(e, str) or "=" not in e:
                raise InvalidArgument(f"env: {e!r} is not NAME=VALUE")
        inst = self.get(name)
        lifecycle.require(inst, "exec")
        return self.driver(inst).exec_argv(inst, command, tty=tty, env=env or [], console_socket=console_socket)

    def open_console(self, name: str) -> int:
        """A file descriptor onto the running VM's serial console input (its output is the instance's log)."""
        inst = self.get(name)
        lifecycle.require(inst, "attach")
        drv: Any = self.driver(inst)
        if not hasattr(drv, "open_console"):
            raise InvalidArgument(f"console: {inst.type} instances have no serial console (use `virtkit attach "
                                  f"{inst.name}` or `virtkit exec -it {inst.name} sh`)")
        return int(drv.open_console(inst))

    def open_stdin(self, name: str) -> int:
        """A file descriptor onto the running instance's stdin (or terminal); it must have been made with -i/-t."""
        inst = self.get(name)
        lifecycle.require(inst, "attach")
        if not (inst.spec.get("interactive") or inst.spec.get("tty")):
            raise InvalidArgument(f"stdin: instance '{inst.name}' was not created with -i or -t: it has no stdin "
                                  "to attach to")
        drv: Any = self.driver(inst)
        if not hasattr(drv, "open_stdin"):
            raise InvalidArgument(f"stdin: {inst.type} instances have no stdin to attach to")
        return int(drv.open_stdin(inst))

    def close_stdin(self, name: str) -> None:
        inst = self.get(name)
        drv: Any = self.driver(inst)
        if inst.state in (S.RUNNING, S.PAUSED) and inst.spec.get("interactive") and hasattr(drv, "close_stdin"):
            drv.close_stdin(inst)

    def stats(self, name: str) -> dict[str, Any]:
        inst = self.get(name)
        lifecycle.require(inst, "stats")
        return self.driver(inst).stats(inst)

    # what following an instance's output needs, given its record (the caller read it once)
    def watch(self, inst: Instance) -> Any:
        return self.driver(inst).watch(inst)

    def exit_probe(self, inst: Instance) -> Any:
        """A cheap check (a callable, no store) that says whether the instance's exit may have been recorded
        since; None when its driver has none (then only a full look tells)."""
        probe = getattr(self.driver(inst), "exit_probe", None)
        return probe(inst) if probe else None

    def log_decoder(self, inst: Instance) -> Any:
        """What turns the instance's log file into (stream, bytes) records (see core/logs.py)."""
        from virtkit.core.logs import SingleStreamDecoder

        drv: Any = self.driver(inst)
        if hasattr(drv, "log_decoder"):
            return drv.log_decoder(inst)
        return SingleStreamDecoder(drv.output_filter(inst) if hasattr(drv, "output_filter") else None)

    def log_path(self, inst: Instance) -> str:
        return self.driver(inst).log_path(inst)
