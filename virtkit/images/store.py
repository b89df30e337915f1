"""The content-addressed image store: an OCI image layout plus the shared, once-unpacked layer dirs.

On disk, under the store root:
  oci/            a real OCI image layout (oci-layout, index.json, blobs/sha256/<hex>)
  layers/<hex>/   each layer unpacked once, by uncompressed diff_id, shared read-only as overlay lowerdirs
  tmp/            temp files of atomic writes (same filesystem, so rename is atomic)
  lock            flock()ed by every writer of index.json, and by garbage collection
Blobs are verified against their digest on every read.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtkit.core.errors import IntegrityError, InvalidArgument, NotFound, SystemFailure

from ._fsutil import atomic_write, clean_stale_temps, fsync_dir, new_temp_name, overlay_lowerdirs, tree_size

__all__ = [
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_LAYER_GZIP",
    "MEDIA_LAYER_TAR",
    "MEDIA_LAYER_ZSTD",
    "MEDIA_MANIFEST",
    "ImageInfo",
    "ImageStore",
    "normalize_name",
]

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# An index entry whose name was taken by a newer image keeps its old name here: stopped instances may still
# use its layers, so only prune (which knows the names instances use) drops it.
FORMER_REF_ANNOTATION = "io.virtkit.image.former-ref"

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                      r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
_CHUNK = 1 << 20
# layers/<hex>.implicit-parents.json: parents the layer used without naming them (see unpack.py).
_IMPLICIT_SUFFIX = ".implicit-parents.json"


@dataclass(frozen=True)
class ImageInfo:
    name: str            # "busybox:latest"
    digest: str          # manifest digest "sha256:..."
    config: dict         # the OCI image config JSON (whole document)
    layers: list[str]    # layer diff_ids, lowest first ("sha256:...")
    size: int            # sum of compressed layer sizes
    created: str         # RFC 3339


def normalize_name(name: str) -> str:
    """`NAME` -> `NAME:latest`; refuses names an OCI reference could not carry."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgument(f"name: {name!r} is not a valid image name "
                              "(lowercase letters, digits, '._-' and '/', optional ':tag')")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _canonical_json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hex_of(digest: str) -> str:
    m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if m is None:
        raise InvalidArgument(f"digest: {digest!r} is not a sha256 digest ('sha256:' + 64 hex digits)")
    return m.group(1)


