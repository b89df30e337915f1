"""End to end: images imported from OCI layouts and docker-archives run as containers; export/import round
trips; inspect; prune with instances; bad input through the CLI; podman interop; the Debian builder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "images"))
from images_helpers import RICH_LAYERS, E, tar_dir, write_docker_archive, write_oci_layout  # noqa: E402

from tests.e2e.conftest import vk  # noqa: E402

pytestmark = pytest.mark.root


def busybox_layer() -> list[E]:
    bb = Path("/bin/busybox")
    if not bb.is_file():
        pytest.skip("needs a static /bin/busybox on the host (apt-get install busybox-static)")
    return [E("dir", "bin"), E("file", "bin/busybox", bb.read_bytes(), mode=0o755),
            *[E("symlink", f"bin/{a}", link="busybox") for a in ("sh", "cat", "ls", "readlink", "stat")],
            E("dir", "dev"), E("dir", "proc", mode=0o555), E("dir", "sys", mode=0o555), E("dir", "etc"),
            E("dir", "tmp", mode=0o1777)]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode()}"
    return r.stdout.decode()


def image_names(home: str) -> set[str]:
    return {i["name"] for i in json.loads(ok(vk(home, "image", "ls", "--json")))}


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vk-img-e2e-") as d:
        yield Path(d)


SHOW = "cat /etc/hello /etc/hello-link /etc/data-link; ls /opt; ls /etc; stat -c %u:%g:%a /etc/hello"


def check_rich_image(home: str, image: str) -> None:
    out = ok(vk(home, "run", "--rm", image, "--", "sh", "-c", SHOW))
    lines = out.split("\n")
    assert lines[:3] == ["hello from layer 2", "hello from layer 2", "payload"]
    assert lines[3] == "new"                       # the opaque dir hid opt/old
    assert "removed" not in lines[4:-2]            # the whiteout hid etc/removed
    assert lines[-2] == "1000:1000:600"


def test_oci_layout_import_then_run(vk_home: str, client, name: str, work: Path) -> None:
    write_oci_layout(work / "layout", {f"{name}:v1": [busybox_layer(), *RICH_LAYERS]})
    out = ok(vk(vk_home, "image", "import", str(work / "layout")))
    assert out.startswith(f"{name}:v1 sha256:")
    r = vk(vk_home, "run", "--rm", f"{name}:v1", "--", "cat", "/etc/hello")
    assert ok(r) == "hello from layer 2\n"
    check_rich_image(vk_home, f"{name}:v1")
    # the same layout as a tar, under another name
    ok(vk(vk_home, "image", "import", str(tar_dir(work / "layout", work / "l.tar")), "--name", f"{name}-tar"))
    check_rich_image(vk_home, f"{name}-tar")
    ok(vk(vk_home, "image", "rm", f"{name}:v1", f"{name}-tar"))


def test_docker_archive_import_then_run(vk_home: str, client, name: str, work: Path) -> None:
    write_docker_archive(work / "d.tar", [busybox_layer(), *RICH_LAYERS], [f"{name}:dock"], gz=True)
    ok(vk(vk_home, "image", "import", str(work / "d.tar")))
    check_rich_image(vk_home, f"{name}:dock")
    ok(vk(vk_home, "image", "rm", f"{name}:dock"))


def test_export_import_round_trip_and_inspect(vk_home: str, client, name: str, work: Path) -> None:
    before = client.image("busybox")
    for fmt in ("oci", "docker-archive"):
        out = work / f"bb-{fmt}.tar"
        ok(vk(vk_home, "image", "export", "busybox", str(out), "--format", fmt))
        ok(vk(vk_home, "image", "import", str(out), "--name", f"{name}-{fmt}"))
        after = json.loads(ok(vk(vk_home, "image", "inspect", f"{name}-{fmt}")))
        assert after["layers"] == before["layers"]
        assert after["config_digest"] == before["config_digest"]
        if fmt == "oci":   # byte-identical blobs: same manifest, same layer blobs
            assert after["digest"] == before["digest"]
            assert after["layer_blobs"] == before["layer_blobs"]
        assert ok(vk(vk_home, "run", "--rm", f"{name}-{fmt}", "--", "echo", "hi")) == "hi\n"
        ok(vk(vk_home, "image", "rm", f"{name}-{fmt}"))
    info = json.loads(ok(vk(vk_home, "image", "inspect", "busybox")))
    for key in ("digest", "layers", "size", "config", "created", "architecture", "layer_blobs", "history"):
        assert key in info, key
    assert info["architecture"] == "amd64" and info["size"] > 0
    assert info["layer_blobs"][0]["media_type"].startswith("application/vnd.oci.image.layer.v1.tar")


def test_bad_input_through_the_cli_leaves_nothing(vk_home: str, client, name: str, work: Path) -> None:
    before = image_names(vk_home)
    junk = work / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 512)
    layout = work / "layout"
    want = write_oci_layout(layout, {f"{name}:bad": [busybox_layer()]})[f"{name}:bad"]
    (layout / "blobs/sha256" / want["layers"][0][7:]).unlink()
    cases = [
        ((str(work / "missing.tar"),), "does not exist"),
        ((str(junk),), "is not a tar archive"),
        ((str(layout),), f"layer {want['layers'][0]}"),
        (("relative/path.tar", "--name", "Bad Name"), "not a valid image name"),
    ]
    for args, msg in cases:
        r = vk(vk_home, "image", "import", *args)
        assert r.returncode == 2, r
        err = r.stderr.decode()
        assert msg in err and "Traceback" not in err, err
    assert image_names(vk_home) == before
    r = vk(vk_home, "image", "export", "busybox", str(work / "x.tar"), "--format", "zip")
    assert r.returncode == 2 and b"invalid choice" in r.stderr
    r = vk(vk_home, "image", "build", "debian", "--vm", "--release", "hamm")
    assert r.returncode == 2 and b"release: 'hamm'" in r.stderr and b"Traceback" not in r.stderr
    r = vk(vk_home, "image", "build", "busybox", "--vm")
    assert r.returncode == 2 and b"apply to debian" in r.stderr
    r = vk(vk_home, "image", "build", "debian", "--release", "hamm")
    assert r.returncode == 2 and b"release: 'hamm'" in r.stderr
    r = vk(vk_home, "image", "build", "debian", "--packages", "Bad_Pkg")
    assert r.returncode == 2 and b"packages: 'Bad_Pkg'" in r.stderr


def test_prune_keeps_what_instances_use(vk_home: str, client, name: str, work: Path) -> None:
    image = f"{name}-p"
    write_oci_layout(work / "v1", {image: [busybox_layer(), [E("file", "etc/version", b"1\n")]]})
    write_oci_layout(work / "v2", {image: [busybox_layer(), [E("file", "etc/version", b"2\n")]]})
    ok(vk(vk_home, "image", "import", str(work / "v1")))
    client.create(image, ["cat", "/etc/version"], name=name)    # created, not started: layers of v1
    ok(vk(vk_home, "image", "import", str(work / "v2")))     # the name moves on; the instance keeps v1
    assert ok(vk(vk_home, "image", "prune")).startswith("freed ")
    out: list[bytes] = []
    client.start(name)
    status = client.attach(name, out.append)
    assert status["exit_code"] == 0 and b"".join(out) == b"1\n"
    assert ok(vk(vk_home, "run", "--rm", image, "--", "cat", "/etc/version")) == "2\n"
    client.remove(name, force=True)
    res = client.prune_images()
    assert len(res["images"]) == 1 and res["layers"] >= 1 and res["bytes"] > 0
    assert client.prune_images()["blobs"] == 0
    ok(vk(vk_home, "image", "rm", image))


# -- podman interop ----------------------------------------------------------------------------------------

@pytest.fixture
def podman(work: Path) -> Iterator[list[str]]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    base = tempfile.mkdtemp(prefix="vkpmi-", dir="/tmp")   # podman wants a short runroot
    conf = Path(base) / "containers.conf"
    conf.write_text('[engine]\nlock_type = "file"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{base}/events.log"\n')
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        yield ["podman", "--root", f"{base}/root", "--runroot", f"{base}/runroot", "--tmpdir", f"{base}/tmp",
               "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    finally:
        del os.environ["CONTAINERS_CONF"]
        subprocess.run(["umount", "-R", f"{base}/root"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def pm(argv: list[str], *args: str) -> str:
    r = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"podman {' '.join(args)}: {r.stderr}"
    return r.stdout


def test_podman_loads_our_export_and_we_import_podman_save(vk_home: str, client, name: str, work: Path,
                                                           podman: list[str]) -> None:
    ok(vk(vk_home, "image", "export", "busybox", str(work / "bb.tar"), "--format", "docker-archive"))
    loaded = pm(podman, "load", "-i", str(work / "bb.tar"))
    assert "busybox" in loaded
    bb = client.image("busybox")
    inspect = json.loads(pm(podman, "image", "inspect", "busybox:latest"))[0]
    assert inspect["RootFS"]["Layers"] == bb["layers"]
    for fmt in ("docker-archive", "oci-archive"):
        out = work / f"podman-{fmt}.tar"
        pm(podman, "save", "--format", fmt, "-o", str(out), "busybox:latest")
        ok(vk(vk_home, "image", "import", str(out), "--name", f"{name}-{fmt}"))
        got = client.image(f"{name}-{fmt}")
        assert got["layers"] == bb["layers"]
        assert ok(vk(vk_home, "run", "--rm", f"{name}-{fmt}", "--", "cat", "/etc/passwd")).startswith("root:")
        ok(vk(vk_home, "image", "rm", f"{name}-{fmt}"))


# -- the Debian builder ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_debian_build_runs_and_rebuilds_to_the_same_digest(vk_home: str, client) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    r = vk(vk_home, "image", "build", "debian", "--release", "bookworm", timeout=900)
    out = ok(r)
    assert b"I: " in r.stderr or b"running mmdebstrap" in r.stderr   # progress reached the user
    name, digest = out.split()
    assert name == "debian:latest"
    osr = ok(vk(vk_home, "run", "--rm", "debian", "--", "cat", "/etc/os-release"))
    assert "Debian" in osr and "bookworm" in osr
    assert ok(vk(vk_home, "run", "--rm", "debian", "--", "bash", "-c", "echo $0")) == "bash\n"
    info = client.image("debian")
    assert info["config"]["Cmd"] == ["bash"]
    # cached: the same inputs name the same image at once
    r = vk(vk_home, "image", "build", "debian", timeout=900)
    assert ok(r).split() == [name, digest] and b"cached" in r.stderr
    # a forced rebuild gives the same layer digests
    r = vk(vk_home, "image", "build", "debian", "--no-cache", "--name", "debian2", "-q", timeout=900)
    ok(r)
    again = client.image("debian2")
    assert again["layers"] == info["layers"]
    assert again["layer_blobs"] == info["layer_blobs"] and again["digest"] == info["digest"]
    ok(vk(vk_home, "image", "rm", "debian", "debian2"))


def test_skopeo_oci_layout_imports(vk_home: str, client, name: str, work: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    ok(vk(vk_home, "image", "export", "busybox", str(work / "bb.tar"), "--format", "docker-archive"))
    r = subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{work / 'bb.tar'}",
                        f"oci:{work / 'layout'}:bb:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = ok(vk(vk_home, "image", "import", str(work / "layout"), "--name", f"{name}-sk"))
    assert out.startswith(f"{name}-sk:latest ")
    assert client.image(f"{name}-sk")["layers"] == client.image("busybox")["layers"]
    assert ok(vk(vk_home, "run", "--rm", f"{name}-sk", "--", "echo", "skopeo")) == "skopeo\n"
    ok(vk(vk_home, "image", "rm", f"{name}-sk"))
