"""An overlay upper dir as an OCI layer tar: whiteout devices become `.wh.NAME`, opaque dirs `.wh..wh..opq`.

Entries are written in sorted order with owners as numbers only (no host user names), so the same
changes give the same tar.
"""

from __future__ import annotations

import os
import stat
import tarfile

from virtkit.core.errors import SystemFailure, Unsupported

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_PRIVATE = "trusted.overlay."
# what overlayfs writes only with redirect_dir / metacopy on: a tar layer cannot say it
_UNREPRESENTABLE = ("trusted.overlay.redirect", "trusted.overlay.metacopy")


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def write_layer(upper: str, tar_path: str) -> None:
    """Write the changes in `upper` as an uncompressed OCI layer tar at `tar_path`."""
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
            _add_tree(tf, upper, "")
    except OSError as exc:
        raise SystemFailure(f"writing layer from {upper}: {exc.filename or ''} {exc.strerror}") from exc


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _add_tree(tf: tarfile.TarFile, root: str, rel: str) -> None:
    directory = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        arc = f"{rel}/{name}" if rel else name
        st = os.lstat(path)
        if is_whiteout(st):
            ti = tarfile.TarInfo(f"{rel}/{WHITEOUT_PREFIX}{name}" if rel else WHITEOUT_PREFIX + name)
            ti.mtime = int(st.st_mtime)
            ti.mode = 0o600
            tf.addfile(ti)
            continue
        if stat.S_ISSOCK(st.st_mode):
            continue                    # a socket is not content (tar cannot carry one either)
        xattrs = _xattrs(path)
        for key in _UNREPRESENTABLE:
            if key in xattrs:
                raise Unsupported(f"layer: {arc!r} carries {key} (overlayfs redirect_dir/metacopy), "
                                  "which an OCI layer cannot express")
        ti = tf.gettarinfo(path, arc)
        ti.uname = ti.gname = ""
        pax = {"SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape")
               for key, value in xattrs.items() if not key.startswith(_OVERLAY_PRIVATE)}
        if pax:
            ti.pax_headers = pax
        if ti.isreg():
            with open(path, "rb") as f:
                tf.addfile(ti, f)
        else:
            tf.addfile(ti)
        if stat.S_ISDIR(st.st_mode):
            if xattrs.get(OPAQUE_XATTR) == b"y":
                marker = tarfile.TarInfo(f"{arc}/{OPAQUE_MARKER}")
                marker.mtime = int(st.st_mtime)
                marker.mode = 0o600
                tf.addfile(marker)
            _add_tree(tf, root, arc)
