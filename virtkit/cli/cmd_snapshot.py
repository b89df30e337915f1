"""`virtkit snapshot INSTANCE NAME | snapshot list|rm ...`, `virtkit restore`, `virtkit publish`."""

from __future__ import annotations

import argparse
import json
import time

from virtkit.cli.commands import size_str, table
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any

USAGE = ("snapshot INSTANCE NAME | snapshot list INSTANCE [--json] | snapshot rm INSTANCE NAME... | "
         "snapshot restore INSTANCE NAME")


def add_parser(sub: Any) -> None:
    s = sub.add_parser("snapshot", help="snapshot an instance's changes; list, remove, restore snapshots",
                       usage=f"virtkit {USAGE}")
    s.add_argument("--json", action="store_true", help="with list: print JSON")
    s.add_argument("words", nargs="+", metavar="ARG")
    r = sub.add_parser("restore", help="put a snapshot back (the instance must be stopped)")
    r.add_argument("instance")
    r.add_argument("snapshot")
    p = sub.add_parser("publish", help="an instance's changes as a new image (its image + one layer)")
    p.add_argument("instance")
    p.add_argument("image")


def cmd_snapshot(c: Client, a: argparse.Namespace) -> int:
    w = a.words
    verb = w[0] if w[0] in ("create", "list", "ls", "rm", "restore") and len(w) >= 2 else None
    if verb is None and len(w) == 2:
        verb, w = "create", ["create", *w]
    if verb == "create" and len(w) == 3:
        snap = c.snapshot(w[1], w[2])
        print(f"{snap['instance']} {snap['name']} {size_str(snap['size'])}")
        return 0
    if verb in ("list", "ls") and len(w) == 2:
        snaps = c.snapshots(w[1])
        if a.json:
            print(json.dumps(snaps, indent=2))
            return 0
        table(["NAME", "SIZE", "CREATED"],
              [[s["name"], size_str(s["size"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created_at"]))]
               for s in snaps])
        return 0
    if verb == "rm" and len(w) >= 3:
        from virtkit.cli.commands import each

        return each(w[2:], lambda name: c.remove_snapshot(w[1], name))
    if verb == "restore" and len(w) == 3:
        c.restore(w[1], w[2])
        print(f"{w[1]} restored to {w[2]}")
        return 0
    raise InvalidArgument(f"usage: virtkit {USAGE}")


def cmd_restore(c: Client, a: argparse.Namespace) -> int:
    c.restore(a.instance, a.snapshot)
    print(f"{a.instance} restored to {a.snapshot}")
    return 0


def cmd_publish(c: Client, a: argparse.Namespace) -> int:
    info = c.publish(a.instance, a.image)
    print(f"{info['name']} {info['digest']}")
    return 0
