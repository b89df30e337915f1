"""One function per `virtkit` command: SDK call in, printed result out."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from virtkit.cli.main import _command
from virtkit.cli.output import write_err, write_out
from virtkit.client import Client
from virtkit.core.errors import InvalidArgument, VirtkitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


def each(names: list[str], fn: Any) -> int:
    """Apply fn to every name, report each failure, exit non-zero if any failed (Docker's behaviour)."""
    code = 0
    for name in names:
        try:
            fn(name)
            print(name)
        except VirtkitError as exc:
            print(f"virtkit: error: {exc.message}", file=sys.stderr)
            code = exc.exit_code
    return code


# -- instances ------------------------------------------------------------------------------------------
def cmd_run(c: Client, a: argparse.Namespace) -> int:
    cmd = _command(a)
    options: dict[str, Any] = {
        "name": a.name, "cpus": a.cpus, "memory": a.memory, "pids": a.pids, "env": a.env,
        "volumes": a.volume, "cap_add": a.cap_add, "cap_drop": a.cap_drop, "workdir": a.workdir,
        "hostname": a.hostname, "auto_remove": a.rm, "network": a.network, "ip": a.ip, "ip6": a.ip6,
        "ports": a.publish, "rate": a.rate, "type": "vm" if a.vm else None, "accel": a.accel, "engine": a.engine,
        "kernel": os.path.abspath(a.kernel) if a.kernel else None, "kernel_format": a.kernel_format,
        "memory_swappiness": a.memory_swappiness, "oom_kill_disable": a.oom_kill_disable or None,
        "cpu_weight": a.cpu_weight, "cpuset_cpus": a.cpuset_cpus, "disk_size": a.disk_size,
        "template": False if a.no_template else None,
        "user_data": os.path.abspath(a.user_data) if a.user_data else None,
        "ssh_keys": [os.path.abspath(k) for k in a.ssh_key],
    }
    options = {k: v for k, v in options.items() if v not in (None, [])}
    if a.detach:
        inst = c.run(a.image, cmd, detach=True, interactive=a.interactive or None, tty=a.tty or None, **options)
        print(inst["name"])
        if a.vm:
            _say_vm_boot(c, inst["name"])
        return 0
    if a.interactive or a.tty:
        from virtkit.cli.terminal import run_attached

        status = run_attached(c, a.image, cmd, options, interactive=a.interactive, terminal=a.tty)
    else:
        status = c.run(a.image, cmd, output=write_out, error_output=write_err, **options)
    code = status.get("exit_code")
    if code is None:
        print(f"virtkit: instance ended without an exit code ({status.get('reason')})", file=sys.stderr)
        return 125
    return int(code)


def _say_vm_boot(c: Client, name: str) -> None:
    """On stderr: whether the VM started from its image's template (and how to opt out) or booted, and why."""
    try:
        boot = c.stats(name).get("boot") or {}
    except VirtkitError:
        return
    if boot.get("mode") == "template":
        print(f"virtkit: {name} started from the saved template {boot['template']} of its image in "
              f"{boot['seconds']:.2f} s, then given its own hostname, MAC, address and machine-id "
              "(--no-template boots it instead)", file=sys.stderr)
    elif boot.get("why"):
        print(f"virtkit: {name} boots: {boot['why']}", file=sys.stderr)


def cmd_update(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, lambda n: c.update(n, cpu_weight=a.cpu_weight, cpus=a.cpus, cpuset_cpus=a.cpuset_cpus))


def cmd_rename(c: Client, a: argparse.Namespace) -> int:
    c.rename(a.old, a.new)
    return 0


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    insts = c.instances()
    if a.json:
        print(json.dumps(insts, indent=2))
        return 0
    rows = []
    for i in insts:
        status = i["state"]
        if i["state"] == "stopped" and i.get("exit_code") is not None:
            status = f"stopped ({i['exit_code']}, {i.get('exit_reason')})"
        rows.append([i["name"], i["type"], status, i["image"], str(i.get("pid") or ""),
                     _ago(i["created_at"])])
    table(["NAME", "TYPE", "STATE", "IMAGE", "PID", "CREATED"], rows)
    return 0


def cmd_inspect(c: Client, a: argparse.Namespace) -> int:
    print(json.dumps(c.instance(a.name), indent=2))
    return 0


def cmd_exec(c: Client, a: argparse.Namespace) -> int:
    cmd = _command(a)
    if not cmd:
        raise InvalidArgument("exec: give a command after the instance name")
    if a.tty:
        from virtkit.cli.terminal import exec_tty

        return exec_tty(c, a.name, cmd, a.env)
    stdin = _stdin_chunks() if a.interactive else None
    return c.exec_stream(a.name, cmd, env=a.env, stdin=stdin, on_stdout=write_out, on_stderr=write_err)


def _stdin_chunks() -> Any:
    while True:
        data = os.read(0, 65536)
        if not data:
            return
        yield data


def cmd_attach(c: Client, a: argparse.Namespace) -> int:
    """Until the instance stops; then its exit code, as `docker attach`."""
    from virtkit.cli.terminal import attach

    status = attach(c, a.name, stdin=not a.no_stdin)
    code = status.get("exit_code")
    return 125 if code is None else int(code)


def cmd_console(c: Client, a: argparse.Namespace) -> int:
    """Until the VM stops (its exit code) or the user detaches with Ctrl-] (0), as `virsh console`."""
    from virtkit.cli.terminal import console

    status = console(c, a.name, stdin=not a.no_stdin, logs=a.logs)
    code = status.get("exit_code")
    return 0 if status.get("reason") == "detached" or code is None else int(code)


def cmd_logs(c: Client, a: argparse.Namespace) -> int:
    """As `docker logs`: the instance's stdout on ours, its stderr on ours."""
    for stream, chunk in c.log_stream(a.name, follow=a.follow, tail=a.tail):
        (write_err if stream == "stderr" else write_out)(chunk)
    return 0


def cmd_start(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, c.start)


def cmd_stop(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, lambda n: c.stop(n, a.time))


def cmd_restart(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, lambda n: c.restart(n, a.time))


def cmd_kill(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, lambda n: c.kill(n, a.signal))


def cmd_pause(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, c.pause)


def cmd_resume(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, c.resume)


def cmd_rm(c: Client, a: argparse.Namespace) -> int:
    return each(a.names, lambda n: c.remove(n, force=a.force))


def cmd_stats(c: Client, a: argparse.Namespace) -> int:
    first = c.stats(a.name)
    t0 = time.monotonic()
    time.sleep(0.5)
    second = c.stats(a.name)
    elapsed = time.monotonic() - t0
    cpu_pct = 100.0 * (second.get("cpu_usage_ns", 0) - first.get("cpu_usage_ns", 0)) / (elapsed * 1e9)
    second["cpu_percent"] = round(cpu_pct, 1)
    if a.json:
        print(json.dumps(second, indent=2))
        return 0
    vm = "memory_rss_bytes" in second       # a VM: its process's RSS, under the guest's RAM; no pids
    memory = second.get("memory_rss_bytes") if vm else second.get("memory_bytes", 0)
    limit = second.get("memory_bytes") if vm else second.get("memory_limit")
    table(["NAME", "CPU TIME", "CPU %", "MEMORY", "LIMIT", "PIDS"], [[
        a.name, f"{second.get('cpu_usage_ns', 0) / 1e9:.2f}s", f"{cpu_pct:.1f}%",
        size_str(memory), size_str(limit) if limit else "-",
        "-" if vm else f"{second.get('pids_current', 0)}/{second.get('pids_limit') or '-'}",
    ]])
    if second.get("disks") or second.get("network"):
        _print_vm_io(second)
    if second.get("exits") is not None:
        _print_vm_exits(second)
    return 0


def _print_vm_io(stats: dict[str, Any]) -> None:
    """A QEMU VM's disk and network counters (as the guest sees them: rx is what it received)."""
    rows = [[name, size_str(d["rd_bytes"]), size_str(d["wr_bytes"]), str(d["rd_operations"]),
             str(d["wr_operations"])] for name, d in (stats.get("disks") or {}).items()]
    if rows:
        print()
        table(["DISK", "READ", "WRITTEN", "READS", "WRITES"], rows)
    net = stats.get("network")
    if net:
        print()
        table(["INTERFACE", "RX", "TX", "RX PACKETS", "TX PACKETS"], [[
            net["interface"], size_str(net["rx_bytes"]), size_str(net["tx_bytes"]), str(net["rx_packets"]),
            str(net["tx_packets"])]])


def _print_vm_exits(stats: dict[str, Any]) -> None:
    """The native engine's own figures: CPU time and exits of each vCPU, and exits by reason."""
    print()
    table(["VCPU", "CPU TIME", "EXITS"], [
        [str(v.get("index")), f"{v.get('cpu_time_s') or 0:.2f}s", str(sum((v.get("exits") or {}).values()))]
        for v in stats.get("vcpu_stats") or []])
    print()
    exits = sorted((stats.get("exits") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    table(["EXIT REASON", "COUNT"], [[reason, str(count)] for reason, count in exits] or [["-", "0"]])


def cmd_system(c: Client, a: argparse.Namespace) -> int:
    if a.system_cmd == "info":
        print(json.dumps(c.info(), indent=2))
    elif a.system_cmd == "shutdown":
        c.shutdown()
    elif a.system_cmd == "ksm":
        st = c.ksm(None if a.state is None else a.state == "on")
        if not st.get("available"):
            print("KSM: not available in this kernel")
        else:
            print(f"KSM: {'on' if st['enabled'] else 'off'}; {st['pages_sharing']} pages shared "
                  f"({st['saved_mib']} MiB saved); scanning {st['pages_to_scan']} pages every "
                  f"{st['sleep_millisecs']} ms when on")
    return 0


# -- printing -------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def size_str(n: int | None) -> str:
    if n is None:
        return "-"
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f}{unit}" if unit == "B" else f"{f:.1f}{unit}"
        f /= 1024
    return str(n)


def _ago(ts: float) -> str:
    d = max(0, time.time() - ts)
    if d < 60:
        return f"{int(d)}s ago"
    if d < 3600:
        return f"{int(d // 60)}m ago"
    if d < 86400:
        return f"{int(d // 3600)}h ago"
    return f"{int(d // 86400)}d ago"
