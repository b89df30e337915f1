"""Validation of what a user asks for when creating an instance: limits, volumes, capabilities, names."""

from __future__ import annotations

import os
import re
from typing import Any

from virtkit.core.errors import InvalidArgument
from virtkit.core.models import NAME_RE, validate_name

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

MIN_MEMORY = 6 << 20          # Docker's minimum; below this a container cannot even start its init
MAX_MEMORY = 1 << 50
MAX_CPUS = 1024.0
MAX_PIDS = 4194304
VM_ENGINES = ("qemu", "native")
KERNEL_FORMATS = ("auto", "bzimage", "elf", "flat")
KVM_DEVICE = "/dev/kvm"
ONLINE_CPUS = "/sys/devices/system/cpu/online"


def parse_size(value: str | int, field: str) -> int:
    """'64M', '1g', '512MiB', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected a size like 64M, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise InvalidArgument(f"{field}: cannot parse size {value!r} (use e.g. 64M, 1G, 512MiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return n


def _bounded(req: dict[str, Any], key: str, conv: Any, what: str, lo: float, hi: float) -> Any:
    """req[key] converted by `conv` and within [lo, hi], else InvalidArgument naming the field."""
    try:
        value = conv(req[key])
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{key}: not {what}: {req[key]!r}") from exc
    if not lo <= value <= hi:
        raise InvalidArgument(f"{key}: must be between {_num(lo)} and {_num(hi)} (got {_num(value)})")
    return value


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def validate_create(req: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise a create request; returns the instance spec stored with the instance."""
    spec: dict[str, Any] = {}
    if req.get("name") is not None:
        validate_name(req["name"], "name")
    image = req.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidArgument("image: required")
    command = req.get("command") or []
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise InvalidArgument("command: must be a list of strings")
    spec["command"] = command
    env = req.get("env") or []
    for e in env:
        if not isinstance(e, str) or "=" not in e or e.startswith("="):
            raise InvalidArgument(f"env: {e!r} is not NAME=VALUE")
    spec["env"] = list(env)

    if req.get("cpus") is not None:
        spec["cpus"] = _bounded(req, "cpus", float, "a number", 0.01, MAX_CPUS)
    spec.update(_cpu_sharing(req))
    if req.get("memory") is not None:
        mem = parse_size(req["memory"], "memory")
        if not MIN_MEMORY <= mem <= MAX_MEMORY:
            raise InvalidArgument(f"memory: must be between 6M and 1P (got {req['memory']!r})")
        spec["memory"] = mem
    if req.get("pids") is not None:
        spec["pids"] = _bounded(req, "pids", int, "an integer", 1, MAX_PIDS)
    spec.update(_memory_tuning(req, spec))
    spec.update(_stdio(req))

    volumes = []
    for v in req.get("volumes") or []:
        volumes.append(parse_volume(v))
    spec["volumes"] = volumes

    from virtkit.core.capabilities import normalise_caps

    spec["cap_add"] = normalise_caps(req.get("cap_add") or [], "cap_add")
    spec["cap_drop"] = normalise_caps(req.get("cap_drop") or [], "cap_drop")
    workdir = req.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        raise InvalidArgument(f"workdir: must be an absolute path (got {workdir!r})")
    spec["workdir"] = workdir
    spec["auto_remove"] = bool(req.get("auto_remove"))
    hostname = req.get("hostname")
    if hostname is not None:
        validate_name(hostname, "hostname")
    spec["hostname"] = hostname
    itype = req.get("type") or "container"
    if itype == "vm":
        spec.update(validate_vm_options(req))
    else:
        for key in ("engine", "kernel_format", "disk_size", "template", "user_data", "ssh_keys"):
            if req.get(key) not in (None, []):
                raise InvalidArgument(f"{key}: only for VMs (--vm)")
    spec.update(validate_network_options(req))
    return spec


