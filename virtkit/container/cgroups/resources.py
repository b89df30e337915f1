"""Validation of OCI linux.resources into a plan both cgroup versions write from (pure, no I/O)."""

from __future__ import annotations

from virtkit.core.errors import InvalidArgument

F = "linux.resources"
MIN_MEMORY = 4096
MAX_INT64 = (1 << 63) - 1
DEFAULT_PERIOD = 100_000
_CPU_LIST_RE = r"^\d+(-\d+)?(,\d+(-\d+)?)*$"   # compiled on use: most starts never need it


class ResourcePlan:
    """Validated values; None means "leave as is", -1 means "no limit".

    A plain class, not a dataclass: importing dataclasses (and through it inspect) costs ~10 ms on every
    `virtkit-runtime` start.
    """

    cpu_shares: int | None
    cpu_quota: int | None
    cpu_period: int | None
    cpus: str | None
    mems: str | None
    memory_limit: int | None
    memory_swap: int | None
    memory_reservation: int | None
    memory_swappiness: int | None
    disable_oom_killer: bool | None
    pids_limit: int | None
    blkio_weight: int | None
    devices: list[dict]
    unified: dict[str, str]

    def __init__(self) -> None:
        self.cpu_shares = self.cpu_quota = self.cpu_period = None
        self.cpus = self.mems = None
        self.memory_limit = self.memory_swap = self.memory_reservation = None
        self.memory_swappiness = None
        self.disable_oom_killer = None
        self.pids_limit = self.blkio_weight = None
        self.devices = []
        self.unified = {}


