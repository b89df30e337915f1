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

FRAME_OUTPUT = 1
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
        from virtkit.vm.qemu.driver import QemuDriver

        self.drivers = {"container": ContainerDriver(home, self.images), "vm": QemuDriver(home, self.images)}
        self.instances = InstanceService(self.store, self.drivers, self.images)  # type: ignore[arg-type]
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

    def _wire_networks(self, home: Home) -> None:
        """Networks (the default one made on first start), bridges and rules rebuilt from the store."""
        from virtkit.core.networks import NetworkService
        from virtkit.net.fabric import NetFabric

        self.networks = NetworkService(self.store, NetFabric(home))
        self.instances.hooks.append(self.networks)
        try:
            self.networks.setup()
        except VirtkitError as exc:  # e.g. no nft: the daemon still serves, --network none still works
            print(f"virtkitd: virtual networks unavailable: {exc.message}", file=sys.stderr, flush=True)

    def request_shutdown(self) -> None:
        from virtkit.container.supervisor import call

        try:
            call(self.home.supervisor_socket, {"op": "shutdown"}, timeout=5)
        except Exception:  # busy (containers run on) or already gone: either way the daemon may stop
            pass
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
    def follow_log(self, name: str, follow: bool, framed: bool, held: bool = False) -> Iterator[bytes]:
        """Yield the log's bytes; when following, until the instance stops (then an exit frame if framed).

        The instance is held (not auto-removed) while read; `held` says the caller took that hold already.
        """
        svc = self.instances
        inst = svc.get(name)
        path = svc.log_path(inst.id)
        if not held:
            svc.hold(inst.id)
        watch = svc.watch(inst.id)
        flt = svc.output_filter(inst.id)
        try:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                f = None
            while True:
                chunk = f.read(65536) if f else b""
                if chunk:
                    shown = flt.feed(chunk) if flt else chunk
                    if shown:
                        yield _frame(FRAME_OUTPUT, shown) if framed else shown
                    continue
                if not follow:
                    tail = flt.flush() if flt else b""
                    if tail:
                        yield _frame(FRAME_OUTPUT, tail) if framed else tail
                    break
                try:
                    cur = svc.get(inst.id)
                except NotFound:
                    cur = None
                if cur is None or cur.state in (InstanceState.STOPPED, InstanceState.CREATED):
                    rest = f.read() if f else b""
                    if flt:
                        rest = flt.feed(rest) + flt.flush()
                    if rest:
                        yield _frame(FRAME_OUTPUT, rest) if framed else rest
                    if framed:
                        status = {"exit_code": cur.exit_code if cur else None,
                                  "reason": cur.exit_reason if cur else "removed"}
                        yield _frame(FRAME_EXIT, json.dumps(status).encode())
                    break
                if f is None and os.path.exists(path):
                    f = open(path, "rb")
                # woken by new output or the recorded exit; the timeout covers exits nobody writes down
                watch.wait(0.25)
            if f:
                f.close()
        finally:
            watch.close()
            svc.release(inst.id)


def _frame(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(1, "big") + len(data).to_bytes(4, "big") + data
