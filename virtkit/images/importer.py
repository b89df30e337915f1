"""Import of images from files: an OCI image layout (directory or tar), a docker-archive tar (`podman save`), or
a `skopeo copy ... dir:` directory (a manifest and its blobs, named by digest).

Every blob is copied into a private staging directory under the store's tmp/ while its digest is checked; only
when all of them are there and verified does ImageStore.commit move them into place and write the name, last and
atomically. Any error, or a kill -9, leaves nothing visible: the staging directory is removed (or, after a crash,
dropped by the next open of the store).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from virtkit.core.errors import IntegrityError, InvalidArgument

from ._digestio import LAYER_MEDIA, LayerReader, compression_of
from ._fsutil import new_temp_name
from ._sources import Source, open_source
from .store import MEDIA_CONFIG, MEDIA_MANIFEST, ImageInfo, ImageStore, normalize_name

__all__ = ["import_image"]

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
_MANIFEST_TYPES = {MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST}
_INDEX_TYPES = {MEDIA_INDEX, MEDIA_DOCKER_LIST}
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
# layer media types we take, with the compression each says its blob has (None: the label does not say)
_LAYER_TYPES: dict[str | None, str | None] = {
    **{media: kind for kind, media in LAYER_MEDIA.items()},
    **{media.replace(".layer.", ".layer.nondistributable."): kind for kind, media in LAYER_MEDIA.items()},
    "application/vnd.docker.image.rootfs.diff.tar.gzip": None,
    "application/vnd.docker.image.rootfs.diff.tar": None,
    None: None,
}
_CHUNK = 1 << 20


def import_image(store: ImageStore, path: str | os.PathLike, name: str | None = None,
                 progress: Callable[[str], None] | None = None) -> ImageInfo:
    """Import the image at `path` (OCI layout dir/tar, docker-archive tar, skopeo dir) as `name` (default: its
    own; a skopeo dir has none)."""
    say = progress or (lambda _m: None)
    if name is not None:
        name = normalize_name(name)
    src_path = Path(path)
    with open_source(src_path) as src, _Staging(store) as stage:
        if src.has("index.json"):
            if not src.has("oci-layout"):
                raise InvalidArgument(f"{src.label}: has index.json but no oci-layout file: not an OCI image layout")
            ref, desc = _oci_import(src, stage, name, say)
        elif src.has("manifest.json") and src.has("version") and \
                src.read("version", "version").startswith(b"Directory Transport Version"):
            ref, desc = _skopeo_dir_import(src, stage, name, say)
        elif src.has("manifest.json"):
            ref, desc = _docker_import(src, stage, name, say)
        else:
            raise InvalidArgument(f"path: {src_path} is neither an OCI image layout (oci-layout, index.json) nor a"
                                  " docker-archive (manifest.json)")
        say(f"committing {ref}")
        return store.commit(ref, desc, stage.files)


class _Staging:
    """Verified blobs of one import, under tmp/ (same filesystem as blobs/, so commit is a rename)."""

    def __init__(self, store: ImageStore) -> None:
        self.dir = store.tmp / new_temp_name()
        os.mkdir(self.dir, 0o700)
        self.files: dict[str, Path] = {}

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def put_bytes(self, data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        if hexd not in self.files:
            path = self.dir / hexd
            path.write_bytes(data)
            self.files[hexd] = path
        return hexd

    def put_json(self, src: Source, name: str, digest: str, what: str) -> tuple[bytes, Any]:
        """A small JSON blob: verified against `digest`, staged, parsed."""
        data = src.read(name, what)
        self._check("sha256:" + hashlib.sha256(data).hexdigest(), digest, f"{src.label}: {what}")
        self.put_bytes(data)
        try:
            return data, json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"{src.label}: {what} {name!r} is not valid JSON: {exc}") from exc

    def put_layer(self, f: IO[bytes], what: str, want_digest: str | None, want_diff_id: str | None,
                  decompress: bool, want_compression: str | None = None) -> tuple[str, str | None, int, str]:
        """Copy a layer into staging, hashing it (and, with `decompress`, its tar); returns
        (digest, diff_id or None, size, compression) after checking them against what the manifest says."""
        tmp = self.dir / new_temp_name()
        with open(tmp, "wb") as out:
            head = f.read(512)
            compression = compression_of(head, what)
            if compression == "none" and not _looks_like_tar(head):
                raise InvalidArgument(f"{what}: is not a tar archive (nor a gzip- or zstd-compressed one)")
            if want_compression is not None and compression != want_compression:
                raise InvalidArgument(f"{what}: its media type says {_kind_name(want_compression)}, but the blob is"
                                      f" {_kind_name(compression)}")
            tee = _Tee(f, out, head)
            diff_id: str | None = None
            if decompress:
                reader = LayerReader(tee, what=what)  # type: ignore[arg-type]
                reader.drain()
                digest, diff_id, size = reader.digest, reader.diff_id, reader.raw_size
            else:
                h, size = hashlib.sha256(), 0
                while chunk := tee.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                digest = "sha256:" + h.hexdigest()
        if want_digest is not None:
            self._check(digest, want_digest, what)
        if want_diff_id is not None and diff_id is not None and diff_id != want_diff_id:
            raise IntegrityError(f"{what}: its tar hashes to {diff_id}, but the image config says {want_diff_id}")
        hexd = digest.removeprefix("sha256:")
        os.rename(tmp, self.dir / hexd)
        self.files[hexd] = self.dir / hexd
        return digest, diff_id, size, compression

    @staticmethod
    def _check(actual: str, expected: str, what: str) -> None:
        if actual != expected:
            raise IntegrityError(f"{what}: content hashes to {actual}, but it is named {expected}")


class _Tee:
    """Reads from `src` (after `head`, already read) and writes everything read to `out`."""

    def __init__(self, src: IO[bytes], out: Any, head: bytes) -> None:
        self.src, self.out, self.head = src, out, head

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
        else:
            data = self.src.read(n if n and n > 0 else _CHUNK)
        self.out.write(data)
        return data


def _kind_name(compression: str) -> str:
    return "an uncompressed tar" if compression == "none" else f"{compression}-compressed"


def _looks_like_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar" or (len(head) == 512 and head == bytes(512)) or \
        (len(head) >= 148 and _tar_checksum_ok(head))


def _tar_checksum_ok(head: bytes) -> bool:
    if len(head) < 512:
        return False
    try:
        stored = int(head[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


def _digest_ok(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise InvalidArgument(f"{what}: digest {digest!r} is not a sha256 digest")
    try:
        int(digest[7:], 16)
    except ValueError:
        raise InvalidArgument(f"{what}: digest {digest!r} is not a sha256 digest") from None
    return digest


# -- OCI image layout ---------------------------------------------------------------------------------

def _ref_of(desc: dict) -> str | None:
    ann = desc.get("annotations") or {}
    for key in _NAME_ANNOTATIONS:
        if isinstance(ann.get(key), str) and ann[key]:
            return str(ann[key])
    return None


def _pick(candidates: list[tuple[str | None, Any]], name: str | None, label: str) -> tuple[str, Any]:
    """The entry `name` refers to, or the only one; its final name (`name` wins)."""
    if not candidates:
        raise InvalidArgument(f"{label}: holds no image")
    if name is not None:
        for ref, item in candidates:
            if ref is not None and _normal(ref) == name:
                return name, item
        if len(candidates) == 1:
            return name, candidates[0][1]
    elif len(candidates) == 1:
        ref = candidates[0][0]
        if ref is None:
            raise InvalidArgument(f"{label}: the image has no name in the archive; give one with --name")
        try:
            return normalize_name(ref), candidates[0][1]
        except InvalidArgument as exc:
            raise InvalidArgument(f"{label}: its name {ref!r} is not usable ({exc.message}); give --name") \
                from None
    refs = ", ".join(sorted(r or "<unnamed>" for r, _ in candidates))
    what = f"no image named {name!r}" if name else "several images"
    raise InvalidArgument(f"name: {label} holds {what} (it has: {refs}); say which with --name")


def _normal(ref: str) -> str | None:
    try:
        return normalize_name(ref)
    except InvalidArgument:
        return None


def _blob(digest: str) -> str:
    return f"blobs/sha256/{digest[7:]}"


def _oci_import(src: Source, stage: _Staging, name: str | None, say: Callable[[str], None]) -> tuple[str, dict]:
    try:
        layout = json.loads(src.read("oci-layout", "oci-layout"))
        index = json.loads(src.read("index.json", "index.json"))
    except ValueError as exc:
        raise InvalidArgument(f"{src.label}: oci-layout or index.json is not valid JSON: {exc}") from exc
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise InvalidArgument(f"{src.label}: oci-layout: unsupported imageLayoutVersion")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument(f"{src.label}: index.json has no manifests list")
    ref, desc = _pick([(_ref_of(d), d) for d in entries if isinstance(d, dict)], name, src.label)
    desc = _resolve_index(src, desc)
    digest = _digest_ok(desc.get("digest"), f"{src.label}: manifest")
    raw, manifest = stage.put_json(src, _blob(digest), digest, f"manifest {digest}")
    return ref, _manifest_import(src, stage, raw, manifest, desc.get("mediaType", MEDIA_MANIFEST), _blob, say)


def _skopeo_dir_import(src: Source, stage: _Staging, name: str | None,
                       say: Callable[[str], None]) -> tuple[str, dict]:
    """skopeo's `dir:` transport: manifest.json is the image manifest itself; blobs are named by their hex."""
    raw = src.read("manifest.json", "manifest.json")
    stage.put_bytes(raw)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"{src.label}: manifest.json is not valid JSON: {exc}") from exc
    ref, _ = _pick([(None, manifest)], name, src.label)
    return ref, _manifest_import(src, stage, raw, manifest, MEDIA_MANIFEST, lambda d: d[7:], say)


