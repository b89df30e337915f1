"""The SDK's snapshot and publish calls (mixed into Client)."""

from __future__ import annotations

from virtkit.client.transport import Transport, path_of

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


class SnapshotsAPI:
    t: Transport

    def snapshot(self, instance: str, name: str) -> dict[str, Any]:
        """Snapshot an instance's changes (a running one is frozen for the copy)."""
        return self.t.request("POST", path_of("v1", "instances", instance, "snapshots"),  # type: ignore[no-any-return]
                              {"name": name})

    def snapshots(self, instance: str) -> list[dict[str, Any]]:
        return self.t.request("GET", path_of("v1", "instances", instance, "snapshots"))  # type: ignore[no-any-return]

    def restore(self, instance: str, name: str) -> dict[str, Any]:
        """Put a snapshot's changes back (the instance must be stopped)."""
        return self.t.request("POST", path_of("v1", "instances", instance, "snapshots", name,  # type: ignore[no-any-return]
                                              "restore"))

    def remove_snapshot(self, instance: str, name: str) -> None:
        self.t.request("DELETE", path_of("v1", "instances", instance, "snapshots", name))

    def publish(self, instance: str, image: str) -> dict[str, Any]:
        """The instance's changes as a new layer on its image, stored as image `image`."""
        return self.t.request("POST", path_of("v1", "instances", instance, "publish"),  # type: ignore[no-any-return]
                              {"image": image})
