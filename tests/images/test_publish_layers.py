"""publish keeps the base image's layer blobs as they are (same digests, one copy on disk) and adds one layer.

The base here is imported with layers that virtkit would never write itself (zstd, and gzip at another level
with a header name and time), so re-compressing them could not give the same digests by chance.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from images_helpers import E, layer_bytes, write_oci_layout

from tests.e2e.conftest import client, name, vk, vk_home  # noqa: F401 - fixtures of the end-to-end suite
from tests.storage.helpers import leftovers
from virtkit.images._digestio import LayerReader
from virtkit.images.store import ImageStore

pytestmark = pytest.mark.root

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ok(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r.stderr.decode()
    return str(r.stdout.decode())


def _store(home: str) -> ImageStore:
    return ImageStore(os.path.join(home, "images"))


def _base_layout(home: str, dest: Path, ref: str) -> None:
    """An OCI layout: busybox's rootfs as a zstd layer, then a gzip layer (level 1, named, dated)."""
    import zstandard

    store = _store(home)
    blob = store.blobs / store.manifest("busybox")["layers"][0]["digest"][7:]
    with LayerReader(blob) as reader:
        rootfs = reader.read()
    extra = layer_bytes([E("dir", "srv"), E("dir", "srv/old"), E("file", "srv/old/x", b"old\n"),
                         E("file", "srv/keep", b"keep\n"), E("file", "etc/base-only", b"base\n")])
    buf = io.BytesIO()
    with gzip.GzipFile(filename="extra.tar", mode="wb", compresslevel=1, fileobj=buf, mtime=1_234_567) as gz:
        gz.write(extra)
    blobs = [(zstandard.ZstdCompressor(level=7).compress(rootfs), rootfs, ZSTD), (buf.getvalue(), extra, GZIP)]
    cfg = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Cmd": ["sh"], "Env": ["PATH=/bin:/usr/bin"], "Labels": {"ref": ref}},
           "rootfs": {"type": "layers", "diff_ids": [_sha(t) for _, t, _ in blobs]},
           "history": [{"created_by": "busybox"}, {"created_by": "extra"}]}
    cfg_raw = json.dumps(cfg).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(cfg_raw),
                           "size": len(cfg_raw)},
                "layers": [{"mediaType": m, "digest": _sha(b), "size": len(b)} for b, _, m in blobs]}
    man_raw = json.dumps(manifest).encode()
    (dest / "blobs/sha256").mkdir(parents=True)
    for data in (cfg_raw, man_raw, *(b for b, _, _ in blobs)):
        (dest / "blobs/sha256" / _sha(data)[7:]).write_bytes(data)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": _sha(man_raw), "size": len(man_raw),
         "annotations": {"org.opencontainers.image.ref.name": ref}}]}))


