"""Volume files on the host: `<root>/<name>/data` is what instances mount.

A `dir` volume is that directory. An `ext4` volume is `<root>/<name>/disk.ext4` (sparse, a real quota:
writes past its size fail with ENOSPC), mounted on `data` through an autoclear loop device while an
instance refers to it. A volume is built under `<root>/.tmp-*` and renamed into place, so a crash
never leaves a half volume under a real name; `cleanup` removes such leftovers. Files under a real name
that the store does not know are never deleted or overwritten implicitly: they may be a user's data.
"""

from __future__ import annotations

import os
import secrets
import shutil

from virtkit.core.errors import InvalidArgument, SystemFailure
from virtkit.storage import ext4, mounts

DRIVERS = ("dir", "ext4")
IMAGE_NAME = "disk.ext4"


class VolumeFiles:
    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def data_path(self, name: str) -> str:
        return os.path.join(self.root, name, "data")

    def image_path(self, name: str) -> str:
        return os.path.join(self.root, name, IMAGE_NAME)

    # -- create / remove ------------------------------------------------------------------------------
    def create(self, name: str, driver: str, size: int | None) -> None:
        if driver not in DRIVERS:
            raise InvalidArgument(f"driver: unknown volume driver {driver!r} (known: {', '.join(DRIVERS)})")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        final = self.dir(name)
        if os.path.lexists(final):
            # files the store has no record of (a crash between the two, or a lost database): never
            # overwrite data we cannot account for
            raise SystemFailure(f"volume '{name}': {final} exists but no volume of that name is recorded; "
                                "move it away (or delete it) and try again")
        tmp = os.path.join(self.root, f".tmp-{name}-{secrets.token_hex(4)}")
        try:
            os.makedirs(os.path.join(tmp, "data"), mode=0o755)
            if driver == "ext4":
                assert size is not None
                ext4.make_image(os.path.join(tmp, IMAGE_NAME), size)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self, name: str) -> None:
        """Unmount if mounted, then delete the volume's files."""
        self.unmount(name)
        path = self.dir(name)
        if not os.path.lexists(path):
            return
        trash = os.path.join(self.root, f".tmp-rm-{name}-{secrets.token_hex(4)}")
        os.rename(path, trash)                  # gone from its name at once; deleting may take a while
        shutil.rmtree(trash, ignore_errors=True)

    # -- mounting (ext4) ------------------------------------------------------------------------------
    def is_mounted(self, name: str) -> bool:
        return mounts.is_mounted(self.data_path(name))

    def mount(self, name: str) -> None:
        if self.is_mounted(name):
            return
        image = self.image_path(name)
        if not os.path.exists(image):
            raise SystemFailure(f"volume '{name}': its disk image {image} is missing")
        ext4.mount_image(image, self.data_path(name))

    def unmount(self, name: str) -> None:
        image = self.image_path(name)
        if os.path.exists(image) or self.is_mounted(name):
            ext4.unmount_image(image, self.data_path(name))

    # -- facts ----------------------------------------------------------------------------------------
    def usage(self, name: str, driver: str) -> int | None:
        """Bytes the volume holds: used blocks of a mounted ext4, else the allocated size of its files."""
        if driver == "ext4" and self.is_mounted(name):
            st = os.statvfs(self.data_path(name))
            return (st.f_blocks - st.f_bfree) * st.f_frsize
        if driver == "ext4":
            try:
                return os.stat(self.image_path(name)).st_blocks * 512
            except FileNotFoundError:
                return None
        total = 0
        for dirpath, _dirs, files in os.walk(self.data_path(name)):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def cleanup(self, known: set[str]) -> tuple[list[str], list[str]]:
        """Remove leftovers of interrupted creates and removes (`.tmp-*`); returns them, and the volume
        dirs the store does not know, which are kept: they may hold data."""
        removed, unknown = [], []
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return [], []
        for entry in entries:
            if entry in known:
                continue
            path = os.path.join(self.root, entry)
            if not entry.startswith(".tmp-"):
                unknown.append(path)
                continue
            data = os.path.join(path, "data")
            if mounts.is_mounted(data):
                ext4.unmount_image(os.path.join(path, IMAGE_NAME), data)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed, unknown
