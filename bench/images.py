#!/usr/bin/env python3
"""virtkit's image import + unpack benchmark, side by side with umoci and skopeo + tar, in one run.

    .venv/bin/python bench/images.py [--runs 5] [--packages a,b,...] [--layers 4]

The image: a Debian bookworm rootfs from virtkit's own builder (minbase + --packages, hundreds of MB, split into
--layers layers, gzip), exported once as an OCI image layout directory. Every contestant starts from that
directory and ends with the image's files on disk:
  virtkit  a fresh process: import_image() into a fresh store (every blob copied and verified) then
           layer_paths() (every layer unpacked, verified against its digest and diff_id in the same pass).
  umoci    `umoci unpack --image DIR:bench:latest BUNDLE` (verifies blobs, unpacks every layer into one rootfs).
  skopeo   `skopeo copy oci:DIR:bench:latest dir:COPY` (copies and verifies the blobs), then `tar -xzf` of each
           layer, in order, into one directory (GNU tar, no whiteout handling: the lower bound).
Runs are interleaved (virtkit, umoci, skopeo, virtkit ...) after one warm-up each, on a warm page cache;
outputs are removed, and the disk synced, outside the timed part.
Results: bench/results/images.json and bench/results/images.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from lib import common  # noqa: E402

PACKAGES = "python3,perl,gcc,g++,make,git,curl,vim-tiny,libc6-dev,less"
GOAL = 1.2
WORK = Path(os.environ.get("VIRTKIT_BENCH_DIR", "/var/tmp/virtkit-bench-images"))
VIRTKIT_IMPORT = """
import sys
sys.path.insert(0, {repo!r})
from virtkit.images.importer import import_image
from virtkit.images.store import ImageStore
store = ImageStore({store!r})
info = import_image(store, {layout!r}, name="bench")
paths = store.layer_paths("bench")
assert len(paths) == len(info.layers)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(packages: str, layers: int) -> tuple[Path, dict[str, Any]]:
    """Build (cached in WORK) the Debian image and export it as an OCI layout directory."""
    from virtkit.images.debian import build_debian
    from virtkit.images.exporter import export_image
    from virtkit.images.store import ImageStore

    store = ImageStore(WORK / "store")
    info = build_debian(store, "bench", packages=packages.split(","), layers=layers, progress=lambda m: log("  " + m))
    layout = WORK / f"layout-{info.digest[7:19]}"
    if not (layout / "index.json").exists():
        tar = WORK / "bench-oci.tar"
        export_image(store, "bench", tar, "oci")
        tmp = WORK / "layout.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(tar) as tf:
            tf.extractall(tmp, filter="data")
        tar.unlink()
        tmp.rename(layout)
    manifest = json.loads(store.read_blob(info.digest))
    sizes = {"layers": len(info.layers), "compressed_bytes": sum(la["size"] for la in manifest["layers"]),
             "digest": info.digest}
    return layout, sizes


