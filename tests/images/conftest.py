"""Fixtures of the image tests: a store, a layer-tar factory and a sentinel directory outside both."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from images_helpers import E, Sentinel, make_tar

from virtkit.images.store import ImageStore


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Like pytest's, but removed right after the test: these dirs hold layers, whiteouts, mount points."""
    with tempfile.TemporaryDirectory(prefix="virtkit-images-test-") as d:
        yield Path(d)


@pytest.fixture
def tar_factory(tmp_path: Path):
    counter = iter(range(1_000_000))

    def make(entries: list[E]) -> Path:
        return make_tar(tmp_path / f"layer{next(counter)}.tar", entries)

    return make


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Sentinel]:
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "sentinel"
    f.write_bytes(b"untouched\n")
    s = Sentinel(d, f)
    before = s.snapshot()
    st = f.stat()
    yield s
    assert s.snapshot() == before, "something was written outside the layer"
    after = f.stat()
    assert (after.st_mode, after.st_uid, after.st_nlink) == (st.st_mode, st.st_uid, st.st_nlink)
