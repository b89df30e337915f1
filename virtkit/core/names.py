"""Instance names: generated ones (Docker style: adjective_noun) and the checks of a new name (create, rename)."""

from __future__ import annotations

import random

from virtkit.core.errors import InvalidArgument
from virtkit.core.models import validate_name

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble",
        "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty", "young", "zen")
_NOUN = ("otter", "falcon", "maple", "comet", "harbor", "lynx", "meadow", "nebula", "orchid", "pebble",
         "quartz", "raven", "sparrow", "tundra", "willow", "yak", "zephyr", "badger", "cedar", "dune")


def generate_name() -> str:
    return f"{random.choice(_ADJ)}_{random.choice(_NOUN)}_{random.randint(0, 999):03d}"


def validate_rename(current: str, new: object) -> str:
    """The new name of a rename: valid as at create, and a change (Docker refuses renaming to the same name)."""
    if not isinstance(new, str) or not new:
        raise InvalidArgument("name: rename needs the new name")
    validate_name(new, "name")
    if new == current:
        raise InvalidArgument(f"name: instance '{current}' is already named '{new}'")
    return new
