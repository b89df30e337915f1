"""The plain data the scheduler works on: hosts, requests, groups, and the host state with its index."""

from __future__ import annotations

from dataclasses import dataclass, field

from virtkit.core.errors import InvalidArgument

DEFAULT_RESOURCES: tuple[str, ...] = ("vcpus", "memory_mib", "disk_gib")
# Nova placement's defaults; the replay command passes 1.0 for both unless told otherwise.
DEFAULT_RATIOS: dict[str, float] = {"vcpus": 4.0, "memory_mib": 1.0}
EPS = 1e-9


class SchedError(InvalidArgument):
    """Bad scheduler input (unknown policy, group, host, negative demand ...)."""

    code = "invalid_argument"


@dataclass(slots=True)
class Host:
    """A host as the operator describes it: raw capacities and labels.

    Label `types` (a `|`-separated list) restricts which instance types the host accepts;
    `zone`, `rack`, `arch` are matched against a request's labels like any other label.
    """

    name: str
    capacity: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Request:
    """One instance to place. `departure` (seconds, optional) lets lifetime-aware policies group by end time."""

    id: str
    demand: dict[str, float]
    priority: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    project: str | None = None
    instance_type: str | None = None
    arrival: float | None = None
    departure: float | None = None


@dataclass(slots=True, frozen=True)
class Group:
    """A server group: members are kept together (affinity) or apart (anti-affinity), per host or per zone."""

    name: str
    policy: str = "anti-affinity"  # or "affinity"
    hard: bool = True
    scope: str = "host"  # or "zone"

    def __post_init__(self) -> None:
        if self.policy not in ("affinity", "anti-affinity"):
            raise SchedError(f"group {self.name!r}: policy must be affinity or anti-affinity, not {self.policy!r}")
        if self.scope not in ("host", "zone"):
            raise SchedError(f"group {self.name!r}: scope must be host or zone, not {self.scope!r}")


class HostState:
    """A host's live state: effective capacity (raw x overcommit ratio), use, residents."""

    __slots__ = ("index", "name", "labels", "cap", "used", "residents", "zone", "types", "key", "raw")

    def __init__(self, index: int, host: Host, resources: tuple[str, ...], ratios: dict[str, float]) -> None:
        self.index = index
        self.name = host.name
        self.labels = host.labels
        self.raw = [float(host.capacity.get(r, 0.0)) for r in resources]
        self.cap = [c * ratios.get(r, 1.0) for c, r in zip(self.raw, resources, strict=True)]
        self.used = [0.0] * len(resources)
        self.residents: dict[str, Request] = {}
        self.zone = host.labels.get("zone", "")
        types = host.labels.get("types")
        self.types = frozenset(t for t in types.split("|") if t) if types else None
        self.key: tuple[int, int] | None = None

    def free(self, i: int) -> float:
        return self.cap[i] - self.used[i]

    def fits(self, d: list[float]) -> bool:
        used, cap = self.used, self.cap
        for i, x in enumerate(d):
            if x and used[i] + x > cap[i] + EPS:
                return False
        return True

    def shortfall(self, d: list[float]) -> list[tuple[int, float]]:
        """(resource index, how much is missing) for each resource the demand does not fit in."""
        return [(i, self.used[i] + x - self.cap[i]) for i, x in enumerate(d)
                if x and self.used[i] + x > self.cap[i] + EPS]

    @property
    def empty(self) -> bool:
        return not self.residents