def _top_layer(home: str, image: str) -> dict[str, tarfile.TarInfo]:
    store = _store(home)
    with LayerReader(store.blobs / store.manifest(image)["layers"][-1]["digest"][7:]) as reader:
        data = reader.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_publish_reuses_the_base_layer_blobs(vk_home, client, name, tmp_path: Path) -> None:  # noqa: F811
    base, image, empty = f"base-{name}", f"pub-{name}", f"empty-{name}"
    _base_layout(vk_home, tmp_path / "layout", base)
    _ok(vk(vk_home, "image", "import", str(tmp_path / "layout")))
    store = _store(vk_home)
    base_layers = store.manifest(base)["layers"]
    script = "echo new > /srv/new; rm /etc/base-only; rm -r /srv/old; rm /bin/vi; echo changed > /srv/keep"
    _ok(vk(vk_home, "run", "--name", name, base, "--", "sh", "-c", script))
    blobs_before = {p.name for p in store.blobs.iterdir()}
    layers_before = {p.name for p in store.layers_dir.iterdir()}

    _ok(vk(vk_home, "publish", name, image))
    manifest = store.manifest(image)
    assert manifest["layers"][:2] == base_layers                 # the same blobs: digest, size, media type
    assert len(manifest["layers"]) == 3 and manifest["layers"][2]["mediaType"] == GZIP
    new_blobs = {p.name for p in store.blobs.iterdir()} - blobs_before
    assert new_blobs == {manifest["layers"][2]["digest"][7:], manifest["config"]["digest"][7:],
                         store.get(image).digest[7:]}              # the changes, a config, a manifest: no copies
    info = client.image(image)
    assert info["layers"][:2] == client.image(base)["layers"]
    assert [h.get("created_by") for h in info["config"] and json.loads(
        store.read_blob(manifest["config"]["digest"]))["history"]][:2] == ["busybox", "extra"]

    top = _top_layer(vk_home, image)
    assert {"etc/.wh.base-only", "srv/.wh.old", "bin/.wh.vi", "srv/new", "srv/keep"} <= set(top)
    assert not any(n.startswith("srv/old/") for n in top)
    out = _ok(vk(vk_home, "run", "--rm", image, "--", "sh", "-c",
                 "cat /srv/new /srv/keep; ls /srv; ls /etc/base-only /srv/old /bin/vi 2>&1 | wc -l"))
    assert out.split() == ["new", "changed", "keep", "new", "3"]
    assert {p.name for p in store.layers_dir.iterdir()} - layers_before == {info["layers"][2][7:]}

    # an instance that changed nothing: the image is its base plus an empty layer, and it runs
    client.create(image, ["true"], name=f"{name}-e")
    _ok(vk(vk_home, "publish", f"{name}-e", empty))
    m2 = store.manifest(empty)
    assert m2["layers"][:3] == manifest["layers"] and len(m2["layers"]) == 4
    assert _top_layer(vk_home, empty) == {}
    assert _ok(vk(vk_home, "run", "--rm", empty, "--", "cat", "/srv/new")) == "new\n"

    # the published image exports and re-imports with the same digests, the zstd base blob as it was
    for n in (name, f"{name}-e"):
        client.remove(n, force=True)
    _ok(vk(vk_home, "image", "export", image, str(tmp_path / "pub.tar")))
    _ok(vk(vk_home, "image", "rm", image))
    _ok(vk(vk_home, "image", "import", str(tmp_path / "pub.tar")))
    assert store.manifest(image) == manifest

    for img in (empty, image, base):
        client.remove_image(img)
    assert leftovers(os.path.join(vk_home, "snapshots")) == []


def test_publish_builds_on_the_image_the_instance_runs_on_after_its_name_moved(vk_home, client, name,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    base, image = f"moving-{name}", f"pub-{name}"
    _base_layout(vk_home, tmp_path / "layout", base)
    _ok(vk(vk_home, "image", "import", str(tmp_path / "layout")))
    first = client.image(base)
    _ok(vk(vk_home, "run", "--name", name, base, "--", "sh", "-c", "echo x > /x"))
    write_oci_layout(tmp_path / "other", {base: [[E("file", "other", b"not a busybox")]]})
    _ok(vk(vk_home, "image", "import", str(tmp_path / "other")))       # the name now means another image
    assert client.image(base)["digest"] != first["digest"]

    _ok(vk(vk_home, "publish", name, image))
    assert client.image(image)["layers"][:2] == first["layers"]
    assert _ok(vk(vk_home, "run", "--rm", image, "--", "cat", "/x", "/srv/keep")) == "x\nkeep\n"
    client.remove(name, force=True)
    client.remove_image(image)
    client.remove_image(base)
    client.prune_images()
    assert first["digest"][7:] not in {p.name for p in _store(vk_home).blobs.iterdir()}


def test_publish_on_a_corrupt_base_blob_is_refused_with_nothing_made(vk_home, client, name,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    base, image = f"rot-{name}", f"pub-{name}"
    _base_layout(vk_home, tmp_path / "layout", base)
    _ok(vk(vk_home, "image", "import", str(tmp_path / "layout")))
    _ok(vk(vk_home, "run", "--name", name, base, "--", "sh", "-c", "echo x > /x"))
    store = _store(vk_home)
    blob = store.blobs / store.manifest(base)["layers"][1]["digest"][7:]
    good = blob.read_bytes()
    blobs_before = {p.name for p in store.blobs.iterdir()}
    blob.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])
    try:
        r = vk(vk_home, "publish", name, image)
        assert r.returncode == 1 and b"is corrupt" in r.stderr, r.stderr
        assert not any(i["name"] == f"{image}:latest" for i in client.images())
        assert {p.name for p in store.blobs.iterdir()} == blobs_before
        assert leftovers(os.path.join(vk_home, "snapshots")) == []
    finally:
        blob.write_bytes(good)
    client.remove(name, force=True)
    client.remove_image(base)
