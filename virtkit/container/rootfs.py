"""The container's filesystem: root mount, config mounts, /dev, pivot_root, masked and read-only paths.

Runs in stage 2, inside the container's mount namespace. Every mount destination is resolved inside the
rootfs with openat2(RESOLVE_IN_ROOT) (symlinks resolve as if the rootfs were /, so none escapes: the
CVE-2021-30465 class) and the mount targets the resulting O_PATH fd through /proc/self/fd/N.
"""

from __future__ import annotations

import errno
import os
import stat

from virtkit.container import fastjson
from virtkit.container import syscalls as sc
from virtkit.container.devices import DEFAULT_DEVICES
from virtkit.core.errors import InvalidArgument, SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from collections.abc import Callable
    from typing import Any

    from virtkit.container.premount import Premade

OVERLAY_ANNOTATION = "org.virtkit.rootfs.overlay"
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS

_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY), "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID), "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV), "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC), "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS), "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC), "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK), "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME), "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME), "nodiratime": (False, sc.MS_NODIRATIME),
    "relatime": (False, sc.MS_RELATIME), "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME), "nostrictatime": (True, sc.MS_STRICTATIME),
    "bind": (False, sc.MS_BIND), "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW), "lazytime": (False, sc.MS_LAZYTIME),
}
PROPAGATION: dict[str, int] = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# mount flags a remount must repeat, or the kernel refuses it inside a user namespace ("locked" flags)
_KEEP = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME | sc.MS_NODIRATIME | sc.MS_RELATIME

