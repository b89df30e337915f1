"""Where snapshots live: `<root>/<instance-id>/<name>/` holds a copy of the instance's upper dir.

A snapshot is copied under `<root>/<instance-id>/.tmp-<name>-*` and renamed into place, so a crash
never leaves a half snapshot under a real name.
"""

from __future__ import annotations

import os
import secrets
import shutil


class SnapshotFiles:
    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, instance_id: str, name: str) -> str:
        return os.path.join(self.root, instance_id, name)

    def temp_path(self, instance_id: str, name: str) -> str:
        parent = os.path.join(self.root, instance_id)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        return os.path.join(parent, f".tmp-{name}-{secrets.token_hex(4)}")

    def commit(self, temp: str, instance_id: str, name: str) -> None:
        os.rename(temp, self.path(instance_id, name))

    def discard(self, path: str) -> None:
        if os.path.lexists(path):
            trash = os.path.join(os.path.dirname(path), f".tmp-rm-{secrets.token_hex(4)}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self, instance_id: str, name: str) -> None:
        self.discard(self.path(instance_id, name))

    def remove_all(self, instance_id: str) -> None:
        shutil.rmtree(os.path.join(self.root, instance_id), ignore_errors=True)

    def cleanup(self, known: set[tuple[str, str]], instance_ids: set[str]) -> list[str]:
        """Drop temp leftovers and snapshot dirs the store does not know (their instance is gone)."""
        removed: list[str] = []
        try:
            iids = os.listdir(self.root)
        except FileNotFoundError:
            return removed
        for iid in iids:
            idir = os.path.join(self.root, iid)
            if iid not in instance_ids:
                shutil.rmtree(idir, ignore_errors=True)
                removed.append(iid)
                continue
            for name in os.listdir(idir):
                if (iid, name) not in known:
                    shutil.rmtree(os.path.join(idir, name), ignore_errors=True)
                    removed.append(f"{iid}/{name}")
        return removed