def _manifest_import(src: Source, stage: _Staging, raw: bytes, manifest: Any, media: str,
                     blob: Callable[[str], str], say: Callable[[str], None]) -> dict:
    """Stage the config and layers of `manifest` (its own bytes `raw`, already staged), each read from the
    archive name `blob(digest)` and verified; returns the manifest's descriptor."""
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    media = manifest.get("mediaType", media) if isinstance(manifest, dict) else media
    if media not in _MANIFEST_TYPES or not isinstance(manifest, dict):
        raise InvalidArgument(f"{src.label}: manifest {digest} has unsupported media type {media!r}")
    cfg_digest = _digest_ok((manifest.get("config") or {}).get("digest"), f"manifest {digest}: config")
    _, config = stage.put_json(src, blob(cfg_digest), cfg_digest, f"config {cfg_digest}")
    layers = manifest.get("layers")
    diff_ids = ((config or {}).get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(layers, list) or not isinstance(diff_ids, list) or len(layers) != len(diff_ids):
        raise InvalidArgument(f"{src.label}: manifest {digest} and its config disagree on the layers"
                              f" ({len(layers or [])} layers, {len(diff_ids or [])} diff_ids)")
    for i, layer in enumerate(layers):
        ld = _digest_ok(layer.get("digest") if isinstance(layer, dict) else None, f"manifest {digest}: layers[{i}]")
        media = layer.get("mediaType")
        if not isinstance(media, str | None) or media not in _LAYER_TYPES:
            raise InvalidArgument(f"{src.label}: layer {ld} has media type {media!r}, which virtkit cannot unpack"
                                  " (a tar layer, plain or gzip- or zstd-compressed, is needed)")
        say(f"copying layer {i + 1}/{len(layers)} {ld[7:19]} ({layer.get('size', '?')} bytes)")
        with src.open(blob(ld), f"layer {ld}") as f:
            # The diff_id is checked where the layer is unpacked, in that same pass (see ImageStore.layer_paths).
            stage.put_layer(f, f"{src.label}: layer {ld}", ld, None, decompress=False,
                            want_compression=_LAYER_TYPES[media])
    return {"mediaType": media, "digest": digest, "size": len(raw),
            "platform": {"architecture": config.get("architecture", "amd64"), "os": config.get("os", "linux")}}


def _resolve_index(src: Source, desc: dict) -> dict:
    """A nested image index (multi-platform) resolves to its linux/amd64 manifest."""
    for _ in range(4):
        if desc.get("mediaType") not in _INDEX_TYPES:
            return desc
        digest = _digest_ok(desc.get("digest"), f"{src.label}: index")
        data = src.read(_blob(digest), f"index {digest}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{src.label}: index {digest}: content does not match its digest")
        sub = [d for d in json.loads(data).get("manifests", []) if isinstance(d, dict)]
        fit = [d for d in sub if (d.get("platform") or {}).get("architecture", "amd64") == "amd64"
               and (d.get("platform") or {}).get("os", "linux") == "linux"]
        if not fit:
            raise InvalidArgument(f"{src.label}: index {digest} has no linux/amd64 image")
        desc = fit[0]
    raise InvalidArgument(f"{src.label}: image indexes nest too deep")


# -- docker-archive -----------------------------------------------------------------------------------

def _docker_import(src: Source, stage: _Staging, name: str | None, say: Callable[[str], None]) -> tuple[str, dict]:
    try:
        entries = json.loads(src.read("manifest.json", "manifest.json"))
    except ValueError as exc:
        raise InvalidArgument(f"{src.label}: manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidArgument(f"{src.label}: manifest.json is not a list of images")
    candidates: list[tuple[str | None, Any]] = []
    for e in entries:
        tags = [t for t in (e.get("RepoTags") or []) if isinstance(t, str)]
        named = [t for t in tags if name is not None and _normal(t) == name]
        candidates.append(((named or tags)[0] if (named or tags) else None, e))
    ref, entry = _pick(candidates, name, src.label)
    cfg_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
        raise InvalidArgument(f"{src.label}: manifest.json entry lacks Config or Layers")
    cfg_raw = src.read(cfg_name, "config")
    cfg_digest = "sha256:" + hashlib.sha256(cfg_raw).hexdigest()
    stem = os.path.basename(cfg_name).removesuffix(".json").removeprefix("sha256:")
    if len(stem) == 64 and stem != cfg_digest[7:]:
        raise IntegrityError(f"{src.label}: config {cfg_name!r}: content hashes to {cfg_digest}, but it is"
                             f" named sha256:{stem}")
    try:
        config = json.loads(cfg_raw)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{src.label}: config {cfg_name!r} is not an image config: {exc}") from exc
    if len(diff_ids) != len(layer_names):
        raise InvalidArgument(f"{src.label}: manifest.json lists {len(layer_names)} layers but the config"
                              f" {len(diff_ids)} diff_ids")
    stage.put_bytes(cfg_raw)
    descs = []
    for i, (lname, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
        _digest_ok(diff_id, f"config {cfg_name!r}: diff_ids[{i}]")
        say(f"copying layer {i + 1}/{len(layer_names)} {lname}")
        with src.open(str(lname), "layer") as f:
            digest, _, size, compression = stage.put_layer(f, f"{src.label}: layer {lname!r}", None, diff_id,
                                                           decompress=True)
        descs.append({"mediaType": LAYER_MEDIA[compression], "digest": digest, "size": size})
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": len(cfg_raw)},
                "layers": descs}
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    hexd = stage.put_bytes(raw)
    return ref, {"mediaType": MEDIA_MANIFEST, "digest": f"sha256:{hexd}", "size": len(raw),
                 "platform": {"architecture": config.get("architecture", "amd64"), "os": config.get("os", "linux")}}
