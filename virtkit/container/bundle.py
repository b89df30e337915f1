"""Turns an instance (image config + user options) into an OCI bundle: config.json and the overlay it mounts."""

from __future__ import annotations

import json
import os
from typing import Any

OVERLAY_ANNOTATION = "org.virtkit.rootfs.overlay"


def _merge_env(image_env: list[str], user_env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in list(image_env) + list(user_env):
        key, _, value = item.partition("=")
        merged[key] = value
    if "PATH" not in merged:
        merged["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return [f"{k}={v}" for k, v in merged.items()]


def resources(spec: dict[str, Any], cgroup_version: int | None = None) -> dict[str, Any]:
    """linux.resources from the instance spec; the CPU part (weight, cap, pinning) as sched.cpushare decides it
    for this host's cgroup version (on v2 the weight goes as linux.resources.unified, see CpuSettings.oci)."""
    from virtkit.sched.cpushare import CpuRequest, plan

    res: dict[str, Any] = {}
    cpu = plan(CpuRequest.from_spec(spec), None)
    if cpu.weight is not None or cpu.quota_us is not None or cpu.cpus is not None:
        if cgroup_version is None:
            from virtkit.container.cgroups import detect_version

            cgroup_version = detect_version()
        res.update(cpu.oci(cgroup_version))
    memory: dict[str, Any] = {}
    if spec.get("memory"):
        # swap equal to the limit means no swap on top of it (Docker's --memory-swap default is 2x; we keep it strict)
        memory.update(limit=spec["memory"], swap=spec["memory"])
    if spec.get("memory_swappiness") is not None:
        memory["swappiness"] = spec["memory_swappiness"]
    if spec.get("oom_kill_disable"):
        memory["disableOOMKiller"] = True
    if memory:
        res["memory"] = memory
    if spec.get("pids"):
        res["pids"] = {"limit": spec["pids"]}
    return res


def build_config(
    *,
    instance_id: str,
    hostname: str,
    image_config: dict[str, Any],
    spec: dict[str, Any],
    lowerdirs: list[str],
    instance_dir: str,
    cgroup_path: str,
) -> dict[str, Any]:
    """The config.json for one container instance."""
    from virtkit.container import caps as caps_mod
    from virtkit.container import seccomp
    from virtkit.container.spec import default_spec
    from virtkit.core.capabilities import effective_set

    img = image_config.get("config") or {}
    entrypoint = img.get("Entrypoint") or []
    args = list(entrypoint) + (spec.get("command") or img.get("Cmd") or [])
    if not args:
        from virtkit.core.errors import InvalidArgument

        raise InvalidArgument("command: the image has no default command; give one after --")

    config = default_spec(args=args)
    process = config["process"]
    process["terminal"] = bool(spec.get("tty"))
    # as Docker: a terminal comes with TERM=xterm unless the image or the user say otherwise
    tty_env = ["TERM=xterm"] if spec.get("tty") else []
    process["env"] = _merge_env(tty_env + list(img.get("Env") or []), spec.get("env") or [])
    if spec.get("console_size"):
        rows, cols = spec["console_size"]
        process["consoleSize"] = {"height": rows, "width": cols}
    process["cwd"] = spec.get("workdir") or img.get("WorkingDir") or "/"
    caps = effective_set(list(caps_mod.VIRTKIT_DEFAULT_CAPS), spec.get("cap_add") or [], spec.get("cap_drop") or [])
    process["capabilities"] = {
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": [],
    }
    process["noNewPrivileges"] = False
    config["hostname"] = hostname
    config["root"] = {"path": os.path.join(instance_dir, "rootfs"), "readonly": False}
    config["annotations"] = {
        OVERLAY_ANNOTATION: json.dumps({
            "lowerdir": lowerdirs,
            "upperdir": os.path.join(instance_dir, "upper"),
            "workdir": os.path.join(instance_dir, "work"),
            # an instance removed when it exits keeps nothing of its writable layer: overlayfs may skip syncing
            # it (to the disk, at unmount: ~0.5 ms of every exit here), as podman does for `run --rm`
            **({"volatile": True} if spec.get("auto_remove") else {}),
        }),
        "org.virtkit.instance.id": instance_id,
    }
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = cgroup_path
    linux["resources"] = {**linux.get("resources", {}), **resources(spec)}
    linux["seccomp"] = seccomp.default_profile()
    linux["namespaces"] = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network", "cgroup")]
    net = spec.get("net") or {}
    if net.get("netns"):
        # the network service prepared and pinned this instance's namespace: join it
        linux["namespaces"] = [{"type": "network", "path": net["netns"]} if ns["type"] == "network" else ns
                               for ns in linux["namespaces"]]

    mounts = config.setdefault("mounts", [])
    for name in ("hosts", "hostname") + (("resolv.conf",) if net.get("netns") else ()):
        mounts.append({"destination": f"/etc/{name}", "type": "bind",
                       "source": os.path.join(instance_dir, name), "options": ["rbind", "ro", "nosuid", "nodev"]})
    for vol in spec.get("volumes") or []:
        if not vol.get("source"):          # a named volume the volume service did not resolve
            from virtkit.core.errors import InvalidArgument

            raise InvalidArgument(f"volume: named volume {vol.get('volume')!r} has no host path")
        opts = ["rbind", "rprivate"] + (["ro"] if vol.get("readonly") else [])
        mounts.append({"destination": vol["target"], "type": "bind", "source": vol["source"], "options": opts})
    return config


def write_bundle(instance_dir: str, hostname: str, config: dict[str, Any], address: str | None = None) -> str:
    """Create the instance's directories and files; returns the bundle directory.

    `address`: the instance's address on its network (its own name resolves to it; the network service
    adds its peers' names to the hosts file afterwards)."""
    from virtkit.net.hosts import render, resolv_conf

    for d in ("rootfs", "upper", "work", "bundle"):
        os.makedirs(os.path.join(instance_dir, d), mode=0o755, exist_ok=True)
    with open(os.path.join(instance_dir, "hostname"), "w") as f:
        f.write(hostname + "\n")
    with open(os.path.join(instance_dir, "hosts"), "w") as f:
        f.write(render(hostname, address, []))
    if address:
        with open(os.path.join(instance_dir, "resolv.conf"), "w") as f:
            f.write(resolv_conf())
    bundle = os.path.join(instance_dir, "bundle")
    tmp = os.path.join(bundle, "config.json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(config))   # the C encoder: json.dump with an indent encodes in Python, ~1.5 ms here
    os.rename(tmp, os.path.join(bundle, "config.json"))
    return bundle
