"""CPU sharing on a host: an instance's weight, cap and pinning, validated and turned into cgroup v1/v2 settings.

Pure: the host's online CPUs and its cgroup version come in as data, the files to write go out as data.
What writes them is virtkit.container.cgroups (containers through the OCI runtime, VMs through their waiter).

  weight  1..10000 on the cgroup v2 scale (default 100): under contention, CPU time is shared in proportion
  cap     at most this many CPUs' worth of time per period (e.g. 0.25), enforced by CFS bandwidth control
  cpuset  the CPUs the instance's threads may run on ("0-1,3")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from virtkit.core.errors import InvalidArgument

WEIGHT_MIN, WEIGHT_DEFAULT, WEIGHT_MAX = 1, 100, 10000
SHARES_MIN, SHARES_DEFAULT, SHARES_MAX = 2, 1024, 262144
CAP_MIN, CAP_MAX = 0.01, 1024.0
PERIOD_US = 100_000              # CFS's default period: a cap is quota per 100 ms
MIN_QUOTA_US = 1000              # the kernel refuses a quota under 1 ms
MAX_CPU_ID = 8191                # NR_CPUS of distribution kernels (CONFIG_NR_CPUS=8192)
_LIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def weight_to_shares(weight: int) -> int:
    """A cgroup v2 cpu.weight as the v1 cpu.shares that gives the group the same scheduler weight.

    The kernel itself turns a v2 cpu.weight into the CFS group weight as weight * 1024 / 100
    (kernel/sched/core.c, cpu_weight_write_u64(), later factored out as sched_weight_from_cgroup():
    DIV_ROUND_CLOSEST_ULL(weight * 1024, CGROUP_WEIGHT_DFL)), and a v1 cpu.shares value *is* that group
    weight; systemd maps CPUWeight= to CPUShares= on v1 hosts the same way. So this mapping makes an
    instance's share identical on both versions and keeps ratios: weights 2:1 get shares 2:1.

    Not the runtimes' formulas: runc before 1.3.2 and Kubernetes (KEP-2254, "Phase 1: convert from
    cgroups v1 settings to v2") map shares -> weight linearly, weight = 1 + ((shares - 2) * 9999) / 262142,
    whose inverse shares = 2 + ((weight - 1) * 262142) / 9999 has an offset: weights 2 and 1 would become
    shares 28 and 2 (14:1), and the default weight 100 would become 2597 shares, not the v1 default 1024.
    runc >= 1.3.2 and crun >= 1.23 use a quadratic in log2 space (resources.shares_to_weight) that fixes the
    default but not ratios (weight 200 -> ~2450 shares against 1024 for 100: 2.4:1). Both exist to carry an
    OCI cpu.shares onto v2; here the user's number already is a v2 weight.
    """
    return max(SHARES_MIN, min(SHARES_MAX, (weight * SHARES_DEFAULT + WEIGHT_DEFAULT // 2) // WEIGHT_DEFAULT))


def validate_weight(value: object, field: str = "cpu_weight") -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: must be an integer {WEIGHT_MIN}..{WEIGHT_MAX} (got {value!r})")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise InvalidArgument(f"{field}: must be an integer {WEIGHT_MIN}..{WEIGHT_MAX} (got {value!r})")
    if not WEIGHT_MIN <= value <= WEIGHT_MAX:
        raise InvalidArgument(f"{field}: must be between {WEIGHT_MIN} and {WEIGHT_MAX}, the cgroup v2 scale where "
                              f"{WEIGHT_DEFAULT} is the default (got {value})")
    return value


def validate_cap(value: object, field: str = "cpus") -> float:
    """A cap in CPUs; it becomes a CFS quota per 100 ms period, so it must be at least 0.01 (1 ms)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: not a number: {value!r}")
    try:
        cap = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{field}: not a number: {value!r}") from exc
    if not CAP_MIN <= cap <= CAP_MAX:     # NaN fails this too
        raise InvalidArgument(f"{field}: must be between {CAP_MIN:g} and {CAP_MAX:g} CPUs (got {value})")
    return cap


def parse_cpu_list(text: str, field: str = "cpuset_cpus") -> frozenset[int]:
    """The kernel's CPU list format ("0-2,4", as in cpuset.cpus and /sys/devices/system/cpu/online)."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{field}: must be a list of CPUs like '0-2,4' (got {text!r})")
    compact = text.replace(" ", "").strip()
    if not compact or not _LIST_RE.match(compact):
        raise InvalidArgument(f"{field}: must be a list of CPUs like '0-2,4' (got {text!r})")
    cpus: set[int] = set()
    for part in compact.split(","):
        lo_text, _, hi_text = part.partition("-")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        if hi < lo:
            raise InvalidArgument(f"{field}: range {part!r} runs backwards")
        if hi > MAX_CPU_ID:
            raise InvalidArgument(f"{field}: CPU {hi} is beyond any CPU number Linux has (at most {MAX_CPU_ID})")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The shortest kernel form: {0, 1, 2, 4} -> "0-2,4"."""
    out: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def validate_cpuset(text: object, online: frozenset[int], field: str = "cpuset_cpus") -> str:
    """A pinning the host can honour, in canonical form; the error names the CPUs it lacks."""
    cpus = parse_cpu_list(text, field)  # type: ignore[arg-type]
    missing = cpus - online
    if missing:
        which = "CPU " + format_cpu_list(missing) if len(missing) == 1 else "CPUs " + format_cpu_list(missing)
        raise InvalidArgument(f"{field}: {which} not online on this host (online: {format_cpu_list(online)})")
    return format_cpu_list(cpus)