def du(path: Path) -> int:
    r = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--packages", default=PACKAGES)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("bench/images.py: run as root (mmdebstrap, chown, whiteouts)")
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"preparing the image (minbase + {args.packages}, {args.layers} layers; cached in {WORK})")
    layout, image = prepare(args.packages, args.layers)
    scratch = Path(tempfile.mkdtemp(prefix="vkbench-img-", dir=WORK))
    out = scratch / "out"

    def reset() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        # The previous run's deletes and dirty data (ext4, discard) would stall this run's file creation:
        # settle them outside the timed part, for every contestant alike.
        os.sync()

    def virtkit() -> None:
        code = VIRTKIT_IMPORT.format(repo=str(REPO), store=str(out / "store"), layout=str(layout))
        common.check_run([sys.executable, "-c", code], timeout=600)

    def umoci() -> None:
        common.check_run(["umoci", "unpack", "--image", f"{layout}:bench:latest", str(out / "bundle")], timeout=600)

    def skopeo() -> None:
        common.check_run(["skopeo", "copy", "--quiet", f"oci:{layout}:bench:latest", f"dir:{out / 'copy'}"],
                         timeout=600)
        manifest = json.loads((out / "copy" / "manifest.json").read_text())
        (out / "rootfs").mkdir()
        for layer in manifest["layers"]:
            common.check_run(["tar", "-xzf", str(out / "copy" / layer["digest"][7:]), "-C", str(out / "rootfs"),
                              "--numeric-owner", "--xattrs", "--xattrs-include=*"], timeout=600)

    tools = {"umoci": ["umoci", "--version"], "skopeo": ["skopeo", "--version"], "tar": ["tar", "--version"],
             "mmdebstrap": ["mmdebstrap", "--version"]}
    contestants = []
    for name, fn in (("virtkit", virtkit), ("umoci", umoci), ("skopeo+tar", skopeo)):
        if name != "virtkit" and shutil.which(name.split("+")[0]) is None:
            log(f"  {name}: not installed, left out (apt-get install {name.split('+')[0]})")
            continue

        def timed(fn=fn) -> None:  # type: ignore[no-untyped-def]
            fn()

        c = common.Contestant(name, timed)
        contestants.append(c)

    # reset() runs outside the timed part: wrap each contestant's once() so cleanup is not measured
    for c in contestants:
        inner = c.once

        def once(inner=inner) -> float:  # type: ignore[no-untyped-def]
            reset()
            return float(inner())

        c.once = once  # type: ignore[method-assign]
    try:
        reset()
        virtkit()
        image["unpacked_bytes"] = du(out / "store" / "layers")
        log(f"image: {image['layers']} layers, {image['compressed_bytes'] / 1e6:.0f} MB compressed,"
            f" {image['unpacked_bytes'] / 1e6:.0f} MB unpacked")
        common.interleaved(contestants, args.runs, log)
    finally:
        common.unmount_under(str(scratch))
        shutil.rmtree(scratch, ignore_errors=True)

    results = {c.name: c.result() for c in contestants}
    vk = results.get("virtkit", {}).get("median")
    peers = {n: r.get("median") for n, r in results.items() if n != "virtkit" and r.get("median")}
    fastest = min(peers, key=lambda n: peers[n]) if peers else None
    ratios = {n: common.ratio(vk, m) for n, m in peers.items()}
    doc = {"host": common.host_facts(tools), "image": image, "runs": args.runs, "packages": args.packages,
           "results": results, "ratios_virtkit_over_peer": ratios, "fastest_peer": fastest,
           "goal": f"virtkit median within {GOAL}x of the fastest peer",
           "met": (ratios.get(fastest) or 99) <= GOAL if fastest else None}
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "images.json").write_text(json.dumps(doc, indent=2) + "\n")
    (BENCH / "results" / "images.md").write_text(markdown(doc))
    log(markdown(doc))
    return 0


def markdown(doc: dict[str, Any]) -> str:
    h, img = doc["host"], doc["image"]
    lines = ["# Image benchmark: import + unpack, virtkit vs umoci and skopeo + tar", "",
             f"{h['date']} on {h['cpu_model']} ({h['cpus']} CPUs), kernel {h['kernel']}; {doc['runs']} interleaved"
             f" runs after one warm-up each, warm page cache. Image: Debian bookworm minbase + {doc['packages']},"
             f" {img['layers']} gzip layers, {img['compressed_bytes'] / 1e6:.0f} MB compressed,"
             f" {img.get('unpacked_bytes', 0) / 1e6:.0f} MB unpacked. Versions: "
             + "; ".join(f"{k}: {v}" for k, v in h["versions"].items()) + ".", "",
             "| contestant | median (s) | min-max (s) | virtkit / it |", "|---|---|---|---|"]
    for name, r in doc["results"].items():
        if not r.get("n"):
            lines.append(f"| {name} | failed: {r.get('error')} | | |")
            continue
        ratio = doc["ratios_virtkit_over_peer"].get(name)
        lines.append(f"| {name} | {r['median'] / 1000:.2f} | {r['min'] / 1000:.2f}-{r['max'] / 1000:.2f} |"
                     f" {'' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", f"Goal: {doc['goal']} (fastest peer: {doc['fastest_peer']}): met = {doc['met']}.", "",
              "Raw figures and host facts: `images.json`. Produced by `bench/images.py`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
