"""The SDK's image calls (mixed into Client)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

from virtkit.client.transport import Transport, path_of
from virtkit.core.errors import DaemonUnavailable, from_dict

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


class ImagesAPI:
    t: Transport

    def images(self) -> list[dict[str, Any]]:
        return self.t.request("GET", "/v1/images")  # type: ignore[no-any-return]

    def image(self, name: str) -> dict[str, Any]:
        """Everything about an image: digest, layers (diff_ids and blobs), size, config, created, arch."""
        return self.t.request("GET", path_of("v1", "images", name))  # type: ignore[no-any-return]

    def build_image(self, kind: str, name: str | None = None, *, release: str | None = None,
                    packages: Sequence[str] | None = None, layers: int | None = None, vm: bool = False,
                    no_cache: bool = False, progress: Callable[[str], None] | None = None,
                    on_fraction: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Build an image (`busybox` or `debian`); `progress` gets the build's progress lines as they come,
        `on_fraction` how far the build has got (0..1) whenever a line marks a milestone."""
        body: dict[str, Any] = {"kind": kind, "name": name}
        if kind == "debian" or release or packages or vm or no_cache or layers:
            body.update(release=release, packages=list(packages or []), layers=layers, vm=vm, no_cache=no_cache)
        buf = b""
        for chunk in self.t.stream("POST", "/v1/images/build", body):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "progress" in msg:
                    if progress is not None:
                        progress(str(msg["progress"]))
                    if on_fraction is not None and isinstance(msg.get("fraction"), int | float):
                        on_fraction(float(msg["fraction"]))
                elif "result" in msg:
                    return msg["result"]  # type: ignore[no-any-return]
                elif "error" in msg:
                    raise from_dict(msg)
        raise DaemonUnavailable("virtkitd ended the build stream without a result")

    def import_image(self, path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
        """Import an OCI image layout (directory or tar), a docker-archive tar or a skopeo `dir:` copy that the
        daemon can read."""
        body = {"path": os.path.abspath(path), "name": name}
        return self.t.request("POST", "/v1/images/import", body)  # type: ignore[no-any-return]

    def export_image(self, name: str, path: str | os.PathLike, format: str = "oci") -> dict[str, Any]:
        """Write image `name` to `path` as an OCI layout tar (`oci`) or a `docker-archive` tar."""
        body = {"name": name, "path": os.path.abspath(path), "format": format}
        return self.t.request("POST", "/v1/images/export", body)  # type: ignore[no-any-return]

    def prune_images(self) -> dict[str, Any]:
        """Remove blobs and unpacked layers no image (and no instance's image) references; what was freed."""
        return self.t.request("POST", "/v1/images/prune")  # type: ignore[no-any-return]

    def remove_image(self, name: str) -> None:
        self.t.request("DELETE", path_of("v1", "images", name))
