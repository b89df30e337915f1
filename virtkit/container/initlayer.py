"""The init layer: a read-only overlay layer, shared by every container of a home, that holds the files virtkit
mounts over in every container (/etc/hosts, /etc/hostname) as empty placeholders (Docker's "-init" layer).

Why: an image without them (busybox has none) would otherwise have each made in the container's writable layer
on every start: a copy-up of /etc and two files created on the host's disk before the bind mounts can land
(~0.3 ms of a start here), then deleted with the container; and a published instance would carry the empty
placeholders as changes of its own. As the top lower layer they are simply there, in every container, unchanged;
what an image has at those paths is hidden, as the mounts hide it anyway. (/etc/resolv.conf is mounted only with
a network: an image's own stays visible without one.)

The layer is made once, complete, under a temporary name and renamed into place; it is never changed after (a
lower layer must not change under a mounted overlay). An image whose /etc is not a directory (a symlink, say)
goes without it: the placeholders would hide the image's /etc; its containers make them as before.
"""

from __future__ import annotations

import os
import stat

PLACEHOLDERS = ("etc/hosts", "etc/hostname")
NAME = "init-layer-1"     # another set of placeholders gets another name: a layer in use never changes


def ensure(path: str) -> str:
    """The init layer at `path`, made now if it is not there yet."""
    if os.path.isdir(path):
        return path
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(tmp, mode=0o755)
    try:
        for name in PLACEHOLDERS:
            os.makedirs(os.path.join(tmp, os.path.dirname(name)), mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(tmp, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            os.close(fd)
        os.chmod(os.path.join(tmp, "etc"), 0o755)
        try:
            os.rename(tmp, path)
        except OSError:     # another process made it first: theirs is the same
            if not os.path.isdir(path):
                raise
    finally:
        if os.path.isdir(tmp):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path


def fits(lowerdirs: list[str]) -> bool:
    """Whether the image of these layers (top-most first, as overlayfs takes them) has /etc as a directory, or
    none at all: then the init layer's /etc merges with it (or is its /etc) and hides nothing but placeholders."""
    for layer in lowerdirs:
        try:
            st = os.lstat(os.path.join(layer, "etc"))
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            return True
        # a whiteout (a 0/0 character device) removed it: no /etc below, the init layer's is the image's
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    return True
