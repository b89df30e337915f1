"""Named volumes end to end: dir and ext4 (a real quota), data outliving instances, in-use refusal, no leaks."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import vk
from tests.storage.helpers import leftovers, loops_on, mounts_under
from virtkit.core.errors import AlreadyExists, InUse, NotFound

pytestmark = pytest.mark.root


def _vol_root(vk_home: str) -> str:
    return os.path.join(vk_home, "volumes")


def _no_kernel_objects(vk_home: str, vol: str) -> None:
    path = os.path.join(_vol_root(vk_home), vol)
    assert mounts_under(path) == []
    assert loops_on(path) == []


def test_dir_volume_lifecycle_and_data_outlives_instances(vk_home, client, name):
    vol = f"v-{name}"
    r = vk(vk_home, "volume", "create", vol)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == vol
    listed = {v["name"]: v for v in json.loads(vk(vk_home, "volume", "list", "--json").stdout)}
    assert listed[vol]["driver"] == "dir" and listed[vol]["size"] is None and listed[vol]["used_by"] == []

    r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/data", "busybox", "--", "sh", "-c",
           "echo kept > /data/f; mkdir /data/d; id -u > /data/d/uid")
    assert r.returncode == 0, r.stderr
    r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/mnt/x:ro", "busybox", "--", "sh", "-c",
           "cat /mnt/x/f /mnt/x/d/uid; touch /mnt/x/no 2>/dev/null || echo read-only")
    assert r.stdout.decode().split() == ["kept", "0", "read-only"], r.stderr
    info = json.loads(vk(vk_home, "volume", "inspect", vol).stdout)
    assert info["path"] == os.path.join(_vol_root(vk_home), vol, "data") and info["usage"] > 0
    with open(os.path.join(info["path"], "f")) as f:
        assert f.read() == "kept\n"

    r = vk(vk_home, "volume", "rm", vol)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.path.join(_vol_root(vk_home), vol))
    with pytest.raises(NotFound, match=f"volume '{vol}' not found"):
        client.volume(vol)


def test_named_volume_is_created_on_first_use(vk_home, client, name):
    vol = f"auto-{name}"
    r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/var/lib/app", "busybox", "--", "sh", "-c",
           "echo first > /var/lib/app/f")
    assert r.returncode == 0, r.stderr
    assert client.volume(vol)["driver"] == "dir"
    r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/x", "busybox", "--", "cat", "/x/f")
    assert r.stdout == b"first\n"
    client.remove_volume(vol)


def test_failed_create_removes_the_volume_it_made(vk_home, client, name):
    vol = f"gone-{name}"
    r = vk(vk_home, "run", "--name", name, "-v", f"{vol}:/x", "no-such-image", "--", "true")
    assert r.returncode != 0
    # the image is checked first: nothing was made
    assert vol not in [v["name"] for v in client.volumes()]
    # a create that fails in the driver (no command) undoes the volume it made for it
    client.build_image("busybox")
    r = vk(vk_home, "run", "--name", name, "-v", f"{vol}:/x", "-v", "/nonexistent-dir:/y", "busybox")
    assert r.returncode == 2 and b"does not exist" in r.stderr
    assert vol not in [v["name"] for v in client.volumes()]
    assert not os.path.exists(os.path.join(_vol_root(vk_home), vol))
    assert name not in [i["name"] for i in client.instances()]


def test_ext4_volume_quota_mount_and_no_leaks(vk_home, client, name):
    vol = f"q-{name}"
    r = vk(vk_home, "volume", "create", vol, "--size", "8M")
    assert r.returncode == 0, r.stderr
    info = client.volume(vol)
    assert info["driver"] == "ext4" and info["size"] == 8 << 20 and info["mounted"] is False
    assert os.path.isfile(info["image"]) and os.stat(info["image"]).st_size == 8 << 20
    _no_kernel_objects(vk_home, vol)              # no instance refers to it: nothing attached

    # a writer past the size gets ENOSPC; what fitted stays
    r = vk(vk_home, "run", "--name", name, "-v", f"{vol}:/q", "busybox", "--", "sh", "-c",
           "echo keep > /q/keep; dd if=/dev/zero of=/q/fill bs=1M count=32 2>&1; echo dd=$?; df -k /q | tail -1")
    out = r.stdout.decode()
    assert "No space left on device" in out and "dd=1" in out, out
    assert int(out.strip().splitlines()[-1].split()[1]) <= 8 * 1024        # the filesystem's size, not the host's
    inst = client.instance(name)
    assert inst["state"] == "stopped"
    # mounted on the host while an instance refers to it (even a stopped one), by one autoclear loop device
    info = client.volume(vol)
    assert info["mounted"] is True and info["used_by"] == [name]
    assert len(loops_on(info["image"])) == 1

    with pytest.raises(InUse, match=f"volume '{vol}' is in use by instance.*{name}"):
        client.remove_volume(vol)
    r = vk(vk_home, "volume", "rm", vol)
    assert r.returncode == 1 and f"in use by instance(s) {name}".encode() in r.stderr
    assert client.volume(vol)["mounted"] is True

    # rm of the last user unmounts and detaches; the data survives
    assert vk(vk_home, "rm", name).returncode == 0
    _no_kernel_objects(vk_home, vol)
    r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/q", "busybox", "--", "sh", "-c", "cat /q/keep; ls /q")
    assert r.stdout.decode().split()[0] == "keep" and "fill" in r.stdout.decode()
    _no_kernel_objects(vk_home, vol)

    client.remove_volume(vol)
    assert not os.path.exists(os.path.join(_vol_root(vk_home), vol))
    _no_kernel_objects(vk_home, vol)


def test_two_instances_share_an_ext4_volume(vk_home, client, name):
    vol = f"s-{name}"
    client.create_volume(vol, size="16M")
    a, b = f"{name}-a", f"{name}-b"
    client.create("busybox", ["sh", "-c", "echo from-a > /s/a; sleep 60"], name=a, volumes=[f"{vol}:/s"],
                  start=True)
    client.create("busybox", ["sleep", "60"], name=b, volumes=[f"{vol}:/s"], start=True)
    try:
        assert len(loops_on(client.volume(vol)["image"])) == 1          # one device, one filesystem
        for _ in range(50):
            if client.exec(b, ["cat", "/s/a"]).stdout == b"from-a\n":
                break
        assert client.exec(b, ["cat", "/s/a"]).stdout == b"from-a\n"
        client.remove(a, force=True)
        assert client.volume(vol)["mounted"] is True                     # b still uses it
        assert client.exec(b, ["cat", "/s/a"]).stdout == b"from-a\n"
    finally:
        for n in (a, b):
            try:
                client.remove(n, force=True)
            except NotFound:
                pass
    _no_kernel_objects(vk_home, vol)
    client.remove_volume(vol)


def test_start_remounts_after_the_host_lost_the_mount(vk_home, client, name):
    """After a reboot the mount is gone but the instance still refers to the volume: start brings it back."""
    from virtkit.storage import ext4

    vol = f"r-{name}"
    client.create_volume(vol, size="8M")
    client.create("busybox", ["sh", "-c", "cat /q/f 2>/dev/null || echo none; echo x > /q/f"], name=name,
                  volumes=[f"{vol}:/q"])
    info = client.volume(vol)
    ext4.unmount_image(info["image"], info["path"])                  # what a reboot does
    assert client.volume(vol)["mounted"] is False
    client.start(name)
    assert client.volume(vol)["mounted"] is True
    client.remove(name, force=True)
    _no_kernel_objects(vk_home, vol)
    client.remove_volume(vol)


@pytest.mark.parametrize("args, message", [
    (["bad/name"], b"name: invalid name"),
    (["--", "-leading"], b"name: invalid name"),
    (["a" * 64], b"name: invalid name"),
    (["ok", "--size", "0"], b"below the smallest ext4 volume"),
    (["ok", "--size=-1G"], b"cannot parse size"),
    (["ok", "--size", "lots"], b"cannot parse size"),
    (["ok", "--size", "1M"], b"below the smallest ext4 volume (2M)"),
    (["ok", "--size", "100T"], b"above the largest volume"),
    (["ok", "--driver", "dir", "--size", "1G"], b"a dir volume has no size limit"),
    (["ok", "--driver", "ext4"], b"an ext4 volume needs a size"),
])
def test_bad_volume_input(vk_home, client, name, args, message):
    args = [a.replace("ok", f"ok-{name}") for a in args]
    r = vk(vk_home, "volume", "create", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and b"Traceback" not in r.stderr
    assert f"ok-{name}" not in [v["name"] for v in client.volumes()]
    assert not os.path.exists(os.path.join(_vol_root(vk_home), f"ok-{name}"))
    assert leftovers(_vol_root(vk_home)) == []


def test_duplicate_and_missing_volumes(vk_home, client, name):
    vol = f"d-{name}"
    client.create_volume(vol)
    with pytest.raises(AlreadyExists, match=f"volume named '{vol}' already exists"):
        client.create_volume(vol, size="4M")
    assert client.volume(vol)["driver"] == "dir"            # the first one is untouched
    r = vk(vk_home, "volume", "rm", f"nope-{name}")
    assert r.returncode == 1 and b"not found" in r.stderr
    r = vk(vk_home, "run", "--rm", "-v", "bad name:/x", "busybox", "--", "true")
    assert r.returncode == 2 and b"volume" in r.stderr
    client.remove_volume(vol)
    assert leftovers(_vol_root(vk_home)) == []
