"""A container's on-disk record (<root>/<id>/state.json) and how its live status is worked out."""

from __future__ import annotations

import os

from virtkit.container import fastjson
from virtkit.core.errors import AlreadyExists, InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from collections.abc import Callable
    from typing import Any

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")  # checked by hand: `re` costs ~5 ms of a container start
STATE_FILE = "state.json"
FIFO = "exec.fifo"


def check_id(container_id: str) -> None:
    if not isinstance(container_id, str) or not container_id or len(container_id) > 1024 \
            or container_id[0] not in _ID_FIRST or not _ID_REST.issuperset(container_id):
        raise InvalidArgument(
            f"container id: invalid {container_id!r} (want [A-Za-z0-9][A-Za-z0-9_.-]*, at most 1024 chars)")


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (ticks since boot); None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class StateDir:
    """The directory holding one container's state: state.json, exec.fifo."""

    def __init__(self, root: str, container_id: str) -> None:
        check_id(container_id)
        self.id = container_id
        self.path = os.path.join(root, container_id)
        self.file = os.path.join(self.path, STATE_FILE)
        self.fifo = os.path.join(self.path, FIFO)

    def make(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            raise AlreadyExists(f"container {self.id!r} already exists") from None

    def exists(self) -> bool:
        return os.path.isfile(self.file)

    def load(self) -> dict[str, Any]:
        try:
            with open(self.file, "rb") as f:
                return fastjson.loads(f.read())
        except FileNotFoundError:
            raise NotFound(f"container {self.id!r} does not exist") from None

    def save(self, data: dict[str, Any]) -> None:
        tmp = f"{self.file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(fastjson.dumps(data))   # dumps uses the C encoder; dump(fp) iterates in Python
        os.rename(tmp, self.file)

    def remove(self, discard: Callable[[str], None] | None = None) -> None:
        if discard is not None:
            discard(self.path)
            return
        for name in (STATE_FILE, FIFO):
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
        try:
            for name in os.listdir(self.path):
                os.unlink(os.path.join(self.path, name))
            os.rmdir(self.path)
        except FileNotFoundError:
            pass


def live_status(rec: dict[str, Any], fifo: str) -> str:
    """creating | created | running | stopped (paused is decided by the caller from the freezer)."""
    pid = rec.get("pid") or 0
    if not pid:
        return "creating" if rec.get("status") == "creating" else "stopped"
    st = proc_start_time(pid)
    if st is None or st != rec.get("start_time"):
        return "stopped"
    return "created" if os.path.exists(fifo) else "running"


def oci_state(rec: dict[str, Any], status: str) -> dict[str, Any]:
    out = {
        "ociVersion": rec.get("ociVersion", "1.2.0"),
        "id": rec["id"],
        "status": status,
        "pid": rec.get("pid", 0) if status not in ("stopped",) else 0,
        "bundle": rec["bundle"],
        "rootfs": rec.get("rootfs", ""),
        "created": rec.get("created", ""),
        "owner": "",
    }
    if rec.get("annotations"):
        out["annotations"] = rec["annotations"]
    return out
