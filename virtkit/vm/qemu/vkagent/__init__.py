"""The in-guest agent of minimal VMs (vkagent, C sources beside this file): compiled once, cached by source hash.

A busybox guest has no Python and no qemu-ga, so virtkit puts this small static binary in the initramfs; its
/init starts it. It speaks the qemu-guest-agent protocol (see vkagent.c), so the host side (vm/qemu/agent.py)
is the same for it and for Debian's qemu-guest-agent. Static (glibc, -Os): the guest has no libc of its own.

Cache: <VM cache>/vkagent/<sha256 of the sources and flags, 16 hex>/vkagent, made by rename (homes side by side
never see a half-made one).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

from virtkit.core.errors import SystemFailure

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("vkagent.c", "procs.c", "commands.c", "json.c")
HEADERS = ("vkagent.h", "json.h")
CFLAGS = ("-static", "-Os", "-s", "-std=gnu11", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections",
          "-Wl,--gc-sections")
COMPILER = "gcc"


def source_hash() -> str:
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for name in SOURCES + HEADERS:
        with open(os.path.join(SOURCE_DIR, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def build(cache: str | None = None) -> str:
    """The path of the agent binary for the current sources, compiling it first if no cached one matches."""
    if cache is None:
        from virtkit.vm.qemu.kernel import cache_dir

        cache = cache_dir()
    root = os.path.join(cache, "vkagent")
    entry = os.path.join(root, source_hash())
    binary = os.path.join(entry, "vkagent")
    if os.path.exists(binary):
        return binary
    compiler = shutil.which(COMPILER)
    if compiler is None:
        raise SystemFailure("building the guest agent of minimal VMs needs gcc and libc6-dev (scripts/setup.sh "
                            "installs them: apt-get install gcc libc6-dev)")
    os.makedirs(root, mode=0o755, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one compile at a time; the others take its result
        if os.path.exists(binary):
            return binary
        work = tempfile.mkdtemp(dir=root, prefix=".new-")
        try:
            out = os.path.join(work, "vkagent")
            argv = [compiler, *CFLAGS, "-o", out, *(os.path.join(SOURCE_DIR, s) for s in SOURCES)]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SystemFailure(f"compiling the guest agent: {exc}") from exc
            if proc.returncode != 0:
                hint = " (is libc6-dev installed? a static build needs libc.a)" if "-lc" in proc.stderr else ""
                raise SystemFailure(f"compiling the guest agent failed{hint}: {proc.stderr.strip()[-1500:]}")
            os.chmod(out, 0o755)
            os.rename(work, entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return binary
