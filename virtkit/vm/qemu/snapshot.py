"""Snapshots of a QEMU VM: its memory (QMP migrate to a file) and its root disk (a copy of its overlay).

A snapshot directory holds disk.qcow2 (the overlay as it was; its backing file name "base.raw" is relative,
so the copy works again once back in the VM's directory), the memory (QEMU's migration stream, only when the
VM was running: memory.state.zst, or memory.state where zstd is missing) and vm-snapshot.json.

A running VM is stopped (QMP stop) and migrated into a file that virtkit opened and handed to QEMU (getfd +
`fd:` URI; QEMU 7.2 has no file: URI, and with `exec:cat > FILE` QEMU SIGTERMs a writer that has not exited
the moment it closes the pipe, which can cut the file short). Its overlay is copied while migration holds the
disks inactive, then the VM continues: ~0.1 s for a busybox guest here. The stream is then compressed with
zstd -1 while the guest runs (68 MiB -> 16 MiB for 256M of RAM, ~0.1 s). Copying the overlay (rather than
qcow2 internal snapshots, savevm) keeps every snapshot a plain directory that the snapshot service commits,
lists and removes like a container's; the base disk is shared and never changes, so only the overlay is copied.

Restore (of a stopped VM: the snapshot service refuses a running one) puts the overlay back and links the
memory into the VM's directory (resume.state[.zst]); the next start runs QEMU with `-incoming` from it and
continues the guest where it was (~0.2 s instead of a boot). The state is used once: a start that cannot load
it (QEMU changed since, a damaged file) fails with a clear error, and the start after boots afresh from the
restored disk. Volume disks are not in snapshots: a running VM with volumes is not snapshotted (its memory
would not match its volumes on restore).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

from virtkit.core.errors import InvalidState, NotFound, SystemFailure
from virtkit.core.models import Instance
from virtkit.storage import vm_disks
from virtkit.vm.qemu import qmp

if TYPE_CHECKING:
    from virtkit.vm.process import VmProcessDriver as _Base
else:
    _Base = object

SNAP_DISK = "disk.qcow2"
SNAP_STATE = "memory.state"
SNAP_META = "vm-snapshot.json"
ZST = ".zst"
RESUME_FILE = "resume.state"           # (+ ZST) in the VM's directory, between a restore and the next start
MIGRATE_TIMEOUT = 120.0
RESUME_TIMEOUT = 60.0
# QEMU 7.2 rate-limits migration to 32 MiB/s by default; to a local file the disk is the only limit
MAX_BANDWIDTH = 64 << 30


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _compress(path: str) -> None:
    """path -> path.zst, where zstd is installed (the raw stream stays otherwise)."""
    zstd = shutil.which("zstd")
    if zstd is None:
        return
    proc = subprocess.run([zstd, "-q", "-1", "-T0", "--rm", path, "-o", path + ZST],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        _unlink(path + ZST)        # the raw stream serves as well
        if not os.path.exists(path):
            raise SystemFailure(f"zstd of the VM's memory failed: {proc.stderr.strip()}")


class VmSnapshots(_Base):
    def _resume_state(self, instance: Instance) -> str | None:
        """The memory the next start resumes from, if a restore left one."""
        for name in (RESUME_FILE + ZST, RESUME_FILE):
            if os.path.exists(self._file(instance, name)):
                return self._file(instance, name)
        return None

    # -- snapshot -------------------------------------------------------------------------------------
    def snapshot(self, instance: Instance, dest: str) -> int:
        """Copy the VM's disk (and its memory, when it runs) into `dest`; returns the bytes it takes."""
        if not os.path.isdir(self.vm_dir(instance)):
            raise InvalidState(f"instance '{instance.name}' was not created as a VM")
        os.makedirs(dest, mode=0o700)
        disk = self._file(instance, SNAP_DISK)
        if self._process_pid(instance) is not None:
            if self.info(instance).get("volumes"):
                raise InvalidState(f"cannot snapshot VM '{instance.name}' while it runs: its volume disks are not "
                                   "part of a snapshot, and its memory would not match them on restore; stop it "
                                   "first (a stopped VM's snapshot is its root disk)")
            self._save_running(instance, dest, disk)
            _compress(os.path.join(dest, SNAP_STATE))
        else:
            if os.path.exists(disk):
                vm_disks.copy_sparse(disk, os.path.join(dest, SNAP_DISK))
            # restored but not started yet: its memory is the state the next start resumes from
            pending = self._resume_state(instance)
            if pending is not None:
                os.link(pending, os.path.join(dest, SNAP_STATE + (ZST if pending.endswith(ZST) else "")))
        with open(os.path.join(dest, SNAP_META), "w") as f:
            json.dump({"memory": _state_in(dest) is not None, "disk": os.path.exists(disk),
                       "taken_at": time.time()}, f)
        return vm_disks.allocated(dest)

    def _save_running(self, instance: Instance, dest: str, disk: str) -> None:
        sock = self.control_socket(instance)
        was_running = qmp.query_status(sock).get("status") == "running"
        fd = os.open(os.path.join(dest, SNAP_STATE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        qmp.stop(sock)
        try:
            qmp.execute(sock, "migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
            qmp.execute_with_fd(sock, fd, "vksnapshot", "migrate", {"uri": "fd:vksnapshot"})
            self._wait_migrated(instance, sock)
            # migration flushed the disk and holds it inactive: the copy is consistent with the memory
            if os.path.exists(disk):
                vm_disks.copy_sparse(disk, os.path.join(dest, SNAP_DISK))
        finally:
            os.close(fd)
            # cont takes the disks back from migration; a VM the user had paused is paused again at once
            try:
                qmp.cont(sock)
                if not was_running:
                    qmp.stop(sock)
            except SystemFailure:
                pass            # QEMU is gone: the VM's exit is recorded as usual

    def _wait_migrated(self, instance: Instance, sock: str) -> None:
        deadline = time.monotonic() + MIGRATE_TIMEOUT
        while True:
            info = qmp.execute(sock, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise SystemFailure(f"saving the memory of VM '{instance.name}' failed: "
                                    f"{info.get('error-desc') or status}")
            if time.monotonic() > deadline:
                try:
                    qmp.execute(sock, "migrate_cancel")
                except SystemFailure:
                    pass
                raise SystemFailure(f"saving the memory of VM '{instance.name}' took over {MIGRATE_TIMEOUT:g} s")
            time.sleep(0.01)

    # -- restore --------------------------------------------------------------------------------------
    def restore(self, instance: Instance, src: str) -> None:
        """Put the snapshot's disk back; its memory, if it has one, is where the next start resumes from."""
        if self._process_pid(instance) is not None:
            raise InvalidState(f"cannot restore VM '{instance.name}': it is running (stop it first)")
        try:
            with open(os.path.join(src, SNAP_META)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"{src} is not a VM snapshot") from None
        except ValueError as exc:
            raise SystemFailure(f"VM snapshot {src} is damaged: {exc}") from exc
        disk = self._file(instance, SNAP_DISK)
        if meta.get("disk"):
            tmp = f"{disk}.restore"
            try:
                vm_disks.copy_sparse(os.path.join(src, SNAP_DISK), tmp)
                os.replace(tmp, disk)
            except BaseException:
                _unlink(tmp)
                raise
        for name in (RESUME_FILE, RESUME_FILE + ZST):
            _unlink(self._file(instance, name))
        state = _state_in(src) if meta.get("memory") else None
        if state is not None:
            # the state file never changes once written: a link costs nothing, and outlives a snapshot rm
            os.link(state, self._file(instance, RESUME_FILE + (ZST if state.endswith(ZST) else "")))

    # -- start from a saved state ---------------------------------------------------------------------
    def _resume_args(self, instance: Instance) -> list[str]:
        state = self._resume_state(instance)
        if state is None:
            return []
        # reading through exec: is safe (QEMU has read all it needs when it closes the pipe)
        reader = "zstd -dcq " if state.endswith(ZST) else "cat "
        return ["-incoming", "exec:" + reader + shlex.quote(state)]

    def start(self, instance: Instance) -> int:
        state = self._resume_state(instance)
        if state is None or self._process_pid(instance) is not None:
            return super().start(instance)  # type: ignore[no-any-return]
        try:
            pid = super().start(instance)
            self._finish_resume(instance)
        except BaseException as exc:
            self._abandon_resume(instance)
            raise SystemFailure(f"VM '{instance.name}' could not resume from its restored memory "
                                f"({getattr(exc, 'message', exc)}); the saved memory is dropped: the next start "
                                "boots afresh from the restored disk") from exc
        finally:
            _unlink(state)
        return int(pid)

    def _finish_resume(self, instance: Instance) -> None:
        """Wait for QEMU to load the state (it is paused then: the snapshot was taken stopped), then continue."""
        sock = self.control_socket(instance)
        deadline = time.monotonic() + RESUME_TIMEOUT
        while True:
            if os.path.exists(self._file(instance, "exit.json")):
                raise SystemFailure(f"QEMU exited: {self._process_stderr(instance)}")
            try:
                status = qmp.query_status(sock).get("status")
            except SystemFailure:
                status = None
            if status == "paused":
                qmp.cont(sock)
                return
            if status == "running":
                return
            if time.monotonic() > deadline:
                raise SystemFailure(f"loading the state took over {RESUME_TIMEOUT:g} s")
            time.sleep(0.01)

    def _abandon_resume(self, instance: Instance) -> None:
        self._kill_process(instance)


def _state_in(snapshot_dir: str) -> str | None:
    for name in (SNAP_STATE + ZST, SNAP_STATE):
        if os.path.exists(os.path.join(snapshot_dir, name)):
            return os.path.join(snapshot_dir, name)
    return None
