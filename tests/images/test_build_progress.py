"""Build progress: milestones of the builders' lines become a fraction; a terminal shows it as a bar."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import VENV_BIN, client, vk_home  # noqa: F401 - fixtures of the end-to-end suite
from virtkit.images.progress import fraction_of

# what `virtkit image build debian` prints, mmdebstrap's lines among ours (abridged)
DEBIAN_LINES = [
    "running mmdebstrap --variant=minbase --mode=root --architectures=amd64 --format=directory bookworm /x",
    "I: chroot architecture amd64 is equal to the host's architecture", "I: running apt-get update...",
    "I: downloading packages with apt...", "I: extracting archives...", "I: installing essential packages...",
    "I: installing remaining packages inside the chroot...", "I: cleaning package lists and apt cache...",
    "I: success in 160.2 seconds", "normalising the rootfs for a reproducible layer", "writing 1 layer tar(s)",
    "compressing and storing image debian",
]


def test_milestones_only_move_forward() -> None:
    seen = [f for f in map(fraction_of, DEBIAN_LINES) if f is not None]
    assert len(seen) == len(DEBIAN_LINES) - 1 and seen == sorted(seen) and 0 < seen[0] and seen[-1] < 1
    assert fraction_of("Get:1 http://deb.debian.org/debian bookworm InRelease") is None


@pytest.mark.root
def test_a_terminal_gets_a_progress_bar(vk_home, client) -> None:  # noqa: F811
    cmd = f"{os.path.join(VENV_BIN, 'virtkit')} --home {vk_home} image build busybox --name pbar-test"
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "building image pbar-test" in r.stdout and "100%" in r.stdout and "━" in r.stdout
    assert "pbar-test:latest sha256:" in r.stdout.rstrip().splitlines()[-1]
    client.remove_image("pbar-test")
