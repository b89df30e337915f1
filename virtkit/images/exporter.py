"""Export of an image to a file: an OCI image layout tar (blobs as stored: re-import gives the same digests) or a
docker-archive tar (`podman load`/`docker load`: uncompressed layers named by diff_id, the config as stored).

The archive is deterministic (sorted entries, owner 0:0, mtime 0) and written under a temp name beside the
destination, renamed into place only when complete; every blob is verified as it is copied.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import IO, Any

from virtkit.core.errors import IntegrityError, InvalidArgument, SystemFailure

from ._digestio import LayerReader
from ._fsutil import new_temp_name
from .store import REF_ANNOTATION, ImageStore

__all__ = ["FORMATS", "export_image"]

FORMATS = ("oci", "docker-archive")
_CHUNK = 1 << 20


def export_image(store: ImageStore, name: str, dest: str | os.PathLike, fmt: str = "oci") -> dict[str, Any]:
    if fmt not in FORMATS:
        raise InvalidArgument(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    info = store.get(name)
    dest = Path(dest)
    if dest.is_dir():
        raise InvalidArgument(f"path: {dest} is a directory; give a file name for the archive")
    if not dest.parent.is_dir():
        raise InvalidArgument(f"path: {dest.parent} does not exist")
    manifest = json.loads(store.read_blob(info.digest))
    tmp = dest.parent / f".{dest.name}{new_temp_name()}"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            if fmt == "oci":
                _write_oci(store, tf, info.name, info.digest, manifest, info.config)
            else:
                _write_docker(store, tf, info.name, manifest, info.layers)
        os.rename(tmp, dest)
    except OSError as exc:
        raise SystemFailure(f"export to {dest}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": info.name, "digest": info.digest, "path": str(dest), "format": fmt,
            "size": dest.stat().st_size}


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.size = size
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    return ti


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_info(name, len(data)), io.BytesIO(data))


class _Verifying:
    """Hashes what tarfile copies out of a blob file, so the copy itself proves the blob intact."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _add_blob(store: ImageStore, tf: tarfile.TarFile, name: str, digest: str) -> None:
    path = store.blobs / digest.removeprefix("sha256:")
    with open(path, "rb") as f:
        v = _Verifying(f)
        tf.addfile(_info(name, os.fstat(f.fileno()).st_size), v)  # type: ignore[arg-type]
    if "sha256:" + v.h.hexdigest() != digest:
        raise IntegrityError(f"blob {digest} is corrupt: its content hashes to sha256:{v.h.hexdigest()}")


def _write_oci(store: ImageStore, tf: tarfile.TarFile, ref: str, digest: str, manifest: dict, config: dict) -> None:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
                            "digest": digest, "size": len(store.read_blob(digest)),
                            "platform": {"architecture": config.get("architecture", "amd64"),
                                         "os": config.get("os", "linux")},
                            "annotations": {REF_ANNOTATION: ref}}]}
    tf.addfile(_info("blobs", directory=True))
    tf.addfile(_info("blobs/sha256", directory=True))
    digests = sorted({digest, manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])})
    for d in digests:
        _add_blob(store, tf, f"blobs/sha256/{d[7:]}", d)
    _add_bytes(tf, "index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def _write_docker(store: ImageStore, tf: tarfile.TarFile, ref: str, manifest: dict, diff_ids: list[str]) -> None:
    cfg_digest = manifest["config"]["digest"]
    cfg_name = f"{cfg_digest[7:]}.json"
    _add_blob(store, tf, cfg_name, cfg_digest)
    names = []
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        lname = f"{diff_id[7:]}.tar"
        if lname not in names:
            _add_plain_layer(store, tf, lname, layer["digest"], diff_id)
        names.append(lname)
    repo, _, tag = ref.rpartition(":")
    _add_bytes(tf, "manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": names}]).encode())
    _add_bytes(tf, "repositories", json.dumps({repo: {tag: cfg_digest[7:]}}).encode())


def _add_plain_layer(store: ImageStore, tf: tarfile.TarFile, name: str, digest: str, diff_id: str) -> None:
    """A layer as an uncompressed tar: decompressed (and verified) into a temp file first, for its size."""
    blob = store.blobs / digest.removeprefix("sha256:")
    tmp = store.tmp / new_temp_name()
    try:
        with LayerReader(blob, what=f"layer {digest}") as reader, open(tmp, "wb") as out:
            while chunk := reader.read(_CHUNK):
                out.write(chunk)
            reader.drain()
        if reader.digest != digest:
            raise IntegrityError(f"blob {digest} is corrupt: its content hashes to {reader.digest}")
        if reader.diff_id != diff_id:
            raise IntegrityError(f"layer {digest}: its tar hashes to {reader.diff_id}, not its diff_id {diff_id}")
        with open(tmp, "rb") as f:
            tf.addfile(_info(name, os.fstat(f.fileno()).st_size), f)
    finally:
        tmp.unlink(missing_ok=True)
