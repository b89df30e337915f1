"""The real `image build debian` and `--vm` images, built once per test run and shared by the tests that need them.

tests/images/test_debian_vm.py checks the build; tests/vm/test_debian_vm_boot.py boots the result. Both take
it from shared_build(): the first caller builds (plain, then --vm over its cached base) into the image store of
a virtkit home in a temp dir; the rest of the run reuses it; the home goes at the run's end.

VIRTKIT_TEST_DEBIAN_VM_HOME=DIR keeps that home between runs (a developer's loop: the build is cached by its
inputs, so a later run names the images at once); it is not removed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

_lock = threading.Lock()
_built: dict[str, Any] = {}


def shared_build() -> dict[str, Any]:
    """{"home", "store", "plain", "vm", "lines", "dir"}: skips when the build cannot run here (not root, no
    mmdebstrap); a failed build fails each test that asks for it."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap (apt-get install mmdebstrap)")
    with _lock:
        if "error" in _built:
            pytest.fail(f"the shared debian build failed earlier in this run: {_built['error']}")
        if "store" not in _built:
            _build()
        return _built


def _build() -> None:
    from virtkit.config import Home
    from virtkit.images import debian
    from virtkit.images.store import ImageStore

    keep = os.environ.get("VIRTKIT_TEST_DEBIAN_VM_HOME")
    root = keep or tempfile.mkdtemp(prefix="vkdeb-", dir="/tmp")   # short: the home's unix sockets
    if not keep:
        atexit.register(shutil.rmtree, root, True)
    home = Home(root)
    home.ensure()
    store = ImageStore(Path(home.images))
    lines: list[str] = []
    try:
        plain = debian.build_debian(store, "deb", progress=lines.append)
        vm = debian.build_debian(store, "deb-vm", vm=True, progress=lines.append)
    except BaseException as exc:
        _built["error"] = repr(exc)
        raise
    work = Path(tempfile.mkdtemp(prefix="vkdeb-work-"))
    atexit.register(shutil.rmtree, work, True)
    _built.update(home=root, store=store, plain=plain, vm=vm, lines=lines, dir=work)
