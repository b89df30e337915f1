"""publish: an instance's changes become one new layer on its image; containers of the new image see them."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest

from tests.e2e.conftest import vk
from tests.storage.helpers import leftovers
from virtkit.core.errors import AlreadyExists, InvalidArgument, NotFound

pytestmark = pytest.mark.root


def _layer_members(vk_home: str, image: str) -> list[tarfile.TarInfo]:
    from virtkit.images.store import ImageStore

    store = ImageStore(os.path.join(vk_home, "images"))
    manifest = store.manifest(image)
    top = manifest["layers"][-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_blob(top)))) as tf:
        return tf.getmembers()


def test_publish_then_run_sees_the_changes(vk_home, client, name):
    image, image2, second = f"pub-{name}", f"pub2-{name}", f"{name}-2"
    script = ("echo hello > /etc/motd; rm /etc/group; mkdir -p /opt/app/old; echo o > /opt/app/old/x;"
              " echo y > /opt/app/y; echo conf > /etc/app.conf; ln /etc/app.conf /etc/app.hard;"
              " ln -s /etc/motd /motd; chown 100:200 /etc/app.conf; chmod 640 /etc/app.conf")
    assert vk(vk_home, "run", "--name", name, "-e", "FOO=bar", "busybox", "--", "sh", "-c", script).returncode == 0
    base = client.image("busybox")

    r = vk(vk_home, "publish", name, image)
    assert r.returncode == 0, r.stderr
    info = client.image(image)
    assert r.stdout.decode().split() == [info["name"], info["digest"]]
    assert info["layers"][:-1] == base["layers"] and len(info["layers"]) == len(base["layers"]) + 1
    assert info["config"].get("Cmd") == base["config"].get("Cmd")     # the image's config, not the run's
    assert "FOO=bar" not in (info["config"].get("Env") or [])

    names = {m.name: m for m in _layer_members(vk_home, info["name"])}
    assert "etc/.wh.group" in names and names["etc/.wh.group"].isfile() and names["etc/.wh.group"].size == 0
    assert names["etc/app.conf"].uid == 100 and names["etc/app.conf"].gid == 200
    assert names["etc/app.hard"].islnk() or names["etc/app.conf"].islnk()
    assert names["motd"].issym() and names["motd"].linkname == "/etc/motd"
    assert not any(n.startswith("bin/") for n in names)                   # unchanged: not in the layer
    assert all(m.uname == "" for m in names.values())

    out = vk(vk_home, "run", "--rm", image, "--", "/bin/sh", "-c",
             "cat /etc/motd /etc/app.conf /opt/app/old/x; ls /etc/group 2>&1; stat -c '%u:%g %a %h' /etc/app.conf;"
             " readlink /motd")
    lines = out.stdout.decode().splitlines()
    assert lines[:3] == ["hello", "conf", "o"], out.stderr
    assert "No such file" in lines[3]
    assert lines[4:] == ["100:200 640 2", "/etc/motd"]

    # on top of a published image: a deleted directory of a lower layer stays deleted
    assert vk(vk_home, "run", "--name", second, image, "--", "sh", "-c",
              "rm -r /opt/app/old; echo y2 > /opt/app/y").returncode == 0
    info2 = client.publish(second, image2)
    assert info2["layers"][:-1] == info["layers"]
    assert "opt/app/.wh.old" in {m.name for m in _layer_members(vk_home, info2["name"])}
    out = vk(vk_home, "run", "--rm", image2, "--", "/bin/sh", "-c", "ls /opt/app; cat /opt/app/y /etc/motd")
    assert out.stdout.decode().split() == ["y", "y2", "hello"], out.stderr

    with pytest.raises(AlreadyExists, match="already exists"):
        client.publish(name, image)
    for n in (second, name):
        client.remove(n, force=True)
    client.remove_image(image2)
    client.remove_image(image)


def test_publish_opaque_dir_and_running_instance(vk_home, client, name):
    image = f"opq-{name}"
    # /bin exists in the image: replace it by a dir with one entry (overlayfs marks it opaque)
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "/bin/sh", "-c",
              "mkdir /keep; cp /bin/busybox /keep/; /keep/busybox rm -rf /bin; /keep/busybox mkdir /bin;"
              " /keep/busybox ln -s /keep/busybox /bin/sh; /keep/busybox ln -s /keep/busybox /bin/cat;"
              " /keep/busybox ln -s /keep/busybox /bin/ls; exec /keep/busybox sleep 600").returncode == 0
    import time

    deadline = time.time() + 10
    while time.time() < deadline:
        if client.exec(name, ["/keep/busybox", "test", "-e", "/bin/ls"]).exit_code == 0:
            break
        time.sleep(0.05)
    info = client.publish(name, image)                       # running: frozen for the tar, then thawed
    assert client.instance(name)["state"] == "running"
    assert client.exec(name, ["/keep/busybox", "true"]).exit_code == 0
    names = {m.name for m in _layer_members(vk_home, info["name"])}
    assert "bin/.wh..wh..opq" in names and "bin" in names
    out = vk(vk_home, "run", "--rm", image, "--", "/bin/sh", "-c", "ls /bin")
    assert sorted(out.stdout.decode().split()) == ["cat", "ls", "sh"], out.stderr
    client.remove(name, force=True)
    client.remove_image(image)


def test_publish_bad_input(vk_home, client, name):
    assert vk(vk_home, "run", "--name", name, "busybox", "--", "true").returncode == 0
    before = {i["name"] for i in client.images()}
    r = vk(vk_home, "publish", name, "Bad Name")
    assert r.returncode == 2 and b"not a valid image name" in r.stderr
    with pytest.raises(InvalidArgument, match="image: the name of the image to publish is required"):
        client.t.request("POST", f"/v1/instances/{name}/publish", {})
    with pytest.raises(NotFound, match="instance 'nope-y' not found"):
        client.publish("nope-y", "x")
    r = vk(vk_home, "publish", name, "busybox")
    assert r.returncode == 1 and b"already exists" in r.stderr
    assert {i["name"] for i in client.images()} == before
    assert leftovers(os.path.join(vk_home, "snapshots")) == []
    client.remove(name, force=True)
    assert json.loads(vk(vk_home, "image", "list", "--json").stdout) is not None