def online_cpus() -> frozenset[int]:
    """The host's online CPUs (what a pinning may name), read each time: CPUs can be hot-plugged."""
    from virtkit.sched.cpushare import parse_cpu_list

    try:
        with open(ONLINE_CPUS) as f:
            return parse_cpu_list(f.read(), ONLINE_CPUS)
    except OSError:
        return frozenset(range(os.cpu_count() or 1))


def _cpu_sharing(req: dict[str, Any]) -> dict[str, Any]:
    """--cpu-weight (1..10000, the cgroup v2 scale) and --cpuset-cpus (CPUs that must be online here).

    The cap is --cpus, checked above; virtkit.sched.cpushare turns all three into cgroup settings.
    """
    from virtkit.sched import cpushare

    out: dict[str, Any] = {}
    if req.get("cpu_weight") is not None:
        out["cpu_weight"] = cpushare.validate_weight(req["cpu_weight"])
    if req.get("cpuset_cpus") is not None:
        out["cpuset_cpus"] = cpushare.validate_cpuset(req["cpuset_cpus"], online_cpus())
    return out


CPU_UPDATE_KEYS = ("cpu_weight", "cpus", "cpuset_cpus")


def validate_cpu_update(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The instance spec after `virtkit update`: a new weight, cap or pinning (cpus 0 removes the cap,
    cpuset_cpus "" the pinning). Returns a new dict; `spec` is left as it is."""
    from virtkit.sched import cpushare

    given = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(given) - set(CPU_UPDATE_KEYS))
    if unknown:
        raise InvalidArgument(f"{unknown[0]}: cannot be changed on an existing instance "
                              f"(update changes {', '.join(CPU_UPDATE_KEYS)})")
    if not given:
        raise InvalidArgument(f"update: nothing to change (give one of {', '.join(CPU_UPDATE_KEYS)})")
    out = dict(spec)
    if "cpu_weight" in given:
        out["cpu_weight"] = cpushare.validate_weight(given["cpu_weight"])
    if "cpus" in given:
        if not isinstance(given["cpus"], bool) and given["cpus"] in (0, "0"):
            out.pop("cpus", None)
        else:
            out["cpus"] = _bounded(given, "cpus", float, "a number", 0.01, MAX_CPUS)
    if "cpuset_cpus" in given:
        if given["cpuset_cpus"] == "":
            out.pop("cpuset_cpus", None)
        else:
            out["cpuset_cpus"] = cpushare.validate_cpuset(given["cpuset_cpus"], online_cpus())
    return out


def _memory_tuning(req: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """--memory-swappiness 0..100 and --oom-kill-disable (cgroup v1 only: the runtime refuses them on v2)."""
    out: dict[str, Any] = {}
    swappiness = req.get("memory_swappiness")
    if swappiness is not None:
        if isinstance(swappiness, bool):
            raise InvalidArgument(f"memory_swappiness: not an integer: {swappiness!r}")
        out["memory_swappiness"] = _bounded(req, "memory_swappiness", int, "an integer", 0, 100)
    oom = req.get("oom_kill_disable")
    if oom is not None and not isinstance(oom, bool):
        raise InvalidArgument(f"oom_kill_disable: must be true or false (got {oom!r})")
    if oom:
        if spec.get("memory") is None:
            # as Docker warns: with no limit of its own, a container that cannot be OOM-killed can starve the host
            raise InvalidArgument("oom_kill_disable: needs a memory limit (--memory) to wait at")
        out["oom_kill_disable"] = True
    return out


def _stdio(req: dict[str, Any]) -> dict[str, Any]:
    """-i (stdin kept open for whoever attaches), -t (a terminal) and the terminal's first size [rows, cols]."""
    out: dict[str, Any] = {}
    for key in ("interactive", "tty"):
        value = req.get(key)
        if value is not None and not isinstance(value, bool):
            raise InvalidArgument(f"{key}: must be true or false (got {value!r})")
        if value:
            out[key] = True
    size = req.get("console_size")
    if size is not None:
        if not (isinstance(size, list | tuple) and len(size) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 65535 for n in size)):
            raise InvalidArgument(f"console_size: must be [rows, columns], each 0..65535 (got {size!r})")
        if out.get("tty"):
            out["console_size"] = [size[0], size[1]]
    return out


