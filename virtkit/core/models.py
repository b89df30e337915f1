"""Domain records: Instance and its lifecycle states, as plain dataclasses shared by every layer."""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from virtkit.core.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class InstanceState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class InstanceType(enum.StrEnum):
    CONTAINER = "container"
    VM = "vm"


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"{what}: invalid name {name!r} (1-63 characters: letters, digits, '_', '.', '-';"
            " must start with a letter or digit)"
        )
    return name


@dataclass
class Instance:
    """One workload as the store keeps it. `spec` holds what the user asked for (image, command, limits...)."""

    id: str
    name: str
    type: str
    state: str
    image: str
    spec: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    exit_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
