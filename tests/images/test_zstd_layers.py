"""zstd-compressed and uncompressed tar layers beside gzip ones: import, unpack, export, re-import, bad blobs, and
skopeo's zstd output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from images_helpers import (
    RICH_LAYERS,
    E,
    Sentinel,
    as_root,
    assert_empty,
    assert_rich_unpacked,
    compress,
    layer_bytes,
    manifest_of,
    write_docker_archive,
    write_oci_layout,
)

from virtkit.core.errors import IntegrityError, InvalidArgument, UnsafeArchive
from virtkit.images._digestio import LayerReader
from virtkit.images.exporter import export_image
from virtkit.images.importer import import_image
from virtkit.images.store import ImageStore

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
MIXED = ["gzip", "zstd", "none"]          # RICH_LAYERS' middle layer (whiteouts, opaque dir, links) is zstd


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _rewrite_blob(layout: Path, want: dict, index: int, data: bytes) -> None:
    """Replace layer `index` of the one image in `layout` by `data`, naming it by its new digest everywhere."""
    blobs = layout / "blobs/sha256"
    old = want["layers"][index]
    (blobs / old[7:]).unlink()
    (blobs / _sha(data)[7:]).write_bytes(data)
    man_path = blobs / want["manifest"][7:]
    man = json.loads(man_path.read_bytes())
    man["layers"][index].update(digest=_sha(data), size=len(data))
    raw = json.dumps(man).encode()
    man_path.unlink()
    (blobs / _sha(raw)[7:]).write_bytes(raw)
    index_doc = json.loads((layout / "index.json").read_bytes())
    index_doc["manifests"][0].update(digest=_sha(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index_doc))


def test_zstd_and_plain_layers_import_with_their_digests_and_round_trip(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"mixed:1": RICH_LAYERS}, codecs=MIXED)["mixed:1"]
    info = import_image(store, layout)
    m = manifest_of(store, "mixed:1")
    assert info.digest == want["manifest"] and info.layers == want["diff_ids"]
    assert [(lay["digest"], lay["mediaType"]) for lay in m["layers"]] == list(zip(want["layers"], [GZIP, ZSTD, TAR],
                                                                                  strict=True))
    # export keeps every blob as it is: a re-import has the same digests, a re-export the same bytes
    out = tmp_path / "mixed.tar"
    export_image(store, "mixed:1", out)
    with tarfile.open(out) as tf:
        zblob = tf.extractfile(f"blobs/sha256/{want['layers'][1][7:]}").read()  # type: ignore[union-attr]
    assert zblob == (layout / "blobs/sha256" / want["layers"][1][7:]).read_bytes()
    again = ImageStore(tmp_path / "again")
    info2 = import_image(again, out)
    assert (info2.name, info2.digest, info2.layers) == (info.name, info.digest, info.layers)
    assert manifest_of(again, "mixed:1") == m
    export_image(again, "mixed:1", tmp_path / "again.tar")
    assert (tmp_path / "again.tar").read_bytes() == out.read_bytes()


def test_docker_archive_export_decompresses_zstd_layers_and_reimports(store: ImageStore, tmp_path: Path) -> None:
    want = write_oci_layout(tmp_path / "layout", {"mixed:2": RICH_LAYERS}, codecs=MIXED)["mixed:2"]
    info = import_image(store, tmp_path / "layout")
    out = tmp_path / "d.tar"
    export_image(store, "mixed:2", out, "docker-archive")
    with tarfile.open(out) as tf:
        entry = json.load(tf.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        for lname, diff_id in zip(entry["Layers"], want["diff_ids"], strict=True):
            assert _sha(tf.extractfile(lname).read()) == diff_id  # type: ignore[union-attr]
    again = ImageStore(tmp_path / "again")
    info2 = import_image(again, out)
    assert info2.layers == info.layers and manifest_of(again, "mixed:2")["config"] == manifest_of(store, "mixed:2")[
        "config"]


def test_docker_archive_with_zstd_layers_imports_as_zstd(store: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "dz.tar"
    want = write_docker_archive(path, RICH_LAYERS, ["localhost/z:1"], codec="zstd")
    info = import_image(store, path)
    assert info.layers == want["diff_ids"]
    assert {lay["mediaType"] for lay in manifest_of(store, info.name)["layers"]} == {ZSTD}


def test_concatenated_zstd_frames_are_one_layer(tmp_path: Path) -> None:
    tar = layer_bytes([E("file", f"f{i}", os.urandom(3000)) for i in range(20)])
    skippable = struct.pack("<II", 0x184D2A5E, 6) + b"meta:1"      # metadata frames (zstd:chunked has some)
    blob = skippable + compress(tar, "zstd-frames") + skippable
    assert blob.count(b"\x28\xb5\x2f\xfd") >= 3
    (tmp_path / "blob").write_bytes(blob)
    with LayerReader(tmp_path / "blob") as reader:
        assert reader.read() == tar
        reader.drain()
    assert (reader.digest, reader.diff_id, reader.compression) == (_sha(blob), _sha(tar), "zstd")


@as_root
def test_zstd_layers_unpack_with_whiteouts_links_and_xattrs(store: ImageStore, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"rich": [*RICH_LAYERS, [E("file", "etc/frames", b"f" * 100_000)]]},
                     codecs=[*MIXED, "zstd-frames"])
    import_image(store, tmp_path / "layout")
    *rich, frames = store.layer_paths("rich")
    assert_rich_unpacked(*rich)
    assert (frames / "etc/frames").read_bytes() == b"f" * 100_000


# -- bad zstd blobs -----------------------------------------------------------------------------------------------

def test_flipped_byte_in_a_zstd_blob_is_refused_on_import(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", os.urandom(5000))]]}, codecs=["zstd"])["x"]
    blob = layout / "blobs/sha256" / want["layers"][0][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"layer {want['layers'][0]}: content hashes to sha256:"):
        import_image(store, layout)
    assert_empty(store)


def test_corrupt_zstd_stream_in_a_docker_archive_is_refused_with_nothing_left(store: ImageStore,
                                                                              tmp_path: Path) -> None:
    for codec, damage, error in (("zstd", lambda b: b[:-7], "zstd stream is truncated"),
                                 ("zstd", lambda b: b[:12] + bytes(40) + b[52:], "corrupt zstd stream")):
        path = tmp_path / "d.tar"
        tar = layer_bytes([E("file", "a", os.urandom(5000))])
        blob = damage(compress(tar, codec))
        cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]}}
        raw = json.dumps(cfg).encode()
        files = {f"{_sha(raw)[7:]}.json": raw, "l.tar.zst": blob,
                 "manifest.json": json.dumps([{"Config": f"{_sha(raw)[7:]}.json", "RepoTags": ["d:1"],
                                               "Layers": ["l.tar.zst"]}]).encode()}
        with tarfile.open(path, "w") as tf:
            for n, data in files.items():
                ti = tarfile.TarInfo(n)
                ti.size = len(data)
                tf.addfile(ti, __import__("io").BytesIO(data))
        with pytest.raises(InvalidArgument, match=f"'l.tar.zst'.*{error}"):
            import_image(store, path)
        assert_empty(store)


def test_corrupt_zstd_stream_of_a_layout_is_caught_before_its_layer_dir_lands(store: ImageStore,
                                                                              tmp_path: Path) -> None:
    # the layout is self-consistent (the broken blob is named by its own digest): only the unpack can tell
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", os.urandom(5000))]]}, codecs=["zstd"])["x"]
    good = (layout / "blobs/sha256" / want["layers"][0][7:]).read_bytes()
    bad = good[:-9]
    _rewrite_blob(layout, want, 0, bad)
    import_image(store, layout)
    with pytest.raises(InvalidArgument, match=f"layer {_sha(bad)}: zstd stream is truncated"):
        store.layer_paths("x")
    assert list(store.layers_dir.iterdir()) == [] and list(store.tmp.iterdir()) == []


def test_media_type_must_match_the_blob_and_be_a_tar_layer(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", b"a")]]}, codecs=["gzip"])["x"]
    man_path = layout / "blobs/sha256" / want["manifest"][7:]
    man = json.loads(man_path.read_bytes())

    def relabel(media: str) -> None:
        man["layers"][0]["mediaType"] = media
        raw = json.dumps(man).encode()
        for p in (layout / "blobs/sha256").iterdir():
            if p.name not in (want["layers"][0][7:], want["config"][7:]):
                p.unlink()
        (layout / "blobs/sha256" / _sha(raw)[7:]).write_bytes(raw)
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(raw), "size": len(raw),
             "annotations": {"org.opencontainers.image.ref.name": "x"}}]}))

    relabel(ZSTD)
    with pytest.raises(InvalidArgument, match="its media type says zstd-compressed, but the blob is gzip-compressed"):
        import_image(store, layout)
    assert_empty(store)
    relabel("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    with pytest.raises(InvalidArgument, match=r"media type '.*\+encrypted', which virtkit cannot unpack"):
        import_image(store, layout)
    assert_empty(store)
    relabel("application/vnd.docker.image.rootfs.diff.tar.gzip")      # Docker's name of the same thing
    assert import_image(store, layout).layers == want["diff_ids"]


def test_unsafe_entries_in_a_zstd_layer_are_refused(store: ImageStore, tmp_path: Path, sentinel: Sentinel) -> None:
    rel = os.path.relpath(sentinel.file, store.layers_dir)
    cases = [([E("file", rel, b"owned")], "'..' component"),
             ([E("symlink", "esc", link=str(sentinel.dir)), E("file", "esc/sentinel", b"owned")], "is a symlink"),
             ([E("hardlink", "h", link=rel)], "'..' component"),
             ([E("chr", "dev/mem")], "device nodes are not allowed")]
    for i, (entries, error) in enumerate(cases):
        write_oci_layout(tmp_path / f"l{i}", {f"bad{i}": [entries]}, codecs=["zstd"])
        import_image(store, tmp_path / f"l{i}")
        with pytest.raises(UnsafeArchive, match=error):
            store.layer_paths(f"bad{i}")
        assert list(store.layers_dir.iterdir()) == []


# -- interop: skopeo writes zstd layers, and reads ours back ------------------------------------------------------

def test_skopeo_zstd_oci_layout_imports_and_our_export_reads_back(store: ImageStore, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    want = write_docker_archive(tmp_path / "d.tar", RICH_LAYERS, ["localhost/rich:v1"])
    r = subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "zstd",
                        f"docker-archive:{tmp_path / 'd.tar'}", f"oci:{tmp_path / 'sk'}:rich:z"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "zstd" in r.stderr:
        pytest.skip(f"this skopeo cannot write zstd layers: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    info = import_image(store, tmp_path / "sk", name="skz")
    assert info.layers == want["diff_ids"]
    layers = manifest_of(store, "skz")["layers"]
    assert {lay["mediaType"] for lay in layers} == {ZSTD}
    for lay in layers:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(store.read_blob(lay["digest"]))
    if os.geteuid() == 0:
        top = store.layer_paths("skz")[-1]
        assert (top / "etc/hello").read_bytes() == b"hello from layer 2\n"
    export_image(store, "skz", tmp_path / "ours.tar")
    r = subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{tmp_path / 'ours.tar'}",
                        f"oci:{tmp_path / 'back'}:skz"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    back = json.loads((tmp_path / "back/index.json").read_bytes())["manifests"][0]
    assert back["digest"] == info.digest                       # skopeo kept our zstd blobs as they are


def test_podman_loads_our_export_of_a_zstd_image(store: ImageStore, tmp_path: Path) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    want = write_oci_layout(tmp_path / "layout", {"localhost/zrich:1": RICH_LAYERS}, codecs=MIXED)["localhost/zrich:1"]
    import_image(store, tmp_path / "layout")
    export_image(store, "localhost/zrich:1", tmp_path / "z.tar")
    base = tempfile.mkdtemp(prefix="vkpmz-", dir="/tmp")          # podman wants a short runroot
    podman = ["podman", "--root", f"{base}/root", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
              "--storage-driver", "vfs"]
    try:
        r = subprocess.run([*podman, "load", "-i", str(tmp_path / "z.tar")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "localhost/zrich:1" in r.stdout, r.stderr
        r = subprocess.run([*podman, "image", "inspect", "localhost/zrich:1"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["RootFS"]["Layers"] == want["diff_ids"]
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