@dataclass(frozen=True)
class CpuRequest:
    """What a user asked for; None: not asked (no cap, no pinning, the default weight)."""

    weight: int | None = None
    cap: float | None = None
    cpuset: str | None = None

    @classmethod
    def from_spec(cls, spec: dict) -> CpuRequest:
        """The instance spec keys: cpu_weight, cpus (the cap), cpuset_cpus (validated at create)."""
        cap = spec.get("cpus")
        return cls(weight=spec.get("cpu_weight"), cap=float(cap) if cap else None, cpuset=spec.get("cpuset_cpus"))


@dataclass(frozen=True)
class CpuSettings:
    """Concrete values; None: leave the cgroup's own (the kernel's default, or what it was)."""

    weight: int | None = None        # v2 cpu.weight
    shares: int | None = None        # v1 cpu.shares, the same scheduler weight
    quota_us: int | None = None      # -1: no cap
    period_us: int | None = None
    cpus: str | None = None          # cpuset.cpus

    def controls(self, version: int) -> list[tuple[str, str, str]]:
        """(cgroup file, value, the user's field) in the order to write them."""
        out: list[tuple[str, str, str]] = []
        if version == 1:
            if self.shares is not None:
                out.append(("cpu.shares", str(self.shares), "cpu_weight"))
            if self.period_us is not None:
                out.append(("cpu.cfs_period_us", str(self.period_us), "cpus"))
            if self.quota_us is not None:
                out.append(("cpu.cfs_quota_us", str(self.quota_us), "cpus"))
        else:
            if self.weight is not None:
                out.append(("cpu.weight", str(self.weight), "cpu_weight"))
            if self.quota_us is not None or self.period_us is not None:
                quota = "max" if self.quota_us is None or self.quota_us < 0 else str(self.quota_us)
                out.append(("cpu.max", f"{quota} {self.period_us or PERIOD_US}", "cpus"))
        if self.cpus is not None:
            out.append(("cpuset.cpus", self.cpus, "cpuset_cpus"))
        return out

    def oci(self, version: int) -> dict:
        """The OCI linux.resources parts: {"cpu": {...}} and, on v2, {"unified": {"cpu.weight": ...}}.

        On v2 the weight goes through `unified` as it is: an OCI cpu.shares would be converted by the
        runtime (resources.shares_to_weight), and that conversion does not keep ratios.
        """
        cpu: dict = {}
        out: dict = {}
        if version == 1 and self.shares is not None:
            cpu["shares"] = self.shares
        if version == 2 and self.weight is not None:
            out["unified"] = {"cpu.weight": str(self.weight)}
        if self.quota_us is not None:
            cpu["quota"] = self.quota_us
        if self.period_us is not None:
            cpu["period"] = self.period_us
        if self.cpus is not None:
            cpu["cpus"] = self.cpus
        if cpu:
            out["cpu"] = cpu
        return out


def plan(request: CpuRequest, online: frozenset[int] | None, *, reset: bool = False) -> CpuSettings:
    """The settings for `request` on a host whose online CPUs are `online`.

    online None: the pinning was checked against the host already (at create); only its form is checked.
    reset (a change to a running instance): what is not asked is set back to the default explicitly
    (weight 100, no cap, every online CPU) instead of being left as it is.
    """
    weight = None if request.weight is None else validate_weight(request.weight)
    if weight is None and reset:
        weight = WEIGHT_DEFAULT
    quota = period = None
    if request.cap is not None:
        cap = validate_cap(request.cap)
        period = PERIOD_US
        quota = max(MIN_QUOTA_US, round(cap * PERIOD_US))
    elif reset:
        quota, period = -1, PERIOD_US
    cpus = None
    if request.cpuset is not None:
        cpus = format_cpu_list(parse_cpu_list(request.cpuset)) if online is None \
            else validate_cpuset(request.cpuset, online)
    elif reset:
        if online is None:
            raise ValueError("plan(reset=True) needs the host's online CPUs")
        cpus = format_cpu_list(online)
    return CpuSettings(weight=weight, shares=None if weight is None else weight_to_shares(weight),
                       quota_us=quota, period_us=period, cpus=cpus)


__all__ = [
    "CpuRequest", "CpuSettings", "format_cpu_list", "parse_cpu_list", "plan", "validate_cap", "validate_cpuset",
    "validate_weight", "weight_to_shares",
]