def validate_vm_options(req: dict[str, Any]) -> dict[str, Any]:
    """--engine qemu|native, --accel auto|kvm|tcg, --kernel FILE, --kernel-format of a VM (the engine checks them
    against the host and the file on create)."""
    out: dict[str, Any] = {}
    engine = req.get("engine") or "qemu"
    if engine not in VM_ENGINES:
        raise InvalidArgument(f"engine: must be qemu or native (got {engine!r})")
    out["engine"] = engine
    accel = req.get("accel") or "auto"
    if accel not in ("auto", "kvm", "tcg"):
        raise InvalidArgument(f"accel: must be auto, kvm or tcg (got {accel!r})")
    if engine == "native" and accel != "auto":
        raise InvalidArgument("accel: only for the qemu engine (the native engine always runs on /dev/kvm)")
    out["accel"] = accel
    kernel = req.get("kernel")
    if kernel is not None:
        if not isinstance(kernel, str) or not os.path.isabs(kernel):
            raise InvalidArgument(f"kernel: must be an absolute path (got {kernel!r})")
        out["kernel"] = kernel
    fmt = req.get("kernel_format")
    if fmt is not None:
        if engine != "native":
            raise InvalidArgument("kernel_format: only for the native engine (--engine native); "
                                  "QEMU tells the format itself")
        if fmt not in KERNEL_FORMATS:
            raise InvalidArgument(f"kernel_format: must be auto, bzimage, elf or flat (got {fmt!r})")
        if kernel is None and fmt not in ("auto", "elf"):
            raise InvalidArgument(f"kernel_format: {fmt} needs a kernel file (--kernel); "
                                  "the default kernel is Debian's ELF vmlinux")
    if engine == "native":
        out["kernel_format"] = fmt or "auto"
        require_kvm()
    out.update(_vm_disk_options(req, engine))
    if req.get("template") is not None:
        if engine != "qemu":
            raise InvalidArgument("template: only for the qemu engine")
        out["template"] = bool(req["template"])
    out.update(_guest_config(req, engine))
    for key in ("cap_add", "cap_drop", "pids", "workdir", "memory_swappiness", "oom_kill_disable",
                "interactive", "tty"):
        if req.get(key):
            raise InvalidArgument(f"{key}: not supported for VMs yet")
    return out


MAX_GUEST_FILE = 1 << 20          # --user-data and --ssh-key files: cloud-init reads its whole seed into memory
_PUBLIC_KEY_RE = re.compile(r"(?:^|\s)(?:ssh-[\w-]+|ecdsa-sha2-\w+|sk-[\w.@-]+)\s+AAAA[0-9A-Za-z+/]+=*(?:\s|$)")


def _guest_config(req: dict[str, Any], engine: str) -> dict[str, Any]:
    """--user-data FILE and --ssh-key FILE (absolute paths on the daemon's host, as --kernel), read here into
    the spec's cloud_init; the engine takes them only for VMs of system images that run cloud-init."""
    path, keys = req.get("user_data"), req.get("ssh_keys") or []
    if path is None and not keys:
        return {}
    if engine != "qemu":
        raise InvalidArgument(f"{'user_data' if path is not None else 'ssh_keys'}: only for the qemu engine "
                              "(VMs of system images, whose cloud-init reads it)")
    if not isinstance(keys, list):
        raise InvalidArgument(f"ssh_keys: must be a list of files (got {keys!r})")
    out_keys: list[str] = []
    for key_file in keys:
        text = _read_guest_file(key_file, "ssh_keys")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if "PRIVATE KEY" in text:
            raise InvalidArgument(f"ssh_keys: {key_file} is a private key: give its public key (the .pub file)")
        if not lines or not all(_PUBLIC_KEY_RE.search(ln) for ln in lines):
            raise InvalidArgument(f"ssh_keys: {key_file} is not an OpenSSH public key file "
                                  "(lines like 'ssh-ed25519 AAAA... comment')")
        out_keys += lines
    user = None if path is None else _read_guest_file(path, "user_data")
    return {"cloud_init": {"user_data": user, "ssh_keys": out_keys}}


