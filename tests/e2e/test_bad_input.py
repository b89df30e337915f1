"""Bad input is refused with a clear message, a non-zero exit, and nothing left behind."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import vk

pytestmark = pytest.mark.root


def _names(vk_home: str) -> set[str]:
    return {i["name"] for i in json.loads(vk(vk_home, "list", "--json").stdout)}


@pytest.mark.parametrize("args, code, message", [
    (["--memory", "-5M"], 2, b"memory"),
    (["--memory", "lots"], 2, b"cannot parse size"),
    (["--cpus", "0"], 2, b"cpus: must be between"),
    (["--cpus", "100000"], 2, b"cpus: must be between"),
    (["--pids", "0"], 2, b"pids: must be between"),
    (["--cap-add", "NOT_A_CAP"], 2, b"unknown capability"),
    (["-v", "./relative:/x"], 2, b"host path must be absolute"),   # "relative:/x" names a volume now
    (["-v", "/nonexistent-virtkit-dir:/x"], 2, b"does not exist"),
    (["-e", "NOVALUE"], 2, b"NAME=VALUE"),
])
def test_bad_limits_and_options(vk_home, client, name, args, code, message):
    before = _names(vk_home)
    r = vk(vk_home, "run", "--name", name, *args, "busybox", "--", "true")
    assert r.returncode == code, r.stderr
    assert message in r.stderr and b"Traceback" not in r.stderr
    assert _names(vk_home) == before


def test_unknown_image(vk_home, client, name):
    r = vk(vk_home, "run", "--name", name, "no-such-image", "--", "true")
    assert r.returncode != 0 and b"image 'no-such-image" in r.stderr
    assert name not in _names(vk_home)


def test_invalid_and_duplicate_names(vk_home, client, name):
    r = vk(vk_home, "run", "--name", "bad/name", "busybox", "--", "true")
    assert r.returncode == 2 and b"invalid name" in r.stderr
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sleep", "60").returncode == 0
    r = vk(vk_home, "run", "--name", name, "busybox", "--", "true")
    assert r.returncode != 0 and b"already exists" in r.stderr
    client.remove(name, force=True)


def test_unknown_instance_and_bad_signal(vk_home, client, name):
    r = vk(vk_home, "stop", "nope-" + name)
    assert r.returncode != 0 and b"not found" in r.stderr
    vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sleep", "60")
    r = vk(vk_home, "kill", "-s", "NOTASIG", name)
    assert r.returncode == 2 and b"unknown signal" in r.stderr
    client.remove(name, force=True)
