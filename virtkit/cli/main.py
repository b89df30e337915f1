"""The `virtkit` command: parses arguments, calls the SDK, prints. No logic of its own."""

from __future__ import annotations

import argparse
import os
import sys

from virtkit.core.errors import VirtkitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


class _Skipped:
    """Stands in for the parser of a command this invocation does not use: argparse takes ~0.5 ms to build each
    of the ~45 parsers, a third of a short command's run."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def _command_word(argv: list[str]) -> str | None:
    """The command `argv` names (the first word that is not a top-level option), if any."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--home":
            i += 2
            continue
        if not word.startswith("-"):
            return word
        i += 1
    return None


def _help_width() -> int:
    """What argparse's HelpFormatter would take (COLUMNS, else the terminal's width, less 2) without the shutil
    import it does for each parser (~1.8 ms of every command's start)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (OSError, ValueError):
            columns = 80
    return max(columns - 2, 11)


class _Formatter(argparse.HelpFormatter):
    width: int | None = None

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if _Formatter.width is None:
            _Formatter.width = _help_width()
        super().__init__(prog, indent_increment, max_help_position, width or _Formatter.width)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's, with the help width computed once (subparsers are made by this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` just the parser of that command (None when `only` names no command)."""
    p = _ArgumentParser(prog="virtkit", description="Run containers and virtual machines.")
    p.add_argument("--home", help="virtkit home (default $VIRTKIT_HOME or /var/lib/virtkit)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    if only is not None:
        real_add_parser, built = sub.add_parser, []

        def add_parser(name: str, **kwargs: Any) -> Any:
            if name != only and only not in kwargs.get("aliases", ()):
                return _Skipped()
            built.append(name)
            return real_add_parser(name, **kwargs)

        sub.add_parser = add_parser  # type: ignore[method-assign]

    from virtkit.cli.cmd_image import add_parser as add_image_parser

    add_image_parser(sub)
    from virtkit.cli.cmd_snapshot import add_parser as add_snapshot_parser
    from virtkit.cli.cmd_volume import add_parser as add_volume_parser

    add_volume_parser(sub)
    add_snapshot_parser(sub)
    from virtkit.cli.cmd_network import add_parser as add_network_parser

    add_network_parser(sub)

    r = sub.add_parser("run", help="create and start an instance")
    r.add_argument("--name")
    r.add_argument("-d", "--detach", action="store_true", help="run in the background, print the name")
    r.add_argument("--rm", action="store_true", help="remove the instance when it exits")
    r.add_argument("-i", "--interactive", action="store_true", help="keep its stdin open; ours goes to it")
    r.add_argument("-t", "--tty", action="store_true", help="run it on a terminal (raw mode here with -i)")
    r.add_argument("--cpus", type=float, help="CPU limit in cores, e.g. 0.5 (a VM gets this many vCPUs, rounded up)")
    r.add_argument("--cpu-weight", type=int, metavar="1-10000",
                   help="share of the CPUs under contention, relative to others (default 100)")
    r.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs it may run on, e.g. 1 or 0-2,4")
    r.add_argument("--memory", "-m", help="memory limit, e.g. 64M")
    r.add_argument("--pids", type=int, help="maximum number of processes")
    r.add_argument("--memory-swappiness", type=int, metavar="0-100", help="how readily its memory swaps (cgroup v1)")
    r.add_argument("--oom-kill-disable", action="store_true",
                   help="at its memory limit, wait instead of being OOM-killed (cgroup v1; needs --memory)")
    r.add_argument("-e", "--env", action="append", default=[], help="NAME=VALUE")
    r.add_argument("-v", "--volume", action="append", default=[], help="HOSTDIR:DIR[:ro] or VOLUME:DIR[:ro]")
    r.add_argument("--cap-add", action="append", default=[])
    r.add_argument("--cap-drop", action="append", default=[])
    r.add_argument("-w", "--workdir")
    r.add_argument("--hostname")
    r.add_argument("--vm", action="store_true", help="a virtual machine with its own kernel")
    r.add_argument("--engine", choices=["qemu", "native"],
                   help="VM engine: qemu (default) or native (virtkit's own VMM on /dev/kvm)")
    r.add_argument("--accel", choices=["auto", "kvm", "tcg"], help="VM accelerator of the qemu engine (default: auto)")
    r.add_argument("--kernel", help="VM kernel (qemu: ELF vmlinux with a PVH note, or bzImage; native: see "
                                    "--kernel-format)")
    r.add_argument("--kernel-format", choices=["auto", "bzimage", "elf", "flat"],
                   help="native engine: how to boot --kernel (default auto; flat: raw 64-bit code at 0x100000)")
    r.add_argument("--disk-size", help="VM root disk size, e.g. 4G (default: the image's disk, at least 1G)")
    r.add_argument("--no-template", action="store_true",
                   help="VM of a system image: boot it, rather than start it from the image's saved template")
    r.add_argument("--user-data", metavar="FILE",
                   help="VM of a system image: cloud-init user-data (#cloud-config or a script), passed as is")
    r.add_argument("--ssh-key", metavar="FILE", action="append", default=[],
                   help="VM of a system image: a public key file for root's authorized_keys (repeatable)")
    r.add_argument("--network", "--net", help="network to attach to (default: default; none: loopback only)")
    r.add_argument("--ip", help="static address on the network")
    r.add_argument("--ip6", help="static IPv6 address on the network (one created with --ipv6)")
    r.add_argument("-p", "--publish", action="append", default=[], help="[IP:]HOSTPORT:PORT[/tcp|udp]")
    r.add_argument("--rate", help="bandwidth limit each way, e.g. 10mbit")
    r.add_argument("image")
    r.add_argument("command", nargs=argparse.REMAINDER)

    ls = sub.add_parser("list", aliases=["ls", "ps"], help="list instances")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("-a", "--all", action="store_true", help="accepted as Docker's: stopped ones are always listed")

    ex = sub.add_parser("exec", help="run a command in a running instance")
    ex.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    ex.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    ex.add_argument("-e", "--env", action="append", default=[])
    ex.add_argument("name")
    ex.add_argument("command", nargs=argparse.REMAINDER)

    at = sub.add_parser("attach", help="follow a running instance's output (and feed it our stdin, if -i/-t)")
    at.add_argument("--no-stdin", action="store_true", help="do not send our stdin to it")
    at.add_argument("name")

    co = sub.add_parser("console", help="a VM's serial console: its output live, our keys to it (detach: Ctrl-])")
    co.add_argument("--no-stdin", action="store_true", help="only show its output")
    co.add_argument("--logs", action="store_true", help="first show what the console printed so far")
    co.add_argument("name")

    lg = sub.add_parser("logs", help="show an instance's output")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing output until the instance stops")
    lg.add_argument("-n", "--tail", type=_lines, metavar="N", help="only the last N lines (then more with -f)")
    lg.add_argument("name")

    st = sub.add_parser("stop", help="stop instances (SIGTERM, then SIGKILL after the timeout)")
    st.add_argument("-t", "--time", type=float, default=10.0, help="seconds to wait before SIGKILL")
    st.add_argument("names", nargs="+")
    rs = sub.add_parser("restart", help="restart instances")
    rs.add_argument("-t", "--time", type=float, default=10.0)
    rs.add_argument("names", nargs="+")
    for verb in ("start", "pause", "resume"):
        sp = sub.add_parser(verb, help=f"{verb} instances")
        sp.add_argument("names", nargs="+")
    k = sub.add_parser("kill", help="send a signal (default KILL)")
    k.add_argument("-s", "--signal", default="KILL")
    k.add_argument("names", nargs="+")
    rm = sub.add_parser("rm", help="remove instances")
    rm.add_argument("-f", "--force", action="store_true", help="stop running instances first")
    rm.add_argument("names", nargs="+")
    up = sub.add_parser("update", help="change CPU weight, cap or pinning (at once when running)")
    up.add_argument("--cpu-weight", type=int, metavar="1-10000", help="share under contention (default 100)")
    up.add_argument("--cpus", type=float, help="CPU cap in cores; 0 removes the cap")
    up.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs it may run on; '' removes the pinning")
    up.add_argument("names", nargs="+")
    rn = sub.add_parser("rename", help="rename an instance (running or not)")
    rn.add_argument("old")
    rn.add_argument("new")
    sts = sub.add_parser("stats", help="CPU, memory and pids of an instance")
    sts.add_argument("--json", action="store_true")
    sts.add_argument("name")
    ins = sub.add_parser("inspect", help="show an instance as JSON")
    ins.add_argument("name")

    sy = sub.add_parser("system", help="the daemon").add_subparsers(dest="system_cmd", required=True)
    sy.add_parser("info")
    sy.add_parser("shutdown", help="stop virtkitd (instances keep running)")
    ks = sy.add_parser("ksm", help="merge same pages of VMs' memory (host-wide; costs CPU while scanning)")
    ks.add_argument("state", nargs="?", choices=["on", "off"], help="turn it on or off (default: show)")
    if only is not None and not built:
        return _parser()        # an unknown command: the whole parser says which there are
    return p


def _lines(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a number of lines >= 0 or 'all' (got {value!r})")
    return n


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return cmd


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(_command_word(words)).parse_args(words)
    try:
        code = dispatch(args)
    except VirtkitError as exc:
        print(f"virtkit: error: {exc.message}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    # no interpreter teardown: it only costs time once the output is flushed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def dispatch(args: argparse.Namespace) -> int:
    from virtkit.cli import commands
    from virtkit.client import connect

    client = connect(args.home)
    if args.cmd == "image":
        from virtkit.cli.cmd_image import cmd_image

        return int(cmd_image(client, args) or 0)
    if args.cmd == "volume":
        from virtkit.cli.cmd_volume import cmd_volume

        return int(cmd_volume(client, args) or 0)
    if args.cmd == "network":
        from virtkit.cli.cmd_network import cmd_network

        return int(cmd_network(client, args) or 0)
    if args.cmd in ("snapshot", "restore", "publish"):
        from virtkit.cli import cmd_snapshot

        return int(getattr(cmd_snapshot, f"cmd_{args.cmd}")(client, args) or 0)
    handler = getattr(commands, "cmd_" + args.cmd.replace("-", "_"), None)
    if handler is None:
        aliases = {"ls": "list", "ps": "list"}
        handler = getattr(commands, "cmd_" + aliases[args.cmd])
    result: Any = handler(client, args)
    return int(result or 0)


if __name__ == "__main__":
    main()