_DEV_LINKS = [("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
              ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx")]


def parse_options(options: list[str]) -> tuple[int, list[int], str]:
    """(mount flags, propagation flags to apply afterwards, filesystem data string)."""
    flags, prop, data = 0, [], []
    for opt in options:
        if opt in _FLAGS:
            clear, bit = _FLAGS[opt]
            flags = flags & ~bit if clear else flags | bit
        elif opt in PROPAGATION:
            prop.append(PROPAGATION[opt])
        elif opt in ("idmap", "ridmap", "tmpcopyup", "copy-symlink", "rro"):
            raise InvalidArgument(f"mount option {opt!r}: not supported by virtkit-runtime")
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


def _mount_flags(path: str) -> int:
    return os.statvfs(path).f_flag & _KEEP


def open_in_root(root_fd: int, path: str, *, create: str | None = None) -> int:
    """O_PATH fd of `path` resolved inside root_fd; missing parts are made inside it ("dir" or "file")."""
    rel = path.strip("/") or "."
    for _ in range(40):
        try:
            return sc.openat2(root_fd, rel, os.O_PATH, resolve=_RESOLVE)
        except OSError as exc:
            if exc.errno != errno.ENOENT or create is None:
                raise SystemFailure(f"resolve {path} in rootfs: {exc.strerror}") from exc
        rel = _create_missing(root_fd, rel, create, path)
    raise SystemFailure(f"resolve {path} in rootfs: too many levels of symbolic links")


def _create_missing(root_fd: int, rel: str, create: str, orig: str) -> str:
    """Make the first missing component of rel; a dangling symlink gives back the path it points to."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        prefix = "/".join(parts[: i + 1])
        try:
            os.close(sc.openat2(root_fd, prefix, os.O_PATH, resolve=_RESOLVE))
            continue
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise SystemFailure(f"resolve {orig} in rootfs: {exc.strerror}") from exc
        parent = sc.openat2(root_fd, "/".join(parts[:i]) or ".", os.O_PATH | os.O_DIRECTORY, resolve=_RESOLVE)
        try:
            try:
                target = os.readlink(part, dir_fd=parent)
            except OSError:
                target = None
            if target is not None:
                # a dangling symlink: continue at its target, still interpreted inside the rootfs
                base = "" if target.startswith("/") else "/".join(parts[:i])
                rest = "/".join(parts[i + 1:])
                return "/".join(x for x in (base, target.strip("/"), rest) if x) or "."
            last = i == len(parts) - 1
            if last and create == "file":
                os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
            else:
                os.mkdir(part, 0o755, dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise SystemFailure(f"create {orig} in rootfs: {exc.strerror}") from exc
        finally:
            os.close(parent)
        return rel
    return rel


def _at(root_fd: int, dest: str, create: str | None, fn: Any) -> None:
    fd = open_in_root(root_fd, dest, create=create)
    try:
        fn(sc.fd_path(fd))
    finally:
        os.close(fd)


def setup_root(spec: dict, rootfs: str) -> None:
    """Set "/" propagation (so nothing leaks to the host) and mount the container's root on rootfs."""
    prop = spec.get("linux", {}).get("rootfsPropagation") or "rslave"
    base = PROPAGATION["rprivate"] if prop in ("private", "rprivate") else PROPAGATION["rslave"]
    sc.mount(None, "/", None, base)
    overlay = (spec.get("annotations") or {}).get(OVERLAY_ANNOTATION)
    if overlay:
        data, workdir, volatile = _overlay_data(overlay)
        if volatile:
            _forget_volatile_use(workdir)
        sc.mount("overlay", rootfs, "overlay", 0, data, label="root.path")
    else:
        sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC, label="root.path")


def _overlay_data(value: str) -> tuple[str, str, bool]:
    """(overlayfs mount data, workdir, whether volatile) from the annotation."""
    try:
        cfg = fastjson.loads(value)
        lower, upper, work = cfg["lowerdir"], cfg["upperdir"], cfg["workdir"]
        volatile = cfg.get("volatile", False)
        assert isinstance(lower, list) and lower and all(isinstance(x, str) for x in lower)
        assert isinstance(upper, str) and isinstance(work, str) and isinstance(volatile, bool)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise InvalidArgument(f"annotations.{OVERLAY_ANNOTATION}: want JSON "
                              '{"lowerdir": [dirs], "upperdir": dir, "workdir": dir, "volatile": bool}') from None
    for d in [*lower, upper, work]:
        if not d.startswith("/") or any(c in d for c in ",:\n"):
            raise InvalidArgument(f"annotations.{OVERLAY_ANNOTATION}: bad directory {d!r}")
    data = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
    return (data + ",volatile" if volatile else data), work, volatile


def _forget_volatile_use(workdir: str) -> None:
    """A volatile overlay leaves work/incompat/volatile behind, and overlayfs refuses the upper dir again while it
    is there (after a crash the upper dir may have lost writes). The instance is started again on purpose (a
    restart): its upper dir is taken as it is, as after any unclean stop."""
    incompat = os.path.join(workdir, "work", "incompat")
    for path in (os.path.join(incompat, "volatile", "dirty"), os.path.join(incompat, "volatile"), incompat):
        try:
            (os.unlink if path.endswith("dirty") else os.rmdir)(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SystemFailure(f"root.path: cannot clear {path} of an earlier volatile mount: {exc.strerror}") \
                from exc


def mount_all(spec: dict, rootfs: str, bundle: str, ctx: dict[str, bool], premade: Premade | None = None) -> None:
    """Config mounts in order, then devices; ctx has userns, netns, cgroupns (new namespaces made). A mount that
    `premade` holds (a spare's: container/premount.py) is moved into place instead of mounted."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev_tmpfs = dev_ready = False
        for m in spec.get("mounts", []):
            placed = premade is not None and premade.place(root_fd, m)
            if not placed:
                _mount_one(root_fd, m, bundle, ctx)
            if os.path.normpath(m["destination"]) == "/dev" and m.get("type") not in ("bind", "none", None):
                dev_tmpfs, dev_ready = True, placed     # a premade /dev has its nodes and links already
        devices = [] if dev_ready else list(DEFAULT_DEVICES)
        for d in devices + list(spec.get("linux", {}).get("devices") or []):
            _make_device(root_fd, d, ctx["userns"])
        if dev_tmpfs and not dev_ready:
            dev_fd = open_in_root(root_fd, "/dev", create="dir")
            try:
                dev_links(dev_fd)
            finally:
                os.close(dev_fd)
    finally:
        os.close(root_fd)


def dev_links(dev_fd: int) -> None:
    """/dev's symlinks (fd, stdin, stdout, stderr, ptmx) in the directory dev_fd."""
    for target, name in _DEV_LINKS:
        try:
            os.symlink(target, name, dir_fd=dev_fd)
        except FileExistsError:
            pass


def _make_device(root_fd: int, d: dict, userns: bool) -> None:
    path = d["path"]
    parent = open_in_root(root_fd, os.path.dirname(path), create="dir")
    try:
        make_node(parent, os.path.basename(path), d, userns)
    finally:
        os.close(parent)


def make_node(parent: int, name: str, d: dict, userns: bool) -> None:
    """The device `d` (a linux.devices entry) as `name` in the directory `parent` (an fd), in place of what is
    there."""
    path = d["path"]
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type", "c"))
    if kind is None:
        raise InvalidArgument(f"linux.devices: {path}: unknown type {d.get('type')!r}")
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise SystemFailure(f"create device {path}: a directory is in the way") from None
    if userns:
        # mknod is refused in a user namespace: bind the host's node over an empty file instead
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=parent))
        fd = sc.openat2(parent, name, os.O_PATH, resolve=_RESOLVE)
        try:
            sc.mount(path, sc.fd_path(fd), None, sc.MS_BIND, label=path)
        finally:
            os.close(fd)
        return
    mode = d.get("fileMode", 0o666) & 0o7777
    sc.mknod(name, kind | mode, d.get("major", 0), d.get("minor", 0), dir_fd=parent)
    os.chown(name, d.get("uid", 0), d.get("gid", 0), dir_fd=parent, follow_symlinks=False)


