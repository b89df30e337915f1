"""What virtkitd holds while it runs: the home, store, image store, drivers and services, wired once."""

from __future__ import annotations

import json
import os
import signal as signal_mod
import sys
from collections.abc import Callable, Iterator
from typing import Any

from virtkit.config import Home
from virtkit.core.errors import InvalidArgument, NotFound, VirtkitError
from virtkit.core.models import InstanceState
from virtkit.core.service import InstanceService

# what the attach and logs streams carry: frames of 1 kind byte, 4 length bytes (big-endian), the data
FRAME_STDOUT = 1
FRAME_STDERR = 2
FRAME_EXIT = 3


class Context:
    def __init__(self, home: Home) -> None:
        from virtkit.container.driver import ContainerDriver
        from virtkit.images.store import ImageStore
        from virtkit.store.sqlite import SQLiteStore

        home.ensure()
        self.home = home
        self.store = SQLiteStore(home.db)
        self.images = ImageStore(home.images)
        from virtkit.vm.engines import VmEngines

        self.containers = ContainerDriver(home, self.images)
        self.drivers = {"container": self.containers, "vm": VmEngines(home, self.images)}
        self.instances = InstanceService(self.store, self.drivers, self.images)  # type: ignore[arg-type]
        self.containers.hold_cgroup_parent()
        self._wire_storage(home)
        self._wire_networks(home)
        self.shutdown_hook: Callable[[], None] | None = None

    def _wire_storage(self, home: Home) -> None:
        """Volumes and snapshots, hooked into the instance lifecycle; leftovers of a crash cleaned up."""
        from virtkit.core.snapshots import SnapshotService
        from virtkit.core.volumes import VolumeService
        from virtkit.storage.snapshots import SnapshotFiles
        from virtkit.storage.volumes import VolumeFiles

        self.volumes = VolumeService(self.store, VolumeFiles(os.path.join(home.root, "volumes")))
        snapshot_files = SnapshotFiles(os.path.join(home.root, "snapshots"))
        self.snapshots = SnapshotService(self.store, self.instances, snapshot_files, self.images)
        self.instances.hooks += [self.volumes, self.snapshots]
        _removed, unknown = self.volumes.cleanup()
        for path in unknown:
            print(f"virtkitd: {path} is not a recorded volume; left as it is", file=sys.stderr, flush=True)
        self.snapshots.cleanup()
        from virtkit.storage.vm_disks import BaseDisks

        # VM base disks are cached per image digest: they go when their image does
        self.images.add_gc_hook(BaseDisks(home.vm_disks).collect)
        self._collect_vm_templates(home)

    def _collect_vm_templates(self, home: Home) -> None:
        """VM templates (vm/qemu/template.py) go with their image too."""
        import functools

        from virtkit.vm.qemu.template import TEMPLATES, collect_templates

        self.images.add_gc_hook(functools.partial(collect_templates, os.path.join(home.root, TEMPLATES)))

    def _wire_networks(self, home: Home) -> None:
        """Networks (the default one made on first start), bridges and rules rebuilt from the store."""
        from virtkit.core.networks import NetworkService
        from virtkit.net.fabric import NetFabric

        self.networks = NetworkService(self.store, NetFabric(home), live=self._live)
        self.instances.hooks.append(self.networks)
        try:
            self.networks.setup()
        except VirtkitError as exc:  # e.g. no nft: the daemon still serves, --network none still works
            print(f"virtkitd: virtual networks unavailable: {exc.message}", file=sys.stderr, flush=True)

    def _live(self, inst: Any) -> bool:
        """Whether the instance runs now, as its driver sees it (a stored "running" may have exited since)."""
        try:
            return self.instances.reconcile(self.store.get_instance(inst.id)).state in (
                InstanceState.RUNNING, InstanceState.PAUSED)
        except NotFound:
            return False

    def request_shutdown(self) -> None:
        from virtkit.container.supervisor import call

        try:
            call(self.home.supervisor_socket, {"op": "shutdown"}, timeout=5)
        except Exception:  # busy (containers run on) or already gone: either way the daemon may stop
            pass
        self.containers.release_cgroup_parent()
        from virtkit.net.netns import in_thread

        try:
            in_thread(self.networks.shutdown)   # netlink's sync API refuses to run in the event loop's thread
        except Exception as exc:  # never keep the daemon from stopping; the next start rebuilds
            print(f"virtkitd: taking networks down failed: {exc}", file=sys.stderr, flush=True)
        if self.shutdown_hook:
            self.shutdown_hook()

    # -- signals --------------------------------------------------------------------------------------
    @staticmethod
    def parse_signal(value: Any) -> int:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
        name = str(value).upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal_mod.Signals[name])
        except KeyError as exc:
            raise InvalidArgument(f"signal: unknown signal {value!r}") from exc

    # -- logs -----------------------------------------------------------------------------------------
    def follow_log(self, name: str, follow: bool, held: bool = False, tail: int | None = None,
                   streams: tuple[int, ...] = (FRAME_STDOUT, FRAME_STDERR),
                   cancelled: Callable[[], bool] | None = None, raw: bool = False) -> Iterator[bytes]:
        """Frames of the log's records (kind 1 stdout, 2 stderr), only `streams`, from the last `tail` lines if
        given; when following, until the instance stops, then an exit frame (kind 3, JSON).
        `raw`: the log's bytes as they come, all as stdout, unfiltered and not held back to a line's end (a VM's
        console session: a prompt has no newline, and the terminal showing it wants the guest's \r\n).

        The instance is held (not auto-removed) while read; `held` says the caller took that hold already.
        `cancelled` is asked while waiting for more: True ends the stream (its reader has gone).
        """
        if tail is not None and tail < 0:
            raise InvalidArgument(f"tail: must be a number of lines >= 0 (got {tail})")
        inst = self.instances.record(name)  # here, not in the stream: an unknown name is an HTTP error
        start = None
        if tail == 0:   # only what comes after this call: where the log ends now, not when the stream starts
            try:
                start = os.path.getsize(self.instances.log_path(inst))
            except FileNotFoundError:
                start = 0
        return self._follow(inst.id, follow, held, tail, streams, cancelled, start, raw)

    def _follow(self, instance_id: str, follow: bool, held: bool, tail: int | None, streams: tuple[int, ...],
                cancelled: Callable[[], bool] | None, start: int | None, raw: bool = False) -> Iterator[bytes]:
        from virtkit.core.logs import LineTail, SingleStreamDecoder

        svc = self.instances
        inst = svc.record(instance_id)
        path = svc.log_path(inst)
        if not held:
            svc.hold(inst.id)
        watch = svc.watch(inst)
        decoder = SingleStreamDecoder() if raw else svc.log_decoder(inst)
        # A look at the instance (its driver's view folded into the store: ~1 ms) is taken only when its driver
        # says an exit is recorded, when it is not running by its record, or after a quiet 0.25 s; a wake by a
        # file change alone costs one stat. The watch is in place before this first check: nothing is missed.
        exit_probe = svc.exit_probe(inst)
        look = exit_probe is None or exit_probe() or inst.state not in (InstanceState.RUNNING, InstanceState.PAUSED)

        def frames(records: list[tuple[int, bytes]]) -> Iterator[bytes]:
            for stream, data in records:
                if stream in streams and data:
                    yield _frame(stream, data)

        f = None
        released = False
        try:
            f = _open_log(path)
            if start is not None:
                if f and start and raw:
                    f.seek(start)
                elif f and start:
                    f.seek(start - 1)
                    if f.read(1) != b"\n":     # a record was being written just then: begin after it
                        f.readline()
            elif tail is not None:
                last = LineTail(tail)
                while f and (chunk := f.read(65536)):
                    last.add(decoder.feed(chunk))
                if not follow:
                    last.add(decoder.flush())
                yield from frames(last.result())
            while True:
                chunk = f.read(65536) if f else b""
                if chunk:
                    yield from frames(decoder.feed(chunk))
                    continue
                if not follow:
                    yield from frames(decoder.flush())
                    break
                if f is None:
                    f = _open_log(path)
                    if f:
                        continue
                cur = _current(svc, inst.id) if look else inst
                if cur is None or cur.state in (InstanceState.STOPPED, InstanceState.CREATED):
                    # all it wrote is in the file by now: the supervisor copies it before it records the exit
                    rest = f.read() if f else b""
                    yield from frames(decoder.feed(rest) + decoder.flush())
                    status = {"exit_code": cur.exit_code if cur else None,
                              "reason": cur.exit_reason if cur else "removed"}
                    # an auto-remove instance goes before its exit is told: a caller that saw the exit finds
                    # it gone (as `docker run --rm` returns after the removal), in this step of the stream
                    released = True
                    svc.release(inst.id)
                    yield _frame(FRAME_EXIT, json.dumps(status).encode())
                    break
                if cancelled is not None and cancelled():
                    break
                # woken by new output or the recorded exit; the timeout covers exits nobody writes down
                look = not watch.wait(0.25) or exit_probe is None or exit_probe()
        finally:
            if f:
                f.close()
            watch.close()
            if not released:
                svc.release(inst.id)


def _current(svc: Any, instance_id: str) -> Any:
    try:
        return svc.get(instance_id)
    except NotFound:
        return None


def _open_log(path: str) -> Any:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _frame(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(1, "big") + len(data).to_bytes(4, "big") + data
