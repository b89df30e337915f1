"""`virtkit volume ...`: create, list, inspect, remove named volumes."""

from __future__ import annotations

import argparse
import json
import time

from virtkit.cli.commands import each, size_str, table
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


def add_parser(sub: Any) -> None:
    vol = sub.add_parser("volume", help="manage volumes").add_subparsers(dest="volume_cmd", required=True)
    c = vol.add_parser("create", help="create a volume (a directory; with --size an ext4 image with a quota)")
    c.add_argument("name")
    c.add_argument("--size", help="size of an ext4 volume, e.g. 1G (writes past it fail with ENOSPC)")
    c.add_argument("--driver", choices=["dir", "ext4"], help="default: ext4 with --size, else dir")
    ls = vol.add_parser("list", aliases=["ls"], help="list volumes")
    ls.add_argument("--json", action="store_true")
    rm = vol.add_parser("rm", help="remove volumes (not while an instance refers to them)")
    rm.add_argument("names", nargs="+")
    ins = vol.add_parser("inspect", help="show a volume as JSON")
    ins.add_argument("name")


def cmd_volume(c: Client, a: argparse.Namespace) -> int:
    sub = {"ls": "list"}.get(a.volume_cmd, a.volume_cmd)
    if sub == "create":
        vol = c.create_volume(a.name, size=a.size, driver=a.driver)
        print(vol["name"])
        return 0
    if sub == "list":
        vols = c.volumes()
        if a.json:
            print(json.dumps(vols, indent=2))
            return 0
        table(["NAME", "DRIVER", "SIZE", "CREATED", "USED BY"],
              [[v["name"], v["driver"], size_str(v["size"]),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"])),
                ",".join(v["used_by"]) or "-"] for v in vols])
        return 0
    if sub == "rm":
        return each(a.names, c.remove_volume)
    if sub == "inspect":
        print(json.dumps(c.volume(a.name), indent=2))
        return 0
    raise InvalidArgument(f"unknown volume command {a.volume_cmd!r}")
