"""Shared by storage tests: build an overlay-like upper dir, describe a tree, and probe for leaks."""

from __future__ import annotations

import hashlib
import os
import stat


def make_upper(root: str, big: int = 3 << 20) -> None:
    """Files, a hardlink pair, a symlink, a whiteout, an opaque dir, xattrs, set-id bits, odd owners, a sparse file."""
    os.makedirs(os.path.join(root, "etc/app"))
    os.makedirs(os.path.join(root, "opq/sub"))
    with open(os.path.join(root, "etc/app/conf"), "w") as f:
        f.write("key=value\n")
    os.chown(os.path.join(root, "etc/app/conf"), 1000, 1001)
    os.chmod(os.path.join(root, "etc/app/conf"), 0o4750)
    os.setxattr(os.path.join(root, "etc/app/conf"), "user.note", b"hello")
    os.link(os.path.join(root, "etc/app/conf"), os.path.join(root, "etc/hardlink"))
    os.symlink("app/conf", os.path.join(root, "etc/link"))
    os.lchown(os.path.join(root, "etc/link"), 7, 8)
    os.mknod(os.path.join(root, "etc/deleted"), stat.S_IFCHR | 0o000, 0)        # overlayfs whiteout
    os.setxattr(os.path.join(root, "opq"), "trusted.overlay.opaque", b"y")
    with open(os.path.join(root, "opq/sub/new"), "wb") as f:
        f.write(b"n" * 100)
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(os.urandom(big))
    with open(os.path.join(root, "sparse"), "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"middle")
    os.mkfifo(os.path.join(root, "fifo"))
    os.utime(os.path.join(root, "etc/app"), ns=(1_000_000_000, 978_307_200_000_000_000))
    os.utime(os.path.join(root, "etc/link"), ns=(1, 2), follow_symlinks=False)


def describe(root: str, *, times: bool = True) -> dict[str, tuple]:
    """Everything a faithful copy keeps, per relative path (hardlinks as groups of paths)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            inodes.setdefault(st.st_ino, []).append(rel)
            try:
                xattrs = tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                      for n in os.listxattr(p, follow_symlinks=False)))
            except OSError:
                xattrs = ()
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_rdev, xattrs, content,
                        st.st_mtime_ns if times else None)
    links = sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1)
    out["<hardlinks>"] = tuple(links)
    return out


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if path in line]


def loops_on(path: str) -> list[str]:
    """Loop devices whose backing file lies under `path` (what `losetup -a` would list)."""
    found = []
    for entry in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{entry}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.startswith(path):
            found.append(f"/dev/{entry}: {backing}")
    return found


def leftovers(root: str) -> list[str]:
    """Temp files of half-made volumes or snapshots under `root`."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirs + files if n.startswith(".tmp-")]
    return out