def _read_guest_file(path: Any, field: str) -> str:
    import stat

    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidArgument(f"{field}: must be an absolute path of a file (got {path!r})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)     # a FIFO does not block the daemon
    except FileNotFoundError:
        raise InvalidArgument(f"{field}: {path}: no such file") from None
    except OSError as exc:
        raise InvalidArgument(f"{field}: {path} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{field}: {path} is not a regular file")
        try:
            data = os.read(fd, MAX_GUEST_FILE + 1)
        except OSError as exc:
            raise InvalidArgument(f"{field}: {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_GUEST_FILE:
        raise InvalidArgument(f"{field}: {path} is larger than {MAX_GUEST_FILE >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{field}: {path} is not UTF-8 text (compressed user-data is not supported)") from None


MAX_DISK_SIZE = 16 << 40          # the largest ext4 image file a host ext4 holds


def _vm_disk_options(req: dict[str, Any], engine: str) -> dict[str, Any]:
    """--disk-size of the VM's root disk, and its volumes: named ones only, each attached as a disk (the engine
    checks the size against the image's disk; the volume service that each is an ext4 volume)."""
    out: dict[str, Any] = {}
    if req.get("disk_size") is not None:
        if engine != "qemu":
            raise InvalidArgument("disk_size: only for the qemu engine")
        size = parse_size(req["disk_size"], "disk_size")
        if not 0 < size <= MAX_DISK_SIZE:
            raise InvalidArgument(f"disk_size: must be between 1M and 16T (got {req['disk_size']!r})")
        out["disk_size"] = (size + (1 << 20) - 1) // (1 << 20) << 20        # whole MiB: qemu-img and resize2fs
    for v in req.get("volumes") or []:
        vol = parse_volume(v)
        if engine != "qemu":
            raise InvalidArgument("volumes: not supported for VMs of the native engine yet")
        if not vol.get("volume"):
            raise InvalidArgument(f"volume: {vol['source']!r}: a host directory is not supported for VMs (a VM "
                                  "takes named ext4 volumes, as disks: virtkit volume create NAME --size 1G)")
    return out


def require_kvm() -> None:
    """The native engine's one need of the host: a /dev/kvm it can open."""
    if not os.path.exists(KVM_DEVICE):
        raise InvalidArgument(f"engine: native needs {KVM_DEVICE}, which this host does not have (no hardware "
                              "virtualization exposed, or the kvm module is not loaded); use --engine qemu")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        raise InvalidArgument(f"engine: native needs {KVM_DEVICE} readable and writable, and it is not for this "
                              "user; use --engine qemu")


def validate_network_options(req: dict[str, Any]) -> dict[str, Any]:
    """--network NAME|none, --ip, -p [IP:]HOSTPORT:PORT[/tcp|udp], --rate."""
    import ipaddress

    out: dict[str, Any] = {}
    network = req.get("network") or "default"
    if network != "none":
        validate_name(network, "network")
    out["network"] = network
    ip = req.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.IPv4Address(str(ip)))
        except ValueError as exc:
            raise InvalidArgument(f"ip: {req['ip']!r} is not an IPv4 address") from exc
        if network == "none":
            raise InvalidArgument("ip: an address needs a network (not --network none)")
    out["ip"] = ip
    if req.get("ip6") is not None:
        from virtkit.core.network_model import parse_ip6

        out["ip6"] = parse_ip6(req["ip6"], network)
    ports = [parse_port(p) for p in req.get("ports") or []]
    if ports and network == "none":
        raise InvalidArgument("ports: publishing a port needs a network (not --network none)")
    from virtkit.core.network_model import ports_overlap

    for i, p in enumerate(ports):
        # one host socket each: 8080:80 (every address) and 127.0.0.1:8080:81 want the same one
        twin = next((q for q in ports[:i] if ports_overlap(p, q)), None)
        if twin is not None:
            where = {f"{x['host_ip'] or '0.0.0.0'}:{x['host_port']}" for x in (twin, p)}
            raise InvalidArgument(f"ports: host port {p['host_port']}/{p['proto']} is given twice "
                                  f"({' and '.join(sorted(where))})")
    out["ports"] = ports
    out["rate"] = None
    if req.get("rate") is not None:
        from virtkit.core.networks import parse_rate

        if network == "none":
            raise InvalidArgument("rate: a rate limit needs a network (not --network none)")
        out["rate"] = parse_rate(req["rate"])
    return out


def parse_port(value: Any) -> dict[str, Any]:
    """'[IP:]HOSTPORT:PORT[/tcp|udp]' or a dict of the same -> {host_ip, host_port, port, proto}."""
    import ipaddress

    if isinstance(value, dict):
        host_ip = value.get("host_ip")
        value = f"{str(host_ip) + ':' if host_ip else ''}{value.get('host_port')}:{value.get('port')}" \
                f"/{value.get('proto') or 'tcp'}"
    if not isinstance(value, str):
        raise InvalidArgument(f"ports: cannot parse {value!r}")
    spec, _, proto = value.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"ports: {value!r}: protocol must be tcp or udp")
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise InvalidArgument(f"ports: {value!r} is not [IP:]HOSTPORT:PORT[/tcp|udp]")
    host_ip = parts[0] if len(parts) == 3 else None
    if host_ip is not None:
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip))
        except ValueError as exc:
            raise InvalidArgument(f"ports: {value!r}: {host_ip!r} is not an IPv4 address") from exc
    nums = []
    for part in parts[-2:]:
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise InvalidArgument(f"ports: {value!r}: {part!r} is not a port number (1-65535)")
        nums.append(int(part))
    return {"host_ip": host_ip, "host_port": nums[0], "port": nums[1], "proto": proto}


