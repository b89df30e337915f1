"""The SDK's image calls (mixed into Client)."""

from __future__ import annotations

from typing import Any

from virtkit.client.transport import Transport, path_of


class ImagesAPI:
    t: Transport

    def images(self) -> list[dict[str, Any]]:
        return self.t.request("GET", "/v1/images")  # type: ignore[no-any-return]

    def image(self, name: str) -> dict[str, Any]:
        return self.t.request("GET", path_of("v1", "images", name))  # type: ignore[no-any-return]

    def build_image(self, kind: str, name: str | None = None) -> dict[str, Any]:
        return self.t.request("POST", "/v1/images/build", {"kind": kind, "name": name})  # type: ignore[no-any-return]

    def remove_image(self, name: str) -> None:
        self.t.request("DELETE", path_of("v1", "images", name))
