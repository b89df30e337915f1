"""Layers for ImageStore: unpacking an image's missing ones (layer_paths) concurrently into temp dirs, then into
place; and a base image's layers, as they are, under a new image (add_image with a base)."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.core.errors import IntegrityError, InvalidArgument, NotFound

from ._digestio import LAYER_MEDIA, compression_of
from ._fsutil import atomic_write, fsync_dir, new_temp_name

if TYPE_CHECKING:
    from .store import ImageStore

IMPLICIT_SUFFIX = ".implicit-parents.json"


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def unpack_layers(store: ImageStore, todo: list[tuple[int, str, str]]) -> dict[int, tuple[Path, list[str]]]:
    """Unpack (index, blob digest, diff_id) layers into temp dirs, concurrently: most of an unpack is
    waiting on file creation, which threads overlap. Returns index -> (temp dir, implicit parents)."""
    from . import unpack  # tarfile stays off the path of already unpacked images

    def one(digest: str, diff_id: str) -> tuple[Path, list[str]]:
        blob = store.blobs / hex_of(digest)
        if not blob.is_file():
            raise NotFound(f"blob {digest} not found in the image store")
        tmp = store.layers_dir / new_temp_name()
        try:
            # A layer dir is named by its diff_id and shared: content that does not match must never land.
            return tmp, unpack.unpack_layer_report(blob, tmp, (), expect=(digest, diff_id))
        except InvalidArgument:
            store.verify_blob_file(digest)   # a corrupt blob reads as a broken tar: say which
            raise

    if len(todo) == 1:
        i, digest, diff_id = todo[0]
        return {i: one(digest, diff_id)}
    done: dict[int, tuple[Path, list[str]]] = {}
    errors: list[tuple[int, BaseException]] = []
    with ThreadPoolExecutor(max_workers=min(4, len(todo)), thread_name_prefix="unpack") as pool:
        futures = {i: pool.submit(one, digest, diff_id) for i, digest, diff_id in todo}
        for i, fut in futures.items():
            try:
                done[i] = fut.result()
            except BaseException as exc:  # noqa: B036 - re-raised below, after the others finished
                errors.append((i, exc))
    if errors:
        for tmp, _ in done.values():
            shutil.rmtree(tmp, ignore_errors=True)
        raise errors[0][1]
    return done


def place_layer(store: ImageStore, tmp: Path, dest: Path, implicit: list[str]) -> None:
    sidecar = store.layers_dir / f"{dest.name}{IMPLICIT_SUFFIX}"
    try:
        if implicit:
            atomic_write(sidecar, json.dumps(implicit).encode(), store.tmp)
        os.rename(tmp, dest)
    except OSError:
        # Another process unpacked the same layer first; theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    else:
        fsync_dir(store.layers_dir)


def base_layers(store: ImageStore, base: str) -> tuple[list[dict], list[str]]:
    """The layer descriptors and diff_ids of manifest `base`, whose blobs must all be in `store` (the caller
    holds the store's lock, so they stay)."""
    try:
        manifest = store._check_complete(base)
    except NotFound as exc:
        raise NotFound(f"base image {base}: {exc.message} (was it removed?)") from None
    config = json.loads(store.read_blob(manifest["config"]["digest"]))
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids", []))
    layers = [{**d, "mediaType": _oci_media(store, d)} for d in manifest.get("layers", [])]
    if len(layers) != len(diff_ids):
        raise IntegrityError(f"base image {base}: manifest has {len(layers)} layers but config lists "
                             f"{len(diff_ids)} diff_ids")
    return layers, diff_ids


def _oci_media(store: ImageStore, desc: dict) -> str:
    """A base layer's OCI media type: its own, or (Docker's labels, which tools also put on plain tars, or
    none) the one of what its blob holds."""
    media = desc.get("mediaType")
    if isinstance(media, str) and media.startswith("application/vnd.oci."):
        return media
    with open(store.blobs / hex_of(desc["digest"]), "rb") as f:
        return LAYER_MEDIA[compression_of(f.read(8), f"layer {desc['digest']}")]
