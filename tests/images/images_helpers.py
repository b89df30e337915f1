"""Helpers of the image tests: layer tars built from a short spec, a sentinel outside every store."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_skip_unless_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (chown, whiteout mknod, trusted.* xattrs, mounts, chroot)")


def as_root(fn):
    """Mark a test `root` and skip it, saying why, when not running as root."""
    return pytest.mark.root(_skip_unless_root(fn))


@dataclass
class E:
    """One tar entry: kind is file, dir, symlink, hardlink, chr, blk or fifo."""

    kind: str
    name: str
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def make_tar(path: Path, entries: list[E]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.linkname = e.link
            if e.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = 1, 3
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return path


@dataclass
class Sentinel:
    """A directory outside every store/dest whose content must never change."""

    dir: Path
    file: Path

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.dir.iterdir())}


# -- image archives built by hand: OCI layouts and docker-archives ------------------------------------

def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_bytes(entries: list[E], gz: bool = False) -> bytes:
    """One layer tar (gzip-compressed with `gz`) in memory."""
    import gzip
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        make_tar(Path(f.name), entries)
        data = Path(f.name).read_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def compress(tar: bytes, codec: str) -> bytes:
    """A layer tar as a blob: 'none', 'gzip', 'zstd', or 'zstd-frames' (several concatenated zstd frames, as
    multi-threaded zstd writes)."""
    import gzip

    import zstandard

    if codec == "gzip":
        return gzip.compress(tar, mtime=0)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    if codec == "zstd-frames":
        cut = len(tar) // 3
        return b"".join(zstandard.ZstdCompressor().compress(part) for part in (tar[:cut], tar[cut:2 * cut],
                                                                                tar[2 * cut:]))
    assert codec == "none", codec
    return tar


LAYER_MEDIA = {"none": "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "zstd-frames": "application/vnd.oci.image.layer.v1.tar+zstd"}


def image_config(layers: list[bytes], gz: bool, cmd: list[str] | None = None,
                 diff_ids: list[str] | None = None) -> dict:
    import gzip

    if diff_ids is None:
        diff_ids = [_sha(gzip.decompress(b) if gz else b) for b in layers]
    return {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": cmd or ["sh"], "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def write_oci_layout(root: Path, images: dict[str | None, list[list[E]]], gz: bool = True,
                     config_extra: dict | None = None, codecs: list[str] | None = None) -> dict[str | None, dict]:
    """An OCI image layout at `root` with one manifest per (ref name -> layers); returns name -> digests.
    `codecs` (one per layer: see compress) overrides `gz`."""
    import json

    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> str:
        d = _sha(data)
        (blobs / d[7:]).write_bytes(data)
        return d

    out: dict[str | None, dict] = {}
    manifests = []
    for ref, layer_specs in images.items():
        kinds = codecs or [("gzip" if gz else "none")] * len(layer_specs)
        tars = [layer_bytes(spec) for spec in layer_specs]
        layers = [compress(t, k) for t, k in zip(tars, kinds, strict=True)]
        cfg = image_config(layers, gz, diff_ids=[_sha(t) for t in tars])
        cfg.update(config_extra or {})
        cfg_raw = json.dumps(cfg).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(cfg_raw),
                               "size": len(cfg_raw)},
                    "layers": [{"mediaType": LAYER_MEDIA[k], "digest": put(b), "size": len(b)}
                               for b, k in zip(layers, kinds, strict=True)]}
        raw = json.dumps(manifest, indent=1).encode()
        desc = {"mediaType": manifest["mediaType"], "digest": put(raw), "size": len(raw)}
        if ref is not None:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        manifests.append(desc)
        out[ref] = {"manifest": desc["digest"], "config": manifest["config"]["digest"],
                    "layers": [lay["digest"] for lay in manifest["layers"]], "diff_ids": cfg["rootfs"]["diff_ids"]}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return out


def write_docker_archive(path: Path, layer_specs: list[list[E]], tags: list[str], gz: bool = False,
                         extra: list[tuple[str, bytes]] = (), codec: str | None = None) -> dict:
    """A docker-archive tar (`docker save` / `podman save` shape); returns its config digest and diff_ids.
    `codec` (see compress) overrides `gz`."""
    import io as _io
    import json

    tars = [layer_bytes(spec) for spec in layer_specs]
    layers = [compress(t, codec or ("gzip" if gz else "none")) for t in tars]
    cfg = image_config(layers, gz, diff_ids=[_sha(t) for t in tars])
    cfg_raw = json.dumps(cfg).encode()
    cfg_digest = _sha(cfg_raw)
    names = [f"{i:02d}/layer.tar" + (".gz" if gz else "") for i in range(len(layers))]
    files = [(f"{cfg_digest[7:]}.json", cfg_raw), *zip(names, layers, strict=True),
             ("manifest.json", json.dumps([{"Config": f"{cfg_digest[7:]}.json", "RepoTags": tags,
                                             "Layers": names}]).encode()), *extra]
    with tarfile.open(path, "w") as tf:
        for n, data in files:
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tf.addfile(ti, _io.BytesIO(data))
    return {"config": cfg_digest, "diff_ids": cfg["rootfs"]["diff_ids"]}


def tar_dir(src: Path, dest: Path) -> Path:
    """`src`'s content as a tar at `dest` (names relative to `src`)."""
    with tarfile.open(dest, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest


# A three-layer image with what real images hold: whiteouts, an opaque dir, hardlinks, symlinks, xattrs.
RICH_LAYERS: list[list[E]] = [
    [E("dir", "etc"), E("file", "etc/hello", b"hello from layer 0\n"), E("dir", "opt"),
     E("file", "opt/old", b"gone after opaque\n"), E("file", "etc/removed", b"whited out\n"),
     E("dir", "bin"), E("file", "bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755)],
    [E("file", "etc/.wh.removed"), E("dir", "opt"), E("file", "opt/.wh..wh..opq"), E("file", "opt/new", b"new\n"),
     E("file", "etc/data", b"payload\n", xattrs={"user.virtkit": "tagged"}),
     E("hardlink", "etc/data-link", link="etc/data"), E("symlink", "etc/hello-link", link="hello")],
    [E("file", "etc/hello", b"hello from layer 2\n", mode=0o600, uid=1000, gid=1000)],
]


def assert_empty(store) -> None:  # type: ignore[no-untyped-def]
    """Nothing of a failed import is left: no image, no blob, no layer, no staging file."""
    assert store.list() == []
    assert list(store.blobs.iterdir()) == []
    assert list(store.layers_dir.iterdir()) == []
    assert list(store.tmp.iterdir()) == []


def manifest_of(store, name: str) -> dict:  # type: ignore[no-untyped-def]
    import json

    return dict(json.loads(store.read_blob(store.get(name).digest)))


def assert_rich_unpacked(l0: Path, l1: Path, l2: Path) -> None:
    """RICH_LAYERS' three layers, unpacked: whiteout, opaque dir, hardlink, symlink, xattr, owner and mode."""
    import stat

    assert (l0 / "etc/hello").read_bytes() == b"hello from layer 0\n"
    wh = os.lstat(l1 / "etc/removed")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(l1 / "opt", "trusted.overlay.opaque") == b"y"
    assert (l1 / "etc/data").stat().st_ino == (l1 / "etc/data-link").stat().st_ino
    assert os.readlink(l1 / "etc/hello-link") == "hello"
    assert os.getxattr(l1 / "etc/data", "user.virtkit") == b"tagged"
    st = (l2 / "etc/hello").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert (l2 / "etc/hello").read_bytes() == b"hello from layer 2\n"
