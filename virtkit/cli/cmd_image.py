"""`virtkit image ...`: build, list, inspect, remove images."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from virtkit.cli.commands import each, size_str, table
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument


def add_parser(sub: Any) -> None:
    img = sub.add_parser("image", help="manage images").add_subparsers(dest="image_cmd", required=True)
    b = img.add_parser("build", help="build an image (busybox)")
    b.add_argument("kind", help="what to build: busybox")
    b.add_argument("--name", help="image name (default: the kind)")
    il = img.add_parser("list", aliases=["ls"], help="list images")
    il.add_argument("--json", action="store_true")
    ir = img.add_parser("rm", help="remove images")
    ir.add_argument("names", nargs="+")
    ii = img.add_parser("inspect", help="show an image as JSON")
    ii.add_argument("name")


def cmd_image(c: Client, a: argparse.Namespace) -> int:
    sub = {"ls": "list"}.get(a.image_cmd, a.image_cmd)
    if sub == "build":
        print(f"building image {a.name or a.kind} ...", file=sys.stderr)
        info = c.build_image(a.kind, a.name)
        print(f"{info['name']} {info['digest']}")
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
    raise InvalidArgument(f"unknown image command {a.image_cmd!r}")


