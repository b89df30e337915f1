"""The OCI runtime config (config.json): the default spec, loading a bundle, and validation with field names."""

from __future__ import annotations

import os

from virtkit.container import fastjson
from virtkit.core.errors import InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from typing import Any

OCI_VERSION = "1.2.0"
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
RLIMITS = (
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS",
    "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
)
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
PROPAGATIONS = ("", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")

_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(*, rootless: bool = False, args: list[str] | None = None, terminal: bool = False) -> dict:
    """A config.json like `runc spec` writes: busybox-style `sh`, default namespaces, masks and mounts."""
    caps = list(_DEFAULT_CAPS)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
         + ([] if rootless else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(_MASKED),
        "readonlyPaths": list(_READONLY),
    }
    if rootless:
        uid, gid = os.getuid(), os.getgid()
        namespaces.remove({"type": "network"})
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
        del linux["resources"]
        mounts[5] = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args else ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "virtkit",
        "mounts": mounts,
        "linux": linux,
    }


def load_bundle(bundle: str) -> dict:
    """Read and validate <bundle>/config.json; root.path is made absolute against the bundle."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle!r}: no config.json") from None
    except OSError as exc:
        raise InvalidArgument(f"bundle: cannot read {path}: {exc.strerror}") from exc
    try:
        spec = fastjson.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"config.json: malformed JSON: {exc}") from None
    validate(spec)
    root = spec["root"]["path"]
    if not os.path.isabs(root):
        spec["root"]["path"] = os.path.normpath(os.path.join(os.path.abspath(bundle), root))
    if not os.path.isdir(spec["root"]["path"]):
        raise InvalidArgument(f"root.path: {spec['root']['path']!r} is not a directory")
    return spec


def _need(cond: bool, field: str, reason: str) -> None:
    if not cond:
        raise InvalidArgument(f"{field}: {reason}")


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_str_list(v: Any, field: str) -> None:
    _need(isinstance(v, list) and all(isinstance(x, str) for x in v), field, "must be a list of strings")


def validate(spec: dict) -> None:
    """Raise InvalidArgument naming the first bad field of an OCI runtime config."""
    _need(isinstance(spec, dict), "config.json", "must be a JSON object")
    _need(isinstance(spec.get("ociVersion"), str) and bool(spec.get("ociVersion")), "ociVersion",
          "missing (a string such as \"1.0.2\")")
    _need(str(spec["ociVersion"]).startswith("1."), "ociVersion",
          f"unsupported version {spec['ociVersion']!r} (need 1.x)")
    root = spec.get("root")
    _need(isinstance(root, dict), "root", "missing")
    assert isinstance(root, dict)
    _need(isinstance(root.get("path"), str) and bool(root.get("path")), "root.path", "missing")
    _need(isinstance(root.get("readonly", False), bool), "root.readonly", "must be a boolean")
    _validate_process(spec.get("process"), "process", create=True)
    if "hostname" in spec:
        _need(isinstance(spec["hostname"], str), "hostname", "must be a string")
    if "domainname" in spec:
        _need(isinstance(spec["domainname"], str), "domainname", "must be a string")
    mounts = spec.get("mounts", [])
    _need(isinstance(mounts, list), "mounts", "must be a list")
    for i, m in enumerate(mounts):
        f = f"mounts[{i}]"
        _need(isinstance(m, dict), f, "must be an object")
        dest = m.get("destination")
        _need(isinstance(dest, str) and bool(dest), f"{f}.destination", "missing")
        _need(dest.startswith("/"), f"{f}.destination", f"must be an absolute path (got {dest!r})")
        if "options" in m:
            _check_str_list(m["options"], f"{f}.options")
    _validate_hooks(spec.get("hooks"))
    _validate_linux(spec.get("linux"), spec)


def _validate_process(p: Any, f: str, *, create: bool) -> None:
    _need(isinstance(p, dict), f, "missing")
    args = p.get("args")
    _need(isinstance(args, list) and len(args) > 0, f"{f}.args", "must be a non-empty list")
    _check_str_list(args, f"{f}.args")
    if create:
        _need(isinstance(p.get("cwd", "/"), str) and p.get("cwd", "/").startswith("/"), f"{f}.cwd",
              "must be an absolute path")
    if "env" in p:
        _check_str_list(p["env"], f"{f}.env")
        for j, e in enumerate(p["env"]):
            _need("=" in e, f"{f}.env[{j}]", f"must be KEY=VALUE (got {e!r})")
    user = p.get("user", {})
    _need(isinstance(user, dict), f"{f}.user", "must be an object")
    for k in ("uid", "gid"):
        if k in user:
            _need(_is_uint(user[k]), f"{f}.user.{k}", "must be a non-negative integer")
    if "umask" in user:
        _need(_is_uint(user["umask"]) and user["umask"] <= 0o777, f"{f}.user.umask", "must be 0..0777")
    if "additionalGids" in user:
        _need(isinstance(user["additionalGids"], list) and all(_is_uint(g) for g in user["additionalGids"]),
              f"{f}.user.additionalGids", "must be a list of non-negative integers")
    rl = p.get("rlimits", [])
    _need(isinstance(rl, list), f"{f}.rlimits", "must be a list")
    seen: set[str] = set()
    for j, r in enumerate(rl):
        rf = f"{f}.rlimits[{j}]"
        _need(isinstance(r, dict), rf, "must be an object")
        _need(r.get("type") in RLIMITS, f"{rf}.type", f"unknown rlimit {r.get('type')!r}")
        _need(r["type"] not in seen, f"{rf}.type", f"duplicate rlimit {r['type']!r}")
        seen.add(r["type"])
        _need(_is_uint(r.get("soft")) and _is_uint(r.get("hard")), rf, "soft and hard must be non-negative integers")
        _need(r["soft"] <= r["hard"], rf, "soft limit is above the hard limit")
    caps = p.get("capabilities")
    if caps is not None:
        _need(isinstance(caps, dict), f"{f}.capabilities", "must be an object")
        for k, v in caps.items():
            _check_str_list(v, f"{f}.capabilities.{k}")
        try:
            from virtkit.container import caps as capsmod
        except ImportError:
            capsmod = None  # type: ignore[assignment]
        if capsmod is not None and hasattr(capsmod, "validate"):
            capsmod.validate(caps)
    if p.get("oomScoreAdj") is not None:
        adj = p["oomScoreAdj"]
        _need(isinstance(adj, int) and not isinstance(adj, bool) and -1000 <= adj <= 1000, f"{f}.oomScoreAdj",
              "must be an integer in -1000..1000")
    if "terminal" in p:
        _need(isinstance(p["terminal"], bool), f"{f}.terminal", "must be a boolean")
    cs = p.get("consoleSize")
    if cs is not None:
        _need(isinstance(cs, dict) and _is_uint(cs.get("height", 0)) and _is_uint(cs.get("width", 0)),
              f"{f}.consoleSize", "needs non-negative height and width")


def validate_process(p: Any) -> None:
    """Validate an exec process spec (process.json)."""
    _validate_process(p, "process", create=True)


def _validate_hooks(hooks: Any) -> None:
    if hooks is None:
        return
    _need(isinstance(hooks, dict), "hooks", "must be an object")
    for kind, lst in hooks.items():
        _need(kind in HOOK_KINDS, f"hooks.{kind}", "unknown hook kind")
        _need(isinstance(lst, list), f"hooks.{kind}", "must be a list")
        for i, h in enumerate(lst):
            hf = f"hooks.{kind}[{i}]"
            _need(isinstance(h, dict) and isinstance(h.get("path"), str), f"{hf}.path", "missing")
            _need(h["path"].startswith("/"), f"{hf}.path", "must be an absolute path")
            if "timeout" in h:
                _need(isinstance(h["timeout"], int) and h["timeout"] > 0, f"{hf}.timeout", "must be > 0")


def _validate_mappings(maps: Any, f: str) -> None:
    _need(isinstance(maps, list) and bool(maps), f, "must be a non-empty list")
    for i, m in enumerate(maps):
        mf = f"{f}[{i}]"
        _need(isinstance(m, dict), mf, "must be an object")
        for k in ("containerID", "hostID", "size"):
            _need(_is_uint(m.get(k)), f"{mf}.{k}", "must be a non-negative integer")
        _need(m["size"] > 0, f"{mf}.size", "must be > 0")
        _need(m["containerID"] + m["size"] <= 2**32 and m["hostID"] + m["size"] <= 2**32, mf,
              "range exceeds 32 bits")
    ranges = sorted((m["containerID"], m["containerID"] + m["size"]) for m in maps)
    for (_a0, a1), (b0, _b1) in zip(ranges, ranges[1:], strict=False):
        _need(b0 >= a1, f, "container ID ranges overlap")


def _validate_linux(linux: Any, spec: dict) -> None:
    if linux is None:
        return
    _need(isinstance(linux, dict), "linux", "must be an object")
    nss = linux.get("namespaces", [])
    _need(isinstance(nss, list), "linux.namespaces", "must be a list")
    seen: set[str] = set()
    for i, ns in enumerate(nss):
        f = f"linux.namespaces[{i}]"
        _need(isinstance(ns, dict), f, "must be an object")
        t = ns.get("type")
        _need(t in NAMESPACE_TYPES, f"{f}.type", f"unknown namespace type {t!r}")
        _need(t not in seen, f"{f}.type", f"duplicate namespace {t!r}")
        seen.add(t)
        if ns.get("path"):
            _need(isinstance(ns["path"], str) and ns["path"].startswith("/"), f"{f}.path",
                  "must be an absolute path")
    user_new = any(n.get("type") == "user" and not n.get("path") for n in nss)
    for key in ("uidMappings", "gidMappings"):
        if key in linux:
            _need("user" in seen, f"linux.{key}", "set but there is no user namespace")
            _validate_mappings(linux[key], f"linux.{key}")
        elif user_new:
            raise InvalidArgument(f"linux.{key}: a new user namespace needs mappings")
    if spec.get("hostname"):
        _need("uts" in seen, "hostname", "setting a hostname needs a uts namespace")
    for key in ("maskedPaths", "readonlyPaths"):
        if key in linux:
            _check_str_list(linux[key], f"linux.{key}")
            for i, p in enumerate(linux[key]):
                _need(p.startswith("/"), f"linux.{key}[{i}]", "must be an absolute path")
    if "rootfsPropagation" in linux:
        _need(linux["rootfsPropagation"] in PROPAGATIONS, "linux.rootfsPropagation",
              f"unknown propagation {linux['rootfsPropagation']!r}")
    if "sysctl" in linux:
        _need(isinstance(linux["sysctl"], dict) and all(isinstance(v, str) for v in linux["sysctl"].values()),
              "linux.sysctl", "must map names to string values")
    if "cgroupsPath" in linux:
        _need(isinstance(linux["cgroupsPath"], str), "linux.cgroupsPath", "must be a string")
    if "seccomp" in linux and linux["seccomp"] is not None:
        try:
            from virtkit.container import seccomp
        except ImportError:
            return
        seccomp.validate(linux["seccomp"])
