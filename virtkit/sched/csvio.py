"""Reading HOSTS.csv and REQS.csv for the replay command; every error names the file, line and column.

HOSTS.csv: host,vcpus,memory_mib[,disk_gib][,labels] — labels `key=value` pairs separated by `;`
(`types=a|b` restricts instance types). Other columns whose values are all numbers are extra resources;
other columns are ignored. In REQS.csv, a column named like a host resource is a demand; unknown columns are
ignored (a demand for disk_gib counts only where HOSTS.csv declares disk_gib).
REQS.csv: id,vcpus,memory_mib[,arrival_s,departure_s,priority,group,anti_affinity,disk_gib,labels,project,type].
`group`: `;`-separated group names. `anti_affinity`: empty/0/false/no: none; 1/true/yes/hard: the row's
groups keep their members on different hosts; soft: the same, as a preference; otherwise `;`-separated names
of groups (each `name[:soft][:zone]`) that must appear in some row's `group` column: the row joins them and
they become anti-affinity groups. A group that nobody marks anti-affinity is a soft affinity group.
`project`: the row's project, for quotas.
QUOTAS.csv: project,vcpus,memory_mib[,instances][,other host resources] — one row per project, each value a
limit on what the project's running instances hold together (an empty cell: no limit on that column).
A project that has no row in QUOTAS.csv (or a request without a project) has no quota.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass

from virtkit.sched.model import Group, Host, Request, SchedError

TRUE = {"1", "true", "yes", "hard", "y"}
FALSE = {"", "0", "false", "no", "n"}
REQ_KNOWN = {"id", "vcpus", "memory_mib", "arrival_s", "departure_s", "priority", "group", "anti_affinity",
             "labels", "project", "type"}


@dataclass
class Trace:
    requests: list[Request]
    groups: list[Group]
    timed: bool


def _rows(path: str, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise SchedError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SchedError(f"{path}: empty file, expected a header with columns {','.join(required)}")
        cols = [c.strip() for c in header]
        missing = [c for c in required if c not in cols]
        if missing:
            raise SchedError(f"{path}: line 1: missing column(s) {', '.join(missing)} (have {','.join(cols)})")
        dup = {c for c in cols if cols.count(c) > 1 and c}
        if dup:
            raise SchedError(f"{path}: line 1: duplicate column(s) {', '.join(sorted(dup))}")
        rows = []
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) > len(cols):
                raise SchedError(f"{path}: line {line}: {len(row)} fields, the header has {len(cols)}")
            rows.append((line, {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(cols)}))
        return cols, rows


def _num(path: str, line: int, col: str, text: str, *, required: bool = True, default: float = 0.0) -> float:
    if text == "":
        if required:
            raise SchedError(f"{path}: line {line}, column {col}: value missing")
        return default
    try:
        v = float(text)
    except ValueError:
        raise SchedError(f"{path}: line {line}, column {col}: {text!r} is not a number") from None
    if math.isnan(v) or math.isinf(v):
        raise SchedError(f"{path}: line {line}, column {col}: {text!r} is not a finite number")
    if v < 0:
        raise SchedError(f"{path}: line {line}, column {col}: must not be negative (got {text})")
    return v


def _is_num(text: str) -> bool:
    try:
        float(text or "0")
    except ValueError:
        return False
    return True


def _labels(path: str, line: int, col: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.replace(",", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not k.strip():
            raise SchedError(f"{path}: line {line}, column {col}: bad label {item!r} (want key=value)")
        out[k.strip()] = v.strip() if sep else "true"
    return out


def read_hosts(path: str) -> list[Host]:
    cols, rows = _rows(path, ("host", "vcpus", "memory_mib"))
    extra = [c for c in cols if c not in ("host", "labels") and c]
    extra = [c for c in extra
             if c in ("vcpus", "memory_mib", "disk_gib") or all(_is_num(row[c]) for _, row in rows)]
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        name = row["host"]
        if not name:
            raise SchedError(f"{path}: line {line}, column host: value missing")
        if name in seen:
            raise SchedError(f"{path}: line {line}, column host: duplicate host {name!r} (first on line {seen[name]})")
        seen[name] = line
        cap = {c: _num(path, line, c, row[c], required=c in ("vcpus", "memory_mib")) for c in extra}
        labels = _labels(path, line, "labels", row.get("labels", ""))
        hosts.append(Host(name, cap, labels))
    return hosts


def read_requests(path: str, resources: tuple[str, ...]) -> Trace:
    cols, rows = _rows(path, ("id", "vcpus", "memory_mib"))
    timed = "arrival_s" in cols
    res_cols = [c for c in cols if c and c not in REQ_KNOWN and c in resources]
    reqs: list[Request] = []
    seen: dict[str, int] = {}
    anti_refs: list[tuple[int, int, list[str]]] = []  # (line, request index, references)
    kinds: dict[str, tuple[bool, bool, str]] = {}  # group -> (anti, hard, scope)
    for line, row in rows:
        rid = row["id"]
        if not rid:
            raise SchedError(f"{path}: line {line}, column id: value missing")
        if rid in seen:
            raise SchedError(f"{path}: line {line}, column id: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = line
        demand = {c: _num(path, line, c, row[c], required=c in ("vcpus", "memory_mib")) for c in res_cols}
        demand["vcpus"] = _num(path, line, "vcpus", row["vcpus"])
        demand["memory_mib"] = _num(path, line, "memory_mib", row["memory_mib"])
        arrival = _num(path, line, "arrival_s", row["arrival_s"]) if timed else None
        dep_text = row.get("departure_s", "")
        departure = _num(path, line, "departure_s", dep_text) if dep_text else None
        if arrival is not None and departure is not None and departure < arrival:
            raise SchedError(f"{path}: line {line}, column departure_s: {dep_text} is before arrival_s {arrival:g}")
        prio_text = row.get("priority", "")
        try:
            priority = int(float(prio_text)) if prio_text else 0
        except ValueError:
            raise SchedError(f"{path}: line {line}, column priority: {prio_text!r} is not a number") from None
        groups = [g.strip() for g in row.get("group", "").split(";") if g.strip()]
        anti = row.get("anti_affinity", "").strip()
        low = anti.lower()
        if low in FALSE:
            pass
        elif low in TRUE or low == "soft":
            if not groups:
                raise SchedError(f"{path}: line {line}, column anti_affinity: {anti!r} but the row has no group")
            for g in groups:
                prev = kinds.get(g, (True, False, "host"))
                kinds[g] = (True, prev[1] or low != "soft", "host")
        else:
            anti_refs.append((line, len(reqs), [a.strip() for a in anti.split(";") if a.strip()]))
        for g in groups:
            kinds.setdefault(g, (False, False, "host"))
        reqs.append(Request(rid, demand, priority, _labels(path, line, "labels", row.get("labels", "")),
                            tuple(groups), row.get("project") or None, row.get("type") or None, arrival, departure))
    for line, i, refs in anti_refs:
        for ref in refs:
            name, *opts = [p.strip() for p in ref.split(":")]
            bad = [o for o in opts if o not in ("soft", "hard", "zone", "host")]
            if bad or not name:
                raise SchedError(f"{path}: line {line}, column anti_affinity: bad reference {ref!r}")
            if name not in kinds:
                raise SchedError(f"{path}: line {line}, column anti_affinity: unknown group reference {name!r} "
                                 f"(no row has it in column group)")
            prev = kinds[name]
            hard = "soft" not in opts
            scope = "zone" if "zone" in opts else prev[2]
            kinds[name] = (True, (prev[1] or hard) if prev[0] else hard, scope)
            if name not in reqs[i].groups:
                reqs[i].groups = (*reqs[i].groups, name)
    groups_out = [Group(g, "anti-affinity", hard, scope) if anti else Group(g, "affinity", False, "host")
                  for g, (anti, hard, scope) in kinds.items()]
    return Trace(reqs, groups_out, timed)


QUOTA_REQUIRED = ("project", "vcpus", "memory_mib")


def read_quotas(path: str, resources: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """project -> {resource or "instances": limit}. Unknown columns are errors: a misspelt limit must not vanish."""
    cols, rows = _rows(path, QUOTA_REQUIRED)
    known = ("instances", *resources)
    unknown = [c for c in cols if c and c != "project" and c not in known]
    if unknown:
        raise SchedError(f"{path}: line 1: unknown column(s) {', '.join(unknown)} "
                         f"(quota columns: project, {', '.join(known)})")
    limits = [c for c in cols if c in known]
    quotas: dict[str, dict[str, float]] = {}
    seen: dict[str, int] = {}
    for line, row in rows:
        project = row["project"]
        if not project:
            raise SchedError(f"{path}: line {line}, column project: value missing")
        if project in seen:
            raise SchedError(f"{path}: line {line}, column project: duplicate project {project!r} "
                             f"(first on line {seen[project]})")
        seen[project] = line
        q: dict[str, float] = {}
        for c in limits:
            if row[c] == "":
                continue
            v = _num(path, line, c, row[c])
            if c == "instances" and v != int(v):
                raise SchedError(f"{path}: line {line}, column instances: must be a whole number (got {row[c]})")
            q[c] = v
        quotas[project] = q
    return quotas