def _mount_one(root_fd: int, m: dict, bundle: str, ctx: dict[str, bool]) -> None:
    dest = m["destination"]
    opts = list(m.get("options") or [])
    typ = m.get("type") or ""
    flags, prop, data = parse_options(opts)
    source = m.get("source") or typ or "none"
    if typ == "bind" or flags & sc.MS_BIND:
        _bind(root_fd, m, bundle, flags | sc.MS_BIND, prop)
        return
    if typ == "cgroup":
        _mount_cgroup(root_fd, dest, flags, ctx)
    elif typ == "sysfs" and not ctx["netns"]:
        # without its own network namespace the container may not see a writable sysfs (runc does the same)
        _at(root_fd, dest, "dir", lambda p: sc.mount("sysfs", p, "sysfs", flags | sc.MS_RDONLY, data or None,
                                                      label=dest))
    else:
        try:
            _at(root_fd, dest, "dir", lambda p: sc.mount(source, p, typ, flags, data or None, label=dest))
        except SystemFailure:
            # a user namespace may not mount these without owning the matching namespace: bind the host's
            if typ == "sysfs" and ctx["userns"]:
                _bind(root_fd, {"destination": dest, "source": "/sys"}, bundle,
                      flags | sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY, [])
            elif typ == "mqueue" and ctx["userns"]:
                _bind(root_fd, {"destination": dest, "source": "/dev/mqueue"}, bundle, flags | sc.MS_BIND, [])
            else:
                raise
    _propagate(root_fd, dest, prop)


def _remount(path: str, flags: int) -> None:
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | flags | _mount_flags(path), label=path)


def _propagate(root_fd: int, dest: str, prop: list[int]) -> None:
    for pf in prop:
        _at(root_fd, dest, None, lambda p, pf=pf: sc.mount(None, p, None, pf, label=dest))


def _bind(root_fd: int, m: dict, bundle: str, flags: int, prop: list[int]) -> None:
    dest = m["destination"]
    src = m.get("source") or ""
    if not src:
        raise InvalidArgument(f"mount {dest}: a bind mount needs a source")
    if not src.startswith("/"):
        src = os.path.join(bundle, src)
    try:
        is_dir = stat.S_ISDIR(os.stat(src).st_mode)
    except OSError as exc:
        raise SystemFailure(f"mount {src} on {dest}: {exc.strerror}") from exc
    _at(root_fd, dest, "dir" if is_dir else "file",
        lambda p: sc.mount(src, p, None, sc.MS_BIND | (flags & sc.MS_REC), label=dest))
    extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
    if extra:
        _at(root_fd, dest, None, lambda p: _remount(p, extra))
    _propagate(root_fd, dest, prop)


def _opener_in(dir_fd: int, name: str) -> Callable[[], int]:
    """Opens `name` in dir_fd, a directory of our own (a tmpfs we mounted): nothing to resolve."""
    return lambda: os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _mount_cgroup(root_fd: int, dest: str, flags: int, ctx: dict[str, bool]) -> None:
    """A tmpfs with one entry per host hierarchy: fresh cgroupfs in a cgroup namespace, else a bind of
    this container's own cgroup; always read-only."""
    flags |= sc.MS_RDONLY
    hier = cgroup_hierarchies()
    own = {} if ctx["cgroupns"] else _own_cgroups()
    if len(hier) == 1 and hier[0][1] == "cgroup2" and hier[0][0] == "/sys/fs/cgroup":
        _cgroup_fs(lambda: open_in_root(root_fd, dest, create="dir"), dest, "cgroup2", "", own.get(""), flags, ctx,
                   "/sys/fs/cgroup")
        return
    _at(root_fd, dest, "dir", lambda p: sc.mount("tmpfs", p, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                                                 "mode=755", label=dest))
    # the tmpfs is new and only we write to it: its entries are made and opened by fd, no path resolution (the
    # rootfs's own symlinks cannot reach in); ~0.5 ms less than resolving each one inside the rootfs
    tmp = open_in_root(root_fd, dest)
    try:
        for mnt, fstype, opts in hier:
            name = os.path.basename(mnt)
            os.mkdir(name, 0o755, dir_fd=tmp)
            _cgroup_fs(_opener_in(tmp, name), f"{dest}/{name}", fstype, opts,
                       own.get("" if fstype == "cgroup2" else opts), flags, ctx, mnt)
        _remount(sc.fd_path(tmp), sc.MS_RDONLY)
    finally:
        os.close(tmp)


