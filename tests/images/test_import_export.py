"""Import (OCI layout dir/tar, docker-archive) and export (OCI tar, docker-archive) of images: round trips,
verification of every digest, and bad input that leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from images_helpers import (
    RICH_LAYERS,
    E,
    as_root,
    assert_empty,
    assert_rich_unpacked,
    layer_bytes,
    manifest_of,
    tar_dir,
    write_docker_archive,
    write_oci_layout,
)

from virtkit.core.errors import IntegrityError, InvalidArgument, NotFound, UnsafeArchive
from virtkit.images.exporter import export_image
from virtkit.images.importer import import_image
from virtkit.images.store import ImageStore


def test_oci_layout_dir_and_tar_import_keep_every_digest(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"demo:1": RICH_LAYERS})["demo:1"]
    info = import_image(store, layout)
    assert info.name == "demo:1" and info.digest == want["manifest"]
    m = manifest_of(store, "demo:1")
    assert m["config"]["digest"] == want["config"]
    assert [lay["digest"] for lay in m["layers"]] == want["layers"]
    assert info.layers == want["diff_ids"]
    assert info.config["config"]["Cmd"] == ["sh"]

    other = ImageStore(tmp_path / "other")
    info2 = import_image(other, tar_dir(layout, tmp_path / "layout.tar"), name="copy")
    assert info2.name == "copy:latest" and info2.digest == want["manifest"]
    assert list(other.tmp.iterdir()) == []


@as_root
def test_imported_layers_unpack_with_whiteouts_links_and_xattrs(store: ImageStore, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"rich": RICH_LAYERS})
    import_image(store, tmp_path / "layout")
    assert_rich_unpacked(*store.layer_paths("rich"))


def test_docker_archive_import_plain_and_gzip_layers(store: ImageStore, tmp_path: Path) -> None:
    for gz in (False, True):
        path = tmp_path / f"docker-{gz}.tar"
        want = write_docker_archive(path, RICH_LAYERS, ["localhost/rich:v1"], gz=gz)
        info = import_image(store, path)
        assert info.name == "localhost/rich:v1"
        assert info.layers == want["diff_ids"]
        m = manifest_of(store, info.name)
        assert m["config"]["digest"] == want["config"]
        kinds = {lay["mediaType"].rsplit(".", 1)[-1] for lay in m["layers"]}
        assert kinds == ({"tar+gzip"} if gz else {"tar"})
        for layer in m["layers"]:
            store.verify_blob_file(layer["digest"])
        store.remove(info.name)


def test_export_oci_then_import_round_trips_byte_identically(store: ImageStore, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"demo": RICH_LAYERS})
    info = import_image(store, tmp_path / "layout")
    out1, out2 = tmp_path / "a.tar", tmp_path / "b.tar"
    res = export_image(store, "demo", out1)
    export_image(store, "demo", out2, "oci")
    assert res["digest"] == info.digest and res["size"] == out1.stat().st_size
    assert out1.read_bytes() == out2.read_bytes()   # deterministic archive

    again = ImageStore(tmp_path / "again")
    info2 = import_image(again, out1)
    assert (info2.name, info2.digest, info2.layers) == (info.name, info.digest, info.layers)
    for d in [info.digest, *(layer["digest"] for layer in manifest_of(store, "demo")["layers"])]:
        assert again.read_blob(d) == store.read_blob(d)
    export_image(again, "demo", tmp_path / "c.tar")
    assert (tmp_path / "c.tar").read_bytes() == out1.read_bytes()


def test_export_docker_archive_round_trips(store: ImageStore, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"demo:2": RICH_LAYERS})   # gzip layers in, plain tar layers out
    info = import_image(store, tmp_path / "layout")
    out = tmp_path / "d.tar"
    export_image(store, "demo:2", out, "docker-archive")
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["demo:2"]
        for lname, diff_id in zip(manifest[0]["Layers"], info.layers, strict=True):
            data = tf.extractfile(lname).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
    again = ImageStore(tmp_path / "again")
    info2 = import_image(again, out)
    assert info2.name == "demo:2" and info2.layers == info.layers
    assert manifest_of(again, "demo:2")["config"] == manifest_of(store, "demo:2")["config"]
    export_image(again, "demo:2", tmp_path / "e.tar", "docker-archive")
    assert (tmp_path / "e.tar").read_bytes() == out.read_bytes()


def test_name_choice_among_several_images(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, {"one:1": [[E("file", "a", b"1")]], "two:2": [[E("file", "a", b"2")]]})
    with pytest.raises(InvalidArgument, match=r"several images.*one:1, two:2.*--name"):
        import_image(store, layout)
    with pytest.raises(InvalidArgument, match="no image named 'three:latest'"):
        import_image(store, layout, name="three")
    assert import_image(store, layout, name="two:2").name == "two:2"
    unnamed = tmp_path / "unnamed"
    write_oci_layout(unnamed, {None: [[E("file", "a", b"x")]]})
    with pytest.raises(InvalidArgument, match="no name.*--name"):
        import_image(store, unnamed)
    assert import_image(store, unnamed, name="given").name == "given:latest"


# -- bad input: each a clear error, and nothing left in the store -----------------------------------------

def test_missing_file_and_non_tar(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="path: .*nope.tar does not exist"):
        import_image(store, tmp_path / "nope.tar")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidArgument, match="is not a tar archive"):
        import_image(store, junk)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(InvalidArgument, match="neither an OCI image layout .* nor a docker-archive"):
        import_image(store, empty_dir)
    assert_empty(store)


def test_traversal_in_the_archive_is_refused(store: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "evil.tar"
    write_docker_archive(path, [[E("file", "a", b"a")]], ["evil:1"], extra=[("../../escape", b"x")])
    with pytest.raises(UnsafeArchive, match=r"'\.\./\.\./escape'.*traversal"):
        import_image(store, path)
    assert not (tmp_path.parent / "escape").exists()
    # A layout directory whose blob is a symlink to a file outside it.
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", b"a")]]})["x"]
    blob = layout / "blobs/sha256" / want["layers"][0][7:]
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(UnsafeArchive, match="resolves outside the layout"):
        import_image(store, layout)
    assert_empty(store)


def test_unsafe_layer_content_is_refused_on_unpack_with_nothing_left(store: ImageStore, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"bad": [[E("file", "../../etc/owned", b"x")]]})
    import_image(store, tmp_path / "layout")
    with pytest.raises(UnsafeArchive, match="'..' component"):
        store.layer_paths("bad")
    assert list(store.layers_dir.iterdir()) == []


def test_manifest_pointing_at_a_missing_blob(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", b"a")], [E("file", "b", b"b")]]})["x"]
    (layout / "blobs/sha256" / want["layers"][1][7:]).unlink()
    with pytest.raises(InvalidArgument, match=f"layer {want['layers'][1]}.* is missing"):
        import_image(store, layout)
    assert_empty(store)
    (layout / "blobs/sha256" / want["config"][7:]).unlink()
    with pytest.raises(InvalidArgument, match=f"config {want['config']}.* is missing"):
        import_image(store, tar_dir(layout, tmp_path / "l.tar"))
    assert_empty(store)


def test_wrong_digests_are_integrity_errors(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", b"a" * 1000)]]})["x"]
    blob = layout / "blobs/sha256" / want["layers"][0][7:]
    good = blob.read_bytes()
    blob.write_bytes(good[:-5] + bytes(5))
    with pytest.raises(IntegrityError, match=f"layer {want['layers'][0]}: content hashes to sha256:"):
        import_image(store, layout)
    assert_empty(store)
    blob.write_bytes(good)
    man = layout / "blobs/sha256" / want["manifest"][7:]
    man.write_bytes(man.read_bytes() + b" ")
    with pytest.raises(IntegrityError, match=f"manifest {want['manifest']}"):
        import_image(store, layout)
    assert_empty(store)
    # docker-archive: a layer that is not what the config's diff_id says
    path = tmp_path / "d.tar"
    write_docker_archive(path, [[E("file", "a", b"a")]], ["d:1"])
    with tarfile.open(path) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    members["00/layer.tar"] = tarfile_bytes([E("file", "a", b"tampered")])
    with tarfile.open(path, "w") as tf:
        for n, data in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tf.addfile(ti, __import__("io").BytesIO(data))
    with pytest.raises(IntegrityError, match="'00/layer.tar': its tar hashes to .* but the image config says"):
        import_image(store, path)
    assert_empty(store)


def test_layer_that_is_not_a_tar(store: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "d.tar"
    write_docker_archive(path, [[E("file", "a", b"a")]], ["d:1"])
    with tarfile.open(path) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    members["00/layer.tar"] = b"this is no tar" * 100
    with tarfile.open(path, "w") as tf:
        for n, data in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tf.addfile(ti, __import__("io").BytesIO(data))
    with pytest.raises(InvalidArgument, match="'00/layer.tar'.*is not a tar archive"):
        import_image(store, path)
    assert_empty(store)


def test_diff_id_mismatch_in_an_oci_layout_is_caught_before_the_layer_dir_lands(store: ImageStore,
                                                                                 tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    want = write_oci_layout(layout, {"x": [[E("file", "a", b"a")]]},
                            config_extra={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})["x"]
    assert want["diff_ids"]
    import_image(store, layout)
    with pytest.raises(IntegrityError, match="diff_id is sha256:0000"):
        store.layer_paths("x")
    assert [p.name for p in store.layers_dir.iterdir()] == []


def test_flipped_byte_in_an_imported_blob_is_detected_on_use(store: ImageStore, tmp_path: Path) -> None:
    want = write_oci_layout(tmp_path / "layout", {"x": [[E("file", "a", os.urandom(50_000))]]})["x"]
    import_image(store, tmp_path / "layout")
    blob = store.blobs / want["layers"][0][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"blob {want['layers'][0]} is corrupt"):
        store.layer_paths("x")
    with pytest.raises(IntegrityError, match="is corrupt"):
        export_image(store, "x", tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tar")] == []


def test_export_errors(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        export_image(store, "nope", tmp_path / "x.tar")
    write_oci_layout(tmp_path / "layout", {"x": [[E("file", "a", b"a")]]})
    import_image(store, tmp_path / "layout")
    with pytest.raises(InvalidArgument, match="format: 'zip'"):
        export_image(store, "x", tmp_path / "x.tar", "zip")
    with pytest.raises(InvalidArgument, match="does not exist"):
        export_image(store, "x", tmp_path / "no/such/dir/x.tar")


def tarfile_bytes(entries: list[E]) -> bytes:
    from images_helpers import layer_bytes

    return layer_bytes(entries)




def _skopeo_dir(layout: Path, dest: Path, manifest_digest: str) -> Path:
    """What `skopeo copy ... dir:DEST` writes: the manifest as manifest.json, every blob named by its hex."""
    dest.mkdir()
    for blob in (layout / "blobs/sha256").iterdir():
        (dest / blob.name).write_bytes(blob.read_bytes())
    (dest / "manifest.json").write_bytes((layout / "blobs/sha256" / manifest_digest[7:]).read_bytes())
    (dest / "version").write_text("Directory Transport Version: 1.1\n")
    return dest


def test_skopeo_dir_layout_imports(store: ImageStore, tmp_path: Path) -> None:
    want = write_oci_layout(tmp_path / "layout", {"x": RICH_LAYERS})["x"]
    src = _skopeo_dir(tmp_path / "layout", tmp_path / "dir", want["manifest"])
    with pytest.raises(InvalidArgument, match="has no name in the archive; give one with --name"):
        import_image(store, src)
    assert_empty(store)
    info = import_image(store, src, name="fromdir")
    assert (info.digest, info.layers) == (want["manifest"], want["diff_ids"])
    (src / want["layers"][2][7:]).unlink()
    with pytest.raises(InvalidArgument, match=f"layer {want['layers'][2]}.* is missing"):
        import_image(ImageStore(tmp_path / "other"), src, name="broken")
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo): its own dir: output is not tried")
    d = write_docker_archive(tmp_path / "d.tar", RICH_LAYERS, ["localhost/rich:v1"])
    r = subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{tmp_path / 'd.tar'}",
                        f"dir:{tmp_path / 'skopeo'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert import_image(store, tmp_path / "skopeo", name="skopeo-dir").layers == d["diff_ids"]
    # skopeo labels these plain tars with Docker's gzip media type: an image built on them says what they are
    top = tmp_path / "top.tar"
    top.write_bytes(layer_bytes([E("file", "new", b"n")]))
    derived = store.add_image("derived", [top], {}, base=store.get("skopeo-dir").digest)
    assert {lay["mediaType"] for lay in manifest_of(store, derived.name)["layers"][:3]} == {
        "application/vnd.oci.image.layer.v1.tar"}
