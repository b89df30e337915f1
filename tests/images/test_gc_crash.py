"""Garbage collection under concurrent imports and use (threads and processes), and kill -9 during imports."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from images_helpers import E, write_oci_layout

from virtkit.images.importer import import_image
from virtkit.images.store import ImageStore

HERE = Path(__file__).parent


def referenced_blobs(store: ImageStore) -> set[str]:
    """Every blob the index reaches, each verified (a half image would fail here)."""
    seen: set[str] = set()
    for entry in json.loads((store.oci / "index.json").read_text())["manifests"]:
        manifest = json.loads(store.read_blob(entry["digest"]))
        store.read_blob(manifest["config"]["digest"])
        seen |= {entry["digest"][7:], manifest["config"]["digest"][7:]}
        for layer in manifest["layers"]:
            store.verify_blob_file(layer["digest"])
            seen.add(layer["digest"][7:])
    return seen


def make_layouts(tmp_path: Path, n: int, big: int = 0) -> list[Path]:
    base = [E("dir", "usr"), E("file", "usr/shared", b"shared base layer\n")]
    out = []
    for i in range(n):
        layout = tmp_path / f"layout{i}"
        top = [E("file", f"only-{i}", os.urandom(big) if big else f"image {i}\n".encode())]
        write_oci_layout(layout, {f"img{i}": [base, top]})
        out.append(layout)
    return out


def test_prune_under_concurrent_imports_and_use_threads(store: ImageStore, tmp_path: Path) -> None:
    layouts = make_layouts(tmp_path, 6)
    import_image(store, layouts[0], name="stable")
    stable_layers = store.layer_paths("stable")
    errors: list[BaseException] = []
    stop = threading.Event()

    def guard(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: B036 - reported by the test
                errors.append(exc)
                stop.set()
        return run

    @guard
    def importer() -> None:
        for round_ in range(8):
            for i, layout in enumerate(layouts[1:], 1):
                info = import_image(store, layout, name=f"img{i}")
                paths = store.layer_paths(info.name)     # used right after import: must all be there
                assert (paths[-1] / f"only-{i}").is_file()
                if round_ % 2:
                    store.remove(info.name)

    @guard
    def pruner() -> None:
        while not stop.is_set():
            store.prune(in_use={"stable"})

    @guard
    def user() -> None:
        while not stop.is_set():
            assert store.layer_paths("stable") == stable_layers
            assert (stable_layers[0] / "usr/shared").is_file()

    threads = [threading.Thread(target=t) for t in (pruner, user)]
    for t in threads:
        t.start()
    importer()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    store.prune(in_use={"stable"})
    assert {p.name for p in store.blobs.iterdir()} == referenced_blobs(store)
    assert {i.name for i in store.list()} == {"stable:latest"}
    assert len([p for p in store.layers_dir.iterdir() if p.is_dir()]) == 2


_IMPORT_LOOP = """
import sys
sys.path.insert(0, {here!r})
from virtkit.images.importer import import_image
from virtkit.images.store import ImageStore
store = ImageStore({root!r})
layouts = {layouts!r}
n = 0
while True:
    for i, layout in enumerate(layouts):
        import_image(store, layout, name=f"img{{i}}-{{n % 3}}")
        store.layer_paths(f"img{{i}}-{{n % 3}}")
        n += 1
        if n % 4 == 0:
            store.remove(f"img{{i}}-{{(n + 1) % 3}}") if store.exists(f"img{{i}}-{{(n + 1) % 3}}") else None
"""


def _import_loop(root: Path, layouts: list[Path]) -> subprocess.Popen:
    code = _IMPORT_LOOP.format(here=str(HERE), root=str(root), layouts=[str(p) for p in layouts])
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)


def test_prune_in_one_process_while_another_imports(store: ImageStore, tmp_path: Path) -> None:
    layouts = make_layouts(tmp_path, 3, big=200_000)
    proc = _import_loop(store.root, layouts)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            store.prune()
            for info in store.list():      # whatever is named is complete, at every moment
                try:
                    referenced_blobs(store)
                except Exception as exc:
                    if store.exists(info.name):  # removed by the other process meanwhile is fine
                        raise AssertionError(f"half image {info.name}: {exc}") from exc
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_kill_9_during_imports_leaves_no_half_image(tmp_path: Path) -> None:
    root = tmp_path / "images"
    ImageStore(root)
    layouts = make_layouts(tmp_path, 3, big=2_000_000)
    rng = random.Random(7)
    for _ in range(6):
        proc = _import_loop(root, layouts)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    store = ImageStore(root)    # the next open cleans what the killed writers left
    assert list(store.tmp.iterdir()) == []
    assert [p.name for p in store.layers_dir.iterdir() if p.name.startswith(".")] == []
    assert {p.name for p in store.blobs.iterdir()} == referenced_blobs(store)
    for info in store.list():
        assert store.layer_paths(info.name)
