"""ImageStore: OCI layout round trip, verified reads, shared unpacked layers, garbage collection."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from images_helpers import E

from virtkit.core.errors import IntegrityError, InvalidArgument, NotFound, UnsafeArchive
from virtkit.images import unpack as unpack_mod
from virtkit.images.store import ImageStore

CONFIG = {"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}}


def _blob_names(store: ImageStore) -> set[str]:
    return {p.name for p in store.blobs.iterdir()}


def _layer_dirs(store: ImageStore) -> set[str]:
    return {p.name for p in store.layers_dir.iterdir() if p.is_dir()}


def test_round_trip_writes_a_real_oci_layout(store: ImageStore, tar_factory) -> None:
    base = tar_factory([E("dir", "etc"), E("file", "etc/hello", b"hi\n")])
    top = tar_factory([E("file", "etc/motd", b"welcome\n")])
    info = store.add_image("demo", [base, top], CONFIG)

    assert info.name == "demo:latest"
    assert info.layers == [f"sha256:{hashlib.sha256(t.read_bytes()).hexdigest()}" for t in (base, top)]
    assert info.config["config"]["Cmd"] == ["sh"]
    assert info.config["architecture"] == "amd64" and info.config["os"] == "linux"
    assert info.config["rootfs"] == {"type": "layers", "diff_ids": info.layers}
    assert len(info.config["history"]) == 2
    assert info.created == info.config["created"] and info.created.endswith("Z")

    layout = json.loads((store.oci / "oci-layout").read_text())
    assert layout == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.oci / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["demo:latest"]
    assert index["manifests"][0]["digest"] == info.digest
    manifest = json.loads(store.read_blob(info.digest))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 2
    assert info.size == sum(layer["size"] for layer in manifest["layers"])
    # Every blob is named by the sha256 of its bytes.
    for p in store.blobs.iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name

    assert store.exists("demo") and store.exists("demo:latest") and not store.exists("demo:other")
    assert store.get("demo") == store.get("demo:latest") == info
    assert [i.name for i in store.list()] == ["demo:latest"]
    # A second store object on the same root sees the same image.
    assert ImageStore(store.root).get("demo").digest == info.digest


def test_missing_and_invalid_names(store: ImageStore) -> None:
    with pytest.raises(NotFound, match="image 'nope' not found"):
        store.get("nope")
    with pytest.raises(NotFound):
        store.remove("nope")
    with pytest.raises(InvalidArgument, match="name"):
        store.get("Bad Name!")
    with pytest.raises(InvalidArgument, match="digest"):
        store.read_blob("md5:abc")


def test_add_image_rejects_a_non_tar(store: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgument, match=r"layer_tars\[0\]"):
        store.add_image("x", [junk], {})
    assert not store.exists("x")
    assert _blob_names(store) == set()


def test_flipped_byte_is_an_integrity_error(store: ImageStore, tar_factory) -> None:
    info = store.add_image("demo", [tar_factory([E("file", "a", b"a" * 4096)])], CONFIG)
    layer_digest = json.loads(store.read_blob(info.digest))["layers"][0]["digest"]
    path = store.blobs / layer_digest.removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=layer_digest):
        store.read_blob(layer_digest)
    with pytest.raises(IntegrityError, match=layer_digest):
        store.layer_paths("demo")
    assert _layer_dirs(store) == set()  # nothing was unpacked from the bad blob

    config_digest = json.loads(store.read_blob(info.digest))["config"]["digest"]
    cpath = store.blobs / config_digest.removeprefix("sha256:")
    cpath.write_bytes(cpath.read_bytes().replace(b'"sh"', b'"xx"'))
    with pytest.raises(IntegrityError, match=config_digest):
        store.get("demo")


def test_a_blob_read_before_is_verified_again_once_changed(store: ImageStore, tar_factory) -> None:
    info = store.add_image("demo", [tar_factory([E("file", "a", b"a")])], CONFIG)
    for _ in range(2):      # the second read is the remembered one
        assert store.get("demo").config["config"]["Cmd"] == CONFIG["config"]["Cmd"]
    config_digest = json.loads(store.read_blob(info.digest))["config"]["digest"]
    cpath = store.blobs / config_digest.removeprefix("sha256:")
    good = cpath.read_bytes()
    cpath.write_bytes(good.replace(b'"sh"', b'"xx"'))
    with pytest.raises(IntegrityError, match=config_digest):
        store.get("demo")
    cpath.write_bytes(good)
    assert store.get("demo").config["config"]["Cmd"] == CONFIG["config"]["Cmd"]


def test_layers_are_unpacked_once_and_shared(store: ImageStore, tar_factory, monkeypatch) -> None:
    shared = tar_factory([E("dir", "usr"), E("file", "usr/shared", b"shared\n", mode=0o640)])
    a_top = tar_factory([E("file", "a", b"A")])
    b_top = tar_factory([E("file", "b", b"B")])
    store.add_image("a", [shared, a_top], CONFIG)
    store.add_image("b", [shared, b_top], CONFIG)

    calls: list[Path] = []
    real = unpack_mod.unpack_layer_report

    def counting(tar, dest, lower_layers=(), **kw):
        calls.append(Path(dest))
        return real(tar, dest, lower_layers, **kw)

    monkeypatch.setattr(unpack_mod, "unpack_layer_report", counting)
    pa = store.layer_paths("a")
    assert len(calls) == 2
    assert (pa[0] / "usr" / "shared").read_bytes() == b"shared\n"
    assert (pa[0] / "usr" / "shared").stat().st_mode & 0o777 == 0o640
    assert (pa[1] / "a").read_bytes() == b"A"
    inode = (pa[0] / "usr" / "shared").stat().st_ino

    pb = store.layer_paths("b")
    assert len(calls) == 3  # only b's own top layer was unpacked
    assert pb[0] == pa[0] and (pb[0] / "usr" / "shared").stat().st_ino == inode
    assert store.layer_paths("a") == pa and len(calls) == 3
    assert pa[0].name == store.get("a").layers[0].removeprefix("sha256:")
    # No temp dirs are left behind next to the layers.
    assert all(not n.startswith(".") for n in _layer_dirs(store))


def test_remove_collects_only_unreferenced_content(store: ImageStore, tar_factory) -> None:
    shared = tar_factory([E("file", "shared", b"S")])
    a = store.add_image("a", [shared, tar_factory([E("file", "only-a", b"A")])], CONFIG)
    b = store.add_image("b", [shared, tar_factory([E("file", "only-b", b"B")])], CONFIG)
    store.layer_paths("a")
    store.layer_paths("b")
    assert len(_layer_dirs(store)) == 3

    def blobs_of(info) -> set[str]:
        m = json.loads(store.read_blob(info.digest))
        return {d.removeprefix("sha256:") for d in
                [info.digest, m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]}

    a_blobs, b_blobs = blobs_of(a), blobs_of(b)
    store.remove("a")
    assert not store.exists("a") and store.exists("b")
    assert _blob_names(store) == b_blobs
    assert _layer_dirs(store) == {d.removeprefix("sha256:") for d in b.layers}
    assert a_blobs & b_blobs  # the shared layer blob survived
    assert (store.layer_paths("b")[1] / "only-b").read_bytes() == b"B"

    store.remove("b:latest")
    assert store.list() == []
    assert _blob_names(store) == set() and list(store.layers_dir.iterdir()) == []


def test_add_replaces_a_ref_and_prune_collects_the_old_image(store: ImageStore, tar_factory) -> None:
    old = store.add_image("x:1", [tar_factory([E("file", "v", b"1")])], CONFIG)
    old_layer = store.layer_paths("x:1")[0]
    new = store.add_image("x:1", [tar_factory([E("file", "v", b"2")])], CONFIG)
    assert new.digest != old.digest
    assert [i.digest for i in store.list()] == [new.digest]
    # A stopped instance made from the old x:1 still has its layers as lowerdirs: kept until prune says so.
    assert old.digest.removeprefix("sha256:") in _blob_names(store) and old_layer.is_dir()
    freed = store.prune(in_use={"x:1"})
    assert freed["images"] == [] and old_layer.is_dir()
    freed = store.prune(in_use=set())
    assert freed["images"] == [old.digest] and freed["blobs"] == 3 and freed["layers"] == 1
    assert freed["bytes"] > 0
    assert old.digest.removeprefix("sha256:") not in _blob_names(store)
    assert _layer_dirs(store) == set()
    assert (store.layer_paths("x:1")[0] / "v").read_bytes() == b"2"
    assert store.prune()["blobs"] == 0


def test_unsafe_layer_leaves_no_layer_dir(store: ImageStore, tar_factory, sentinel) -> None:
    bad = tar_factory([E("file", "ok", b"fine"), E("symlink", "out", link=str(sentinel.dir)),
                       E("file", "out/pwned", b"x")])
    store.add_image("bad", [bad], CONFIG)
    with pytest.raises(UnsafeArchive, match="out/pwned"):
        store.layer_paths("bad")
    assert _layer_dirs(store) == set()


def test_stale_temp_leftovers_are_cleaned_on_open(store: ImageStore) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_dir = store.layers_dir / f".tmp-{dead.pid}-abc"
    (stale_dir / "half").mkdir(parents=True)
    stale_file = store.tmp / f".tmp-{dead.pid}-def"
    stale_file.write_bytes(b"partial")
    live = store.layers_dir / f".tmp-{os.getpid()}-live"
    live.mkdir()

    ImageStore(store.root)
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists()  # may be an unpack in progress in this very process
    live.rmdir()


def test_shared_layer_is_rechecked_against_another_images_lowers(store: ImageStore, tar_factory,
                                                                  sentinel) -> None:
    # The top layer writes lib/x without naming lib/ itself: harmless over a plain base...
    top = tar_factory([E("file", "lib/x", b"x")])
    store.add_image("benign", [tar_factory([E("dir", "etc")]), top], CONFIG)
    assert (store.layer_paths("benign")[1] / "lib" / "x").read_bytes() == b"x"
    # ...but over a base where lib is a symlink it would write through it, so reuse is refused too.
    store.add_image("evil", [tar_factory([E("symlink", "lib", link=str(sentinel.dir))]), top], CONFIG)
    with pytest.raises(UnsafeArchive, match="lib"):
        store.layer_paths("evil")


def test_concurrent_writers_lose_no_ref(store: ImageStore, tar_factory) -> None:
    tars = [tar_factory([E("file", f"f{i}", str(i).encode())]) for i in range(6)]
    code = ("import sys; from virtkit.images.store import ImageStore; "
            "ImageStore(sys.argv[1]).add_image(sys.argv[2], [sys.argv[3]], {})")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.root), f"img{i}", str(t)])
             for i, t in enumerate(tars)]
    assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
    assert [i.name for i in store.list()] == [f"img{i}:latest" for i in range(6)]
    assert [p.name for p in store.tmp.iterdir()] == []


def test_layers_unpacked_together_still_refuse_writing_through_a_lower_symlink(store: ImageStore, tar_factory,
                                                                               sentinel) -> None:
    lower = tar_factory([E("file", "ok", b"fine"), E("symlink", "etc", link=str(sentinel.dir))])
    middle = tar_factory([E("file", "m", b"m")])
    upper = tar_factory([E("file", "etc/pwned", b"x")])      # names etc/ only implicitly
    store.add_image("bad", [lower, middle, upper], CONFIG)
    with pytest.raises(UnsafeArchive, match="'etc' is a symlink in a lower layer"):
        store.layer_paths("bad")
    assert _layer_dirs(store) == set()       # none of the three lands, though all were unpacked
    assert list(store.layers_dir.iterdir()) == []
    # The same upper layer over a safe lower is fine, and shares nothing it should not.
    store.add_image("good", [tar_factory([E("dir", "etc")]), upper], CONFIG)
    assert (store.layer_paths("good")[1] / "etc/pwned").read_bytes() == b"x"


def test_add_image_on_a_base_takes_its_blobs_as_they_are(store: ImageStore, tar_factory) -> None:
    info = store.add_image("base", [tar_factory([E("file", "a", b"a")])], CONFIG)
    manifest = json.loads(store.read_blob(info.digest))
    # a base whose layer descriptor uses Docker's name for a gzip layer: the new image names it the OCI way
    manifest["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    raw = json.dumps(manifest).encode()
    docker_base = store.commit("docker-base", {"digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                                               "mediaType": manifest["mediaType"], "size": len(raw)},
                               _staged(store, raw))
    blobs = _blob_names(store)
    top = tar_factory([E("file", "b", b"b")])
    new = store.add_image("derived", [top], CONFIG, base=docker_base.digest)
    derived = json.loads(store.read_blob(new.digest))
    assert derived["layers"][0] == {**manifest["layers"][0], "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
    assert new.layers == [*info.layers, "sha256:" + hashlib.sha256(top.read_bytes()).hexdigest()]
    assert len(_blob_names(store) - blobs) == 3            # the new layer, its config, its manifest

    before = _blob_names(store)
    with pytest.raises(NotFound, match="base image sha256:0000.*was it removed"):
        store.add_image("orphan", [top], CONFIG, base="sha256:" + "0" * 64)
    assert not store.exists("orphan") and _blob_names(store) == before


def _staged(store: ImageStore, raw: bytes) -> dict[str, Path]:
    path = store.tmp / "staged-manifest"
    path.write_bytes(raw)
    return {hashlib.sha256(raw).hexdigest(): path}
