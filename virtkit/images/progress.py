"""How far an image build has got, read from its progress lines (a builder's own, and mmdebstrap's `I:` lines).

The builders report in words; this maps the milestones among them to a fraction for a progress bar. A line
that is no milestone leaves the fraction where it was.
"""

from __future__ import annotations

__all__ = ["fraction_of"]

# (line prefix, fraction done when it appears), in build order
_MILESTONES: tuple[tuple[str, float], ...] = (
    # busybox
    ("downloading busybox", 0.1), ("using cached busybox", 0.4), ("extracting ", 0.5),
    ("writing the rootfs layer", 0.7), ("adding image", 0.9),
    # debian: mmdebstrap, then ours
    ("running mmdebstrap", 0.02), ("I: running apt-get update", 0.05), ("I: downloading packages", 0.12),
    ("I: extracting archives", 0.3), ("I: installing essential packages", 0.4),
    ("I: installing remaining packages", 0.5), ("I: cleaning package lists", 0.65), ("I: success in", 0.7),
    ("normalising the rootfs", 0.72), ("writing ", 0.78), ("installing the VM packages", 0.8),
    ("compressing and storing image", 0.9), ("using the cached build", 0.99),
)


def fraction_of(line: str) -> float | None:
    for prefix, fraction in _MILESTONES:
        if line.startswith(prefix):
            return fraction
    return None
