"""`virtkit image ...`: build, import, export, list, inspect, prune, remove images."""

from __future__ import annotations

import argparse
import json
import sys

from virtkit.cli.commands import each, size_str, table
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


def add_parser(sub: Any) -> None:
    img = sub.add_parser("image", help="manage images").add_subparsers(dest="image_cmd", required=True)
    b = img.add_parser("build", help="build an image: busybox, or debian (mmdebstrap from Debian's registry)")
    b.add_argument("kind", help="what to build: busybox | debian")
    b.add_argument("--name", help="image name (default: the kind)")
    b.add_argument("--release", help="debian: the release (default bookworm)")
    b.add_argument("--packages", default="", help="debian: packages to add to minbase, comma-separated")
    b.add_argument("--layers", type=int, help="debian: split the rootfs into this many layers (1-4, default 1)")
    b.add_argument("--vm", action="store_true", help="debian: one more layer for VMs: cloud kernel, initramfs with"
                   " the virtio drivers, systemd, qemu-guest-agent, serial console")
    b.add_argument("--no-cache", action="store_true", help="debian: rebuild even when a build of the same"
                   " inputs is cached")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ip = img.add_parser("import", help="import an OCI image layout (dir or tar), a docker-archive tar or a"
                        " skopeo dir: copy (layers plain, gzip or zstd)")
    ip.add_argument("path")
    ip.add_argument("--name", help="the image's name (default: the name in the archive)")
    ep = img.add_parser("export", help="write an image to a tar file")
    ep.add_argument("name")
    ep.add_argument("path")
    ep.add_argument("--format", default="oci", choices=["oci", "docker-archive"])
    il = img.add_parser("list", aliases=["ls"], help="list images")
    il.add_argument("--json", action="store_true")
    ir = img.add_parser("rm", help="remove images")
    ir.add_argument("names", nargs="+")
    ii = img.add_parser("inspect", help="show an image as JSON")
    ii.add_argument("name")
    img.add_parser("prune", help="remove blobs and unpacked layers that no image or instance references")


def cmd_image(c: Client, a: argparse.Namespace) -> int:
    sub = {"ls": "list"}.get(a.image_cmd, a.image_cmd)
    if sub == "build":
        return _build(c, a)
    if sub == "import":
        info = c.import_image(a.path, a.name)
        print(f"{info['name']} {info['digest']}")
        return 0
    if sub == "export":
        res = c.export_image(a.name, a.path, a.format)
        print(f"{res['name']} {res['digest']} -> {res['path']} ({res['format']}, {size_str(res['size'])})")
        return 0
    if sub == "list":
        images = c.images()
        if a.json:
            print(json.dumps(images, indent=2))
            return 0
        table(["NAME", "DIGEST", "SIZE", "CREATED"],
              [[i["name"], i["digest"][7:19], size_str(i["size"]), i["created"]] for i in images])
        return 0
    if sub == "rm":
        return each(a.names, c.remove_image)
    if sub == "inspect":
        print(json.dumps(c.image(a.name), indent=2))
        return 0
    if sub == "prune":
        res = c.prune_images()
        print(f"freed {size_str(res['bytes'])}: {res['blobs']} blob(s), {res['layers']} unpacked layer(s),"
              f" {len(res['images'])} replaced image(s)")
        return 0
    raise InvalidArgument(f"unknown image command {a.image_cmd!r}")


def _build(c: Client, a: argparse.Namespace) -> int:
    packages = [p.strip() for p in a.packages.split(",") if p.strip()]
    if a.kind != "debian" and (a.release or packages or a.vm or a.no_cache or a.layers):
        raise InvalidArgument(f"--release, --packages, --layers, --vm and --no-cache apply to debian, not {a.kind!r}")

    def progress(line: str) -> None:
        if not a.quiet:
            print(line, file=sys.stderr, flush=True)

    def build(**shown: Any) -> dict[str, Any]:
        return c.build_image(a.kind, a.name, release=a.release, packages=packages, layers=a.layers, vm=a.vm,
                             no_cache=a.no_cache, **shown)

    what = f"building image {a.name or a.kind}"
    if a.quiet or not sys.stderr.isatty():
        print(f"{what} ...", file=sys.stderr, flush=True)
        info = build(progress=progress)
    else:
        info = _build_with_bar(what, build)
    print(f"{info['name']} {info['digest']}")
    return 0


def _build_with_bar(what: str, build: Any) -> dict[str, Any]:
    """On a terminal: a progress bar with the latest line of the build beside it."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[line]}", style="dim"),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(what, total=1.0, line="")
        width = max(20, bar.console.width - 70)

        def line(text: str) -> None:
            bar.update(task, line=text if len(text) <= width else text[:width - 1] + "…")

        info: dict[str, Any] = build(progress=line, on_fraction=lambda f: bar.update(task, completed=f))
        bar.update(task, completed=1.0, line="done")
    return info