def _cgroup_fs(opener: Callable[[], int], dest: str, fstype: str, opts: str, own: str | None, flags: int,
               ctx: dict[str, bool], host_mnt: str) -> None:
    """A cgroup hierarchy on the directory `opener()` gives (an O_PATH fd, resolved anew at each call: after a
    mount it enters what is mounted there; `dest` names it in errors): a fresh cgroupfs in a cgroup namespace
    (where the kernel allows it), else a read-only bind of the host's (of this process's own cgroup in it
    without a cgroup namespace)."""
    fd = opener()
    try:
        if ctx["cgroupns"]:
            try:
                sc.mount("cgroup", sc.fd_path(fd), fstype, flags, opts or None, label=dest)
                return
            except SystemFailure:
                if not ctx["userns"]:
                    raise
        src = host_mnt + (own if own and own != "/" and not ctx["cgroupns"] else "")
        sc.mount(src, sc.fd_path(fd), None, sc.MS_BIND | sc.MS_REC, label=dest)
    finally:
        os.close(fd)
    fd = opener()
    try:
        _remount(sc.fd_path(fd), flags)
    finally:
        os.close(fd)


_HIERARCHIES: list[tuple[str, str, str]] | None = None


def learn_cgroup_hierarchies() -> None:
    """Read the host's cgroup mounts now, for a mount of /sys/fs/cgroup later in this process (a spare reads them
    while it waits: they change only if the host remounts its cgroup hierarchies)."""
    global _HIERARCHIES
    _HIERARCHIES = _read_cgroup_hierarchies()


def cgroup_hierarchies() -> list[tuple[str, str, str]]:
    return _HIERARCHIES if _HIERARCHIES is not None else _read_cgroup_hierarchies()


def _read_cgroup_hierarchies() -> list[tuple[str, str, str]]:
    """(mount point, fs type, controller options) of the cgroup mounts under /sys/fs/cgroup."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, pf = pre.split(), post.split()
            if pf[0] not in ("cgroup", "cgroup2") or not fields[4].startswith("/sys/fs/cgroup/"):
                continue
            ctrl = ",".join(o for o in pf[2].split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev",
                                                                     "noexec") and not o.startswith("clone_"))
            out.append((fields[4], pf[0], ctrl))
    if not out:
        out.append(("/sys/fs/cgroup", "cgroup2", ""))
    return out


def _own_cgroups() -> dict[str, str]:
    """controller list (as in mount options; "" for v2) -> this process's cgroup path."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            out[ctrl] = path
    return out


def pivot(rootfs: str, no_pivot: bool) -> None:
    """Make rootfs the root; the old root is detached, so no host path stays reachable."""
    if no_pivot:
        os.chdir(rootfs)
        sc.mount(rootfs, "/", None, sc.MS_MOVE, label="/")
        os.chroot(".")
        os.chdir("/")
        return
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        sc.pivot_root(".", ".")
        os.fchdir(old)
        # the old root must not propagate its unmount to the host
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, label="old root")
        sc.umount2(".", sc.MNT_DETACH)
    finally:
        os.close(old)
        os.close(new)
    os.chdir("/")


def finalize(spec: dict) -> None:
    """After pivot_root: sysctls, read-only paths, masked paths, read-only root, root propagation."""
    linux = spec.get("linux", {})
    for key, value in (linux.get("sysctl") or {}).items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise SystemFailure(f"linux.sysctl {key}={value}: {exc.strerror}") from exc
    for p in linux.get("readonlyPaths") or []:
        if not os.path.lexists(p):
            continue
        sc.mount(p, p, None, sc.MS_BIND | sc.MS_REC, label=p)
        _remount(p, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for p in linux.get("maskedPaths") or []:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", p, "tmpfs", sc.MS_RDONLY, None, label=p)
        else:
            sc.mount("/dev/null", p, None, sc.MS_BIND, label=p)
    if spec.get("root", {}).get("readonly"):
        _remount("/", sc.MS_RDONLY)
    prop = linux.get("rootfsPropagation")
    if prop and prop in PROPAGATION:
        sc.mount(None, "/", None, PROPAGATION[prop], label="/")