def _int(section: dict, key: str, name: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: must be an integer (got {value!r})")
    if not -MAX_INT64 <= value <= MAX_INT64:
        raise InvalidArgument(f"{name}: out of range (got {value})")
    return value


def _section(resources: dict, key: str) -> dict:
    value = resources.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{F}.{key}: must be an object (got {type(value).__name__})")
    return value


def _cpu_list(section: dict, key: str, name: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    import re  # here, not at the top: `re` costs ~5 ms and most starts have no CPU list

    if not isinstance(value, str) or not re.match(_CPU_LIST_RE, value.replace(" ", "")):
        raise InvalidArgument(f"{name}: must be a list like '0-2,4' (got {value!r})")
    value = value.replace(" ", "")
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise InvalidArgument(f"{name}: range {part!r} runs backwards")
    return value


def validate_resources(resources: dict | None) -> ResourcePlan:
    """Check every field first so that a bad value leaves nothing half-written."""
    from virtkit.container import devices as _devices

    plan = ResourcePlan()
    if resources is None:
        plan.devices = _devices.effective_rules(None)
        return plan
    if not isinstance(resources, dict):
        raise InvalidArgument(f"{F}: must be an object (got {type(resources).__name__})")

    cpu = _section(resources, "cpu")
    shares = _int(cpu, "shares", f"{F}.cpu.shares")
    if shares is not None and not 2 <= shares <= 262144:
        raise InvalidArgument(f"{F}.cpu.shares: must be 2..262144 (got {shares})")
    quota = _int(cpu, "quota", f"{F}.cpu.quota")
    if quota is not None and quota != -1 and quota < 1000:
        raise InvalidArgument(f"{F}.cpu.quota: must be >= 1000 microseconds, or -1 for none (got {quota})")
    period = _int(cpu, "period", f"{F}.cpu.period")
    if period is not None and not 1000 <= period <= 1_000_000:
        raise InvalidArgument(f"{F}.cpu.period: must be 1000..1000000 microseconds (got {period})")
    plan.cpu_shares, plan.cpu_quota, plan.cpu_period = shares, quota, period
    plan.cpus = _cpu_list(cpu, "cpus", f"{F}.cpu.cpus")
    plan.mems = _cpu_list(cpu, "mems", f"{F}.cpu.mems")

    mem = _section(resources, "memory")
    limit = _int(mem, "limit", f"{F}.memory.limit")
    if limit is not None and limit != -1 and limit < MIN_MEMORY:
        raise InvalidArgument(f"{F}.memory.limit: must be >= {MIN_MEMORY} bytes, or -1 (got {limit})")
    swap = _int(mem, "swap", f"{F}.memory.swap")
    if swap is not None and swap != -1:
        if limit is None or limit == -1:
            raise InvalidArgument(f"{F}.memory.swap: needs memory.limit to be set too")
        if swap < limit:
            raise InvalidArgument(
                f"{F}.memory.swap: is memory+swap and must be >= memory.limit ({limit}) (got {swap})"
            )
    reservation = _int(mem, "reservation", f"{F}.memory.reservation")
    if reservation is not None and reservation < -1:
        raise InvalidArgument(f"{F}.memory.reservation: must be >= 0 (got {reservation})")
    plan.memory_limit, plan.memory_swap, plan.memory_reservation = limit, swap, reservation
    swappiness = _int(mem, "swappiness", f"{F}.memory.swappiness")
    # -1 is what Docker and runc write for "the kernel's default" (OCI's uint64 holds no -1): leave it as is
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidArgument(f"{F}.memory.swappiness: must be 0..100 (got {swappiness})")
    plan.memory_swappiness = None if swappiness == -1 else swappiness
    oom = mem.get("disableOOMKiller")
    if oom is not None and not isinstance(oom, bool):
        raise InvalidArgument(f"{F}.memory.disableOOMKiller: must be true or false (got {oom!r})")
    plan.disable_oom_killer = oom

    pids = _section(resources, "pids")
    pids_limit = _int(pids, "limit", f"{F}.pids.limit")
    if pids_limit is not None and pids_limit != -1 and pids_limit <= 0:
        raise InvalidArgument(f"{F}.pids.limit: must be > 0, or -1 for no limit (got {pids_limit})")
    plan.pids_limit = pids_limit

    blkio = _section(resources, "blockIO")
    weight = _int(blkio, "weight", f"{F}.blockIO.weight")
    if weight is not None and not 10 <= weight <= 1000:
        raise InvalidArgument(f"{F}.blockIO.weight: must be 10..1000 (got {weight})")
    plan.blkio_weight = weight

    plan.unified = _unified(resources.get("unified"))
    plan.devices = _devices.effective_rules(resources.get("devices"))
    return plan


def _unified(value: object) -> dict[str, str]:
    """OCI linux.resources.unified: cgroup v2 file -> value, written as given (v2 only).

    Only controller files ("cpu.weight", "memory.high"): the cgroup core's own files (cgroup.procs,
    cgroup.subtree_control, ...) are how the runtime manages the tree and not the user's to set.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{F}.unified: must be an object of file names to values (got {type(value).__name__})")
    import re  # only for linux.resources.unified, which few configs carry

    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not re.match(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$", key) \
                or key.startswith("cgroup."):
            raise InvalidArgument(f"{F}.unified: {key!r} is not a cgroup v2 controller file name")
        if not isinstance(val, str):
            raise InvalidArgument(f"{F}.unified.{key}: must be a string (got {val!r})")
        out[key] = val
    return out


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).

    The mapping crun uses: a quadratic in log2 space chosen so that the end points map
    onto each other and the v1 default 1024 lands on the v2 default 100 (the older linear
    formula put 1024 at 39, starving containers next to v2-native workloads).
    """
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    import math  # here: only v2's weight conversion needs it, not every container start

    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return math.ceil(10**exponent)


def cpu_max(quota: int | None, period: int | None) -> str | None:
    """The v2 cpu.max line ("$QUOTA $PERIOD", quota "max" for none) or None to leave as is."""
    if quota is None and period is None:
        return None
    q = "max" if quota is None or quota == -1 else str(quota)
    return f"{q} {period or DEFAULT_PERIOD}"