def parse_volume(v: str | dict[str, Any]) -> dict[str, Any]:
    """'HOSTDIR:DIR[:ro|rw]', 'VOLUME:DIR[:ro|rw]' or {"source"|"volume", "target", "readonly"} -> normalised dict.

    A source that is an absolute path is a bind mount of a host directory; a name is a named volume
    ({"volume": name, "source": None, ...}: the volume service fills in its host path).
    """
    if isinstance(v, str):
        parts = v.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise InvalidArgument(f"volume: {v!r} is not HOSTDIR:DIR[:ro] or VOLUME:DIR[:ro]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise InvalidArgument(f"volume: {v!r}: mode must be ro or rw, got {mode!r}")
        vol = {"source": parts[0], "target": parts[1], "readonly": mode == "ro"}
    elif isinstance(v, dict):
        vol = {"source": v.get("source"), "target": v.get("target"), "readonly": bool(v.get("readonly"))}
        if v.get("volume") is not None:
            if vol["source"] is not None:
                raise InvalidArgument("volume: give either source (a host path) or volume (a name), not both")
            vol["source"] = v["volume"]
    else:
        raise InvalidArgument(f"volume: cannot parse {v!r}")
    src, dst = vol["source"], vol["target"]
    if not isinstance(dst, str) or not dst.startswith("/") or ".." in dst.split("/"):
        raise InvalidArgument(f"volume: container path must be absolute without '..' (got {dst!r})")
    if isinstance(src, str) and not src.startswith("/") and NAME_RE.match(src):
        return {"volume": src, "source": None, "target": dst, "readonly": vol["readonly"]}
    if not isinstance(src, str) or not os.path.isabs(src):
        raise InvalidArgument(f"volume: {src!r} is not a volume name, and a host path must be absolute")
    if not os.path.exists(src):
        raise InvalidArgument(f"volume: host path {src!r} does not exist")
    return vol