def _now_rfc3339() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class ImageStore:
    """Images by name, in an OCI layout under `root`; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.oci = self.root / "oci"
        self.blobs = self.oci / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.tmp = self.root / "tmp"
        self.cache = self.root / "cache"
        self._lock_path = self.root / "lock"
        # called after each collection with the manifest digests still in the index (what is cached per image
        # elsewhere, such as VM base disks, goes with its image)
        self._gc_hooks: builtins.list[Callable[[builtins.set[str]], object]] = []
        # index.json and small blobs as last read (and verified), keyed by what a change to the file changes
        self._reads: dict[Path, tuple[tuple[int, int, int, int], bytes]] = {}
        try:
            for d in (self.blobs, self.layers_dir, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
            if not (self.oci / "oci-layout").exists():
                atomic_write(self.oci / "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}), self.tmp)
            if not (self.oci / "index.json").exists():
                with self._locked():
                    if not (self.oci / "index.json").exists():
                        self._write_index([])
        except OSError as exc:
            raise SystemFailure(f"image store at {self.root}: cannot initialise: {exc}") from exc
        # Leftovers of crashed writers/unpackers (their pid is gone) are never visible; drop them, and the
        # blobs a crashed commit moved in before its name landed (unless another writer is busy right now).
        clean_stale_temps(self.tmp)
        clean_stale_temps(self.layers_dir)
        try:
            with self._locked(blocking=False):
                self._gc()
        except BlockingIOError:
            pass
        except OSError:
            pass  # a read-only store: its leftovers stay invisible

    # -- queries ------------------------------------------------------------------------------------

    def list(self) -> builtins.list[ImageInfo]:
        out = []
        for ref, desc in self._refs():
            try:
                out.append(self._info(ref, desc))
            except NotFound:
                continue  # removed between reading the index and its blobs
        return sorted(out, key=lambda i: i.name)

    def get(self, name: str) -> ImageInfo:
        ref = normalize_name(name)
        for r, desc in self._refs():
            if r == ref:
                return self._info(r, desc)
        raise NotFound(f"image {name!r} not found")

    def exists(self, name: str) -> bool:
        ref = normalize_name(name)
        return any(r == ref for r, _ in self._refs())

    def read_blob(self, digest: str) -> bytes:
        hexd = _hex_of(digest)
        path = self.blobs / hexd
        try:
            key, data = self._recall(path)
            if data is not None:
                return data
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the image store") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != hexd:
            raise IntegrityError(f"blob {digest} is corrupt: its content hashes to sha256:{actual}")
        self._remember(path, key, data)
        return data

    # A small file read before is not read (nor hashed) again while its inode, size, mtime and ctime are the
    # ones it had then: any write to it, or a new file renamed in its place, changes one of them. Every create
    # reads index.json, a manifest and a config (~0.3 ms each with the hash); a stat is ~5 us.
    _REMEMBER_MAX = 64 << 10

    def _recall(self, path: Path) -> tuple[tuple[int, int, int, int], bytes | None]:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._reads.get(path)
        return key, hit[1] if hit is not None and hit[0] == key else None

    def _remember(self, path: Path, key: tuple[int, int, int, int], data: bytes) -> None:
        if len(data) <= self._REMEMBER_MAX:
            if len(self._reads) >= 256:
                self._reads.clear()
            self._reads[path] = (key, data)

    def verify_blob_file(self, digest: str) -> Path:
        """Stream-verify a (possibly large) blob and return its path."""
        hexd = _hex_of(digest)
        path = self.blobs / hexd
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the image store") from None
        if h.hexdigest() != hexd:
            raise IntegrityError(f"blob {digest} is corrupt: its content hashes to sha256:{h.hexdigest()}")
        return path

    def manifest(self, name: str) -> dict:
        """The verified OCI manifest of image `name`."""
        return json.loads(self.read_blob(self.get(name).digest))

    # -- writes -------------------------------------------------------------------------------------

    def add_image(self, name: str, layer_tars: builtins.list[str | Path], config: dict,
                  base: str | None = None) -> ImageInfo:
        """Store `layer_tars` (uncompressed, lowest first; gzipped here) as image `name`.

        With `base` (a manifest digest in the store), the new image is that image's layers, their blobs taken
        as they are (same digests, nothing re-compressed or copied), with `layer_tars` on top.
        """
        ref = normalize_name(name)
        if not isinstance(config, dict):
            raise InvalidArgument("config: must be a dict (an OCI image config document)")
        if not isinstance(layer_tars, (list, tuple)):
            raise InvalidArgument("layer_tars: must be a list of tar file paths, lowest first")
        import tarfile  # only writers need it

        from ._layers import base_layers
        for i, t in enumerate(layer_tars):
            if not Path(t).is_file():
                raise InvalidArgument(f"layer_tars[{i}]: {t} is not a file")
            if not tarfile.is_tarfile(t):
                raise InvalidArgument(f"layer_tars[{i}]: {t} is not an uncompressed tar archive")
        # The whole add holds the lock so garbage collection never sees our blobs before the index does.
        with self._locked():
            layer_descs, diff_ids = base_layers(self, base) if base is not None else ([], [])
            for t in layer_tars:
                desc, diff_id = self._put_layer(Path(t))
                layer_descs.append(desc)
                diff_ids.append(diff_id)
            cfg = self._complete_config(config, diff_ids)
            cfg_desc = self._put_blob(_canonical_json(cfg), MEDIA_CONFIG)
            manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": cfg_desc,
                        "layers": layer_descs}
            man_desc = self._put_blob(_canonical_json(manifest), MEDIA_MANIFEST)
            man_desc["platform"] = {"architecture": cfg["architecture"], "os": cfg["os"]}
            self._write_index(_place_ref(self._read_index(), ref, man_desc))
            self._gc()
        return self.get(ref)

    def commit(self, name: str, manifest_desc: dict, staged: dict[str, Path]) -> ImageInfo:
        """Move staged, already verified blobs (hex -> file under tmp/) into place, then name the manifest.

        Blobs land first and the index last, atomically, all under the lock: garbage collection never sees a
        blob before its image, and a crash in between leaves only unreferenced blobs that the next gc drops.
        """
        ref = normalize_name(name)
        with self._locked():
            for hexd, path in staged.items():
                os.rename(path, self.blobs / hexd)   # replaces a same-digest (perhaps corrupt) copy
            fsync_dir(self.blobs)
            desc = {k: v for k, v in manifest_desc.items() if k != "annotations"}
            self._check_complete(desc["digest"])
            self._write_index(_place_ref(self._read_index(), ref, desc))
            self._gc()
        return self.get(ref)

    def tag(self, name: str, manifest_digest: str) -> ImageInfo | None:
        """Name an image whose blobs are all in the store already; None when some are gone (collected)."""
        ref = normalize_name(name)
        with self._locked():
            try:
                manifest = self._check_complete(manifest_digest)
            except (NotFound, IntegrityError):
                return None
            config = json.loads(self.read_blob(manifest["config"]["digest"]))
            desc = {"mediaType": manifest.get("mediaType", MEDIA_MANIFEST), "digest": manifest_digest,
                    "size": (self.blobs / _hex_of(manifest_digest)).stat().st_size,
                    "platform": {"architecture": config.get("architecture", "amd64"),
                                 "os": config.get("os", "linux")}}
            self._write_index(_place_ref(self._read_index(), ref, desc))
        return self.get(ref)

    def prune(self, in_use: Iterable[str] = ()) -> dict:
        """Drop images replaced under their name that no instance uses (by name), then every blob and
        unpacked layer no image references. Returns what was freed."""
        keep: builtins.set[str] = set()
        for n in in_use:
            try:
                keep.add(normalize_name(n))
            except InvalidArgument:
                continue
        with self._locked():
            entries = self._read_index()
            dropped = [d for d in entries if self._ref_of(d) is None
                       and (d.get("annotations") or {}).get(FORMER_REF_ANNOTATION) not in keep]
            if dropped:
                self._write_index([d for d in entries if d not in dropped])
            freed = self._gc()
        clean_stale_temps(self.tmp)
        clean_stale_temps(self.layers_dir)
        freed["images"] = [d["digest"] for d in dropped]
        return freed

    def _check_complete(self, manifest_digest: str) -> dict:
        """The manifest, after checking that it and every blob it names are present (config verified)."""
        manifest = json.loads(self.read_blob(manifest_digest))
        self.read_blob(manifest["config"]["digest"])
        for layer in manifest.get("layers", []):
            if not (self.blobs / _hex_of(layer["digest"])).is_file():
                raise NotFound(f"blob {layer['digest']} not found in the image store")
        return dict(manifest)

    def remove(self, name: str) -> None:
        ref = normalize_name(name)
        with self._locked():
            entries = self._read_index()
            kept = [d for d in entries if self._ref_of(d) != ref]
            if len(kept) == len(entries):
                raise NotFound(f"image {name!r} not found")
            self._write_index(kept)
            self._gc()

    def layer_paths(self, name: str) -> builtins.list[Path]:
        """The unpacked layer dirs of image `name`, lowest first, unpacking (in parallel) those not yet there.

        New layers are unpacked into temp dirs, each verified against its blob digest and diff_id in the same
        pass; then, in order, the paths each layer used without naming them are checked against the layers
        below (no writing through a lower symlink), and only then do the new dirs take their names.
        """
        from ._layers import place_layer, unpack_layers
        from .unpack import check_implicit_parents

        info = self.get(name)
        manifest = json.loads(self.read_blob(info.digest))
        descs = manifest.get("layers", [])
        if len(descs) != len(info.layers):
            raise IntegrityError(f"image {info.name}: manifest has {len(descs)} layers but config lists "
                                 f"{len(info.layers)} diff_ids")
        dests = [self.layers_dir / _hex_of(d) for d in info.layers]
        todo = [(i, desc["digest"], diff_id) for i, (desc, diff_id) in enumerate(zip(descs, info.layers, strict=True))
                if not dests[i].is_dir()]
        staged = unpack_layers(self, todo) if todo else {}
        try:
            view: builtins.list[Path] = []
            for i, diff_id in enumerate(info.layers):
                if i in staged:
                    tmp, implicit = staged[i]
                    if view and implicit:
                        check_implicit_parents(implicit, view, diff_id)
                    view.append(tmp)
                    continue
                # Unpacked once, maybe over other lower layers: re-check the few paths this layer did not
                # name itself against this image's lowers.
                sidecar = self.layers_dir / f"{dests[i].name}{_IMPLICIT_SUFFIX}"
                if view and sidecar.exists():
                    check_implicit_parents(json.loads(sidecar.read_bytes()), view, diff_id)
                view.append(dests[i])
            for i, (tmp, implicit) in sorted(staged.items()):
                place_layer(self, tmp, dests[i], implicit)
        finally:
            for tmp, _ in staged.values():
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return dests

    # -- internals ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[None]:
        import fcntl

        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> builtins.list[dict]:
        path = self.oci / "index.json"
        try:
            key, data = self._recall(path)
            if data is None:
                data = path.read_bytes()
                self._remember(path, key, data)
            doc = json.loads(data)
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise IntegrityError(f"image store {self.root}: index.json is not valid JSON: {exc}") from exc
        return list(doc.get("manifests", []))

    def _write_index(self, entries: builtins.list[dict]) -> None:
        doc = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
        self._reads.pop(self.oci / "index.json", None)
        atomic_write(self.oci / "index.json", json.dumps(doc, indent=2, sort_keys=True).encode(), self.tmp)

    @staticmethod
    def _ref_of(desc: dict) -> str | None:
        ref = (desc.get("annotations") or {}).get(REF_ANNOTATION)
        if not ref:
            return None
        try:
            return normalize_name(ref)
        except InvalidArgument:
            return ref

    def _refs(self) -> builtins.list[tuple[str, dict]]:
        return [(r, d) for d in self._read_index() if (r := self._ref_of(d)) is not None]

    def _info(self, ref: str, desc: dict) -> ImageInfo:
        manifest = json.loads(self.read_blob(desc["digest"]))
        config = json.loads(self.read_blob(manifest["config"]["digest"]))
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids", []))
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        return ImageInfo(name=ref, digest=desc["digest"], config=config, layers=diff_ids, size=size,
                         created=str(config.get("created", "")))

    def _complete_config(self, config: dict, diff_ids: builtins.list[str]) -> dict:
        cfg = json.loads(json.dumps(config))  # a deep copy that also proves it is JSON
        cfg.setdefault("architecture", "amd64")
        cfg.setdefault("os", "linux")
        cfg.setdefault("config", {})
        if not isinstance(cfg["config"], dict):
            raise InvalidArgument("config.config: must be an object (Env, Cmd, Entrypoint, WorkingDir, User)")
        created = cfg.setdefault("created", _now_rfc3339())
        cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        if "history" not in cfg:
            cfg["history"] = [{"created": created, "created_by": "virtkit add_image"} for _ in diff_ids]
        return cfg

    def _put_blob(self, data: bytes, media_type: str) -> dict:
        hexd = hashlib.sha256(data).hexdigest()
        path = self.blobs / hexd
        if not path.exists():
            atomic_write(path, data, self.tmp)
        return {"mediaType": media_type, "digest": f"sha256:{hexd}", "size": len(data)}

    def _put_layer(self, tar_path: Path) -> tuple[dict, str]:
        """Gzip a layer tar into the blob store; return its descriptor and its diff_id."""
        import gzip

        raw_hash = hashlib.sha256()
        tmp = self.tmp / new_temp_name()
        try:
            with open(tar_path, "rb") as src, open(tmp, "wb") as out:
                # mtime=0 and no file name keep the gzip bytes, and so the digest, reproducible.
                with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=out, mtime=0) as gz:
                    while chunk := src.read(_CHUNK):
                        raw_hash.update(chunk)
                        gz.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            gz_hash = hashlib.sha256()
            with open(tmp, "rb") as f:
                while chunk := f.read(_CHUNK):
                    gz_hash.update(chunk)
            size = tmp.stat().st_size
            dest = self.blobs / gz_hash.hexdigest()
            if dest.exists():
                tmp.unlink()
            else:
                os.rename(tmp, dest)
                fsync_dir(self.blobs)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        desc = {"mediaType": MEDIA_LAYER_GZIP, "digest": f"sha256:{gz_hash.hexdigest()}", "size": size}
        return desc, f"sha256:{raw_hash.hexdigest()}"

    def _gc(self) -> dict:
        """Drop blobs and unpacked layers no image references any more; return counts and bytes freed.
        Caller holds the lock."""
        freed = {"blobs": 0, "layers": 0, "bytes": 0}
        keep_blobs: set[str] = set()
        keep_layers: set[str] = set()
        for desc in self._read_index():
            keep_blobs.add(_hex_of(desc["digest"]))
            try:
                manifest = json.loads(self.read_blob(desc["digest"]))
                keep_blobs.add(_hex_of(manifest["config"]["digest"]))
                keep_blobs.update(_hex_of(layer["digest"]) for layer in manifest.get("layers", []))
                config = json.loads(self.read_blob(manifest["config"]["digest"]))
                keep_layers.update(_hex_of(d) for d in config.get("rootfs", {}).get("diff_ids", []))
            except (NotFound, IntegrityError, KeyError, ValueError):
                # A damaged image must not make us delete what might still be its content.
                return freed
        for entry in os.scandir(self.blobs):
            if entry.name not in keep_blobs and _DIGEST_RE.match("sha256:" + entry.name):
                freed["bytes"] += entry.stat(follow_symlinks=False).st_size
                freed["blobs"] += 1
                os.unlink(entry.path)
        in_use = overlay_lowerdirs()
        for entry in os.scandir(self.layers_dir):
            if entry.name.endswith(_IMPLICIT_SUFFIX):
                if entry.name.removesuffix(_IMPLICIT_SUFFIX) not in keep_layers:
                    os.unlink(entry.path)
                continue
            if entry.name in keep_layers or not _DIGEST_RE.match("sha256:" + entry.name):
                continue
            if os.path.realpath(entry.path) in in_use:
                continue  # still a lowerdir of a mounted overlay; a later gc removes it
            # Rename first so the layer vanishes atomically, then delete at leisure.
            trash = self.layers_dir / new_temp_name()
            os.rename(entry.path, trash)
            freed["bytes"] += tree_size(trash)
            freed["layers"] += 1
            shutil.rmtree(trash, ignore_errors=True)
        digests = {d["digest"] for d in self._read_index()}
        for hook in self._gc_hooks:
            hook(digests)
        return freed

    def add_gc_hook(self, hook: Callable[[builtins.set[str]], object]) -> None:
        """Call `hook(manifest digests kept)` after every collection from now on, and once now."""
        with self._locked():
            self._gc_hooks.append(hook)
            hook({d["digest"] for d in self._read_index()})


def _place_ref(entries: list[dict], ref: str, desc: dict) -> list[dict]:
    """`entries` with `desc` named `ref`; an image that held the name before stays, unnamed, for prune."""
    desc = {**desc, "annotations": {REF_ANNOTATION: ref}}
    out = []
    for d in entries:
        if ImageStore._ref_of(d) == ref:
            if d["digest"] != desc["digest"]:
                out.append({**d, "annotations": {FORMER_REF_ANNOTATION: ref}})
        elif ImageStore._ref_of(d) is not None or d["digest"] != desc["digest"]:
            out.append(d)   # another name, or an unnamed entry of other content
    out.append(desc)
    return out
