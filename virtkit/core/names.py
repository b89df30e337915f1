"""Generated instance names, Docker style: adjective_noun."""

from __future__ import annotations

import random

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble",
        "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty", "young", "zen")
_NOUN = ("otter", "falcon", "maple", "comet", "harbor", "lynx", "meadow", "nebula", "orchid", "pebble",
         "quartz", "raven", "sparrow", "tundra", "willow", "yak", "zephyr", "badger", "cedar", "dune")


def generate_name() -> str:
    return f"{random.choice(_ADJ)}_{random.choice(_NOUN)}_{random.randint(0, 999):03d}"
