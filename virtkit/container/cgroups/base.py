"""The CgroupManager interface and the file helpers both cgroup versions share."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py builds enums at import (~3 ms a start)
import errno
import os
import time

from virtkit.core.errors import InvalidArgument, InvalidState, SystemFailure, Unsupported

# How often state is polled while waiting for the kernel (freeze, emptying before rmdir).
POLL_INTERVAL = 0.005
# How long kill_all tries to freeze a cgroup (so nothing forks away) before it kills without freezing.
KILL_FREEZE_TIMEOUT = 2.0


def normalize_path(path: str) -> str:
    """Turn an OCI cgroupsPath into "/a/b"; relative paths count from the hierarchy root."""
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidArgument(f"linux.cgroupsPath: must name a cgroup below the root (got {path!r})")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise InvalidArgument(f"linux.cgroupsPath: must not contain '..' (got {path!r})")
        if "\0" in part or ":" in part:
            # ":" is how systemd-style paths ("slice:prefix:name") look; virtkit drives cgroupfs itself.
            raise InvalidArgument(f"linux.cgroupsPath: invalid component {part!r} in {path!r}")
    return "/" + "/".join(parts)


def read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def read_int(path: str) -> int | None:
    """Read a one-number cgroup file; "max" (v2) means no limit and gives None, a missing file None."""
    try:
        value = read_text(path).strip()
    except FileNotFoundError:
        return None
    if value in ("", "max"):
        return None
    return int(value)


def read_keyed(path: str) -> dict[str, int]:
    """Parse a flat-keyed file such as memory.events, cpu.stat or memory.oom_control."""
    out: dict[str, int] = {}
    try:
        text = read_text(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def write_file(path: str, value: str | int, *, field: str | None = None) -> None:
    """Write one value into a cgroup control file.

    No O_CREAT: a missing file means the controller is absent, which must not pass silently.
    EINVAL on a user-supplied value (named by `field`) is the user's error, not the system's.
    """
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemFailure(f"cgroup: cannot open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, data)
    except OSError as exc:
        if field is not None and exc.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY):
            raise InvalidArgument(f"{field}: the kernel refused {value!r} ({exc.strerror})") from exc
        raise SystemFailure(f"cgroup: writing {value!r} to {path} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def read_procs(directory: str) -> list[int]:
    """Pids in cgroup.procs of `directory` and every cgroup below it."""
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(directory):
        try:
            text = read_text(os.path.join(dirpath, "cgroup.procs"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        pids.extend(int(x) for x in text.split())
    return pids


def rmdir_tree(directory: str) -> None:
    """Remove a cgroup and any child cgroups made inside it (deepest first); absent is fine."""
    try:
        os.rmdir(directory)         # the usual case, a leaf: one syscall, no walk
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        # cgroupfs says EBUSY for a cgroup with child cgroups (or with tasks: then the walk's rmdir says it again)
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
            raise
    for dirpath, _dirs, _files in os.walk(directory, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass


def remove_virtkit_parents(leaf: str, hierarchy_root: str, created: set[str]) -> None:
    """Remove empty ancestors of `leaf` that virtkit made (created here, or named virtkit*).

    A sibling container may be starting in the same parent at the same moment: EBUSY, ENOENT
    and ENOTEMPTY just mean "someone else still uses it or already removed it".
    """
    parent = os.path.dirname(leaf)
    root = os.path.normpath(hierarchy_root)
    while parent.startswith(root + "/") and parent != root:
        if parent not in created and not os.path.basename(parent).startswith("virtkit"):
            return
        try:
            os.rmdir(parent)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                return
            raise SystemFailure(f"cgroup: cannot remove {parent}: {exc.strerror}") from exc
        parent = os.path.dirname(parent)


class CgroupManager:
    """One container's cgroup, in every hierarchy the host's cgroup version needs.

    Subclasses (v1, v2) implement the hierarchy-specific parts; the lifecycle helpers
    that only need pids() and signals live here.
    """

    version: int = 0

    def __init__(self, path: str, root: str) -> None:
        self.path = normalize_path(path)
        self.root = os.path.normpath(root)
        # Directories this manager made, so destroy() may remove parents it created.
        self._created: set[str] = set()

    # -- hierarchy-specific, implemented by subclasses --
    def create(self) -> None:
        raise NotImplementedError

    def apply(self, resources: dict | None) -> None:
        raise NotImplementedError

    def add_pid(self, pid: int) -> None:
        raise NotImplementedError

    def children(self) -> list[str]:
        """Names of the cgroups right below this one (none when it does not exist)."""
        try:
            with os.scandir(self._first_dir()) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def _first_dir(self) -> str:
        raise NotImplementedError

    def can_adopt(self, made: CgroupManager) -> bool:
        """Whether `adopt(made)` would be tried: a rename is possible here and this one's name is free."""
        return False

    def adopt(self, made: CgroupManager) -> bool:
        """Become `made`, a cgroup of the same parent made ahead of time (a spare's, with its process in it), by
        renaming it to this one's name. False, with nothing changed, where cgroups cannot be renamed (v2 has no
        rename) or the rename fails; the caller then makes this one as usual."""
        return False

    def pids(self) -> list[int]:
        raise NotImplementedError

    def freeze(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        return bool(self.stats()["oom_kills"])

    def exists(self) -> bool:
        raise NotImplementedError

    def v1_paths(self) -> dict[str, str]:
        raise NotImplementedError

    def _rmdir_all(self) -> None:
        raise NotImplementedError

    def _control_path(self, name: str, field: str) -> str:
        """Where control file `name` ("cpu.shares", "cpuset.cpus") of this cgroup is; Unsupported if absent."""
        raise NotImplementedError

    # -- shared --
    def write_controls(self, controls: list[tuple[str, str, str]]) -> None:
        """Write (file, value, user's field) triples, e.g. CPU sharing settings, to an existing cgroup.

        Every file is looked up before the first write, so a missing controller changes nothing; a value the
        kernel refuses is an InvalidArgument naming the user's field.
        """
        paths = [(self._control_path(name, field), value, field) for name, value, field in controls]
        for path, value, field in paths:
            write_file(path, value, field=field)

    def _signal_each(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill_all(self, sig: int) -> None:
        """Signal every process; SIGKILL is sent while frozen so a forking process cannot escape."""
        if sig == signal.SIGKILL and not self.pids():
            return      # empty (nothing joins an empty cgroup by itself): no freeze and thaw for nothing
        if sig == signal.SIGKILL and self._can_freeze():
            try:
                self.freeze(timeout=KILL_FREEZE_TIMEOUT)
            except (OSError, SystemFailure, Unsupported):
                if self.gone():
                    return      # its last process exited and its owner removed it meanwhile: nothing to kill
                # a task asleep in the kernel cannot freeze (e.g. one waiting at its memory limit with the OOM
                # killer disabled); SIGKILL still wakes it, so kill unfrozen rather than not at all
            try:
                self._signal_each(sig)
            finally:
                try:
                    self.thaw()
                except (OSError, SystemFailure, Unsupported):
                    if not self.gone():
                        raise
        else:
            self._signal_each(sig)

    def gone(self) -> bool:
        """True once the cgroup no longer exists. Whoever supervises a container removes its cgroup as soon as
        the last process has exited, so a kill may find the cgroup gone between two of its own steps."""
        return not self.exists()

    def _can_freeze(self) -> bool:
        return False

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self.pids():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)

    def remove_if_empty(self) -> bool:
        """Remove the cgroup if no process is left in it: the usual case once its container exited, done without
        reading a cgroup.procs (a walk of every hierarchy). False when a process is still in it (EBUSY)."""
        try:
            self._rmdir_all()
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
        return True

    def destroy(self, timeout: float = 5.0) -> None:
        """Wait for the cgroup to empty (this kills nothing), then remove it everywhere."""
        if not self.exists():
            return
        if not self.wait_empty(timeout):
            raise InvalidState(
                f"cgroup {self.path}: still has processes {sorted(self.pids())} after {timeout:g}s; "
                "kill them first"
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._rmdir_all()
                return
            except OSError as exc:
                # The kernel may report EBUSY for a moment after the last task left.
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise SystemFailure(f"cgroup {self.path}: cannot remove: {exc.strerror}") from exc
                time.sleep(POLL_INTERVAL)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} v{self.version} {self.path} under {self.root}>"
