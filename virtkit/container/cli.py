"""The `virtkit-runtime` command: runc's verbs and flags over Runtime, with runc-style error logging.

Parsing is hand-written on purpose: argparse alone costs several milliseconds of import and the whole
create/start/delete cycle has a budget of a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sys
import time

from virtkit.container import fastjson
from virtkit.core.errors import InvalidArgument, Unsupported, VirtkitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from typing import Any, NoReturn

VERSION = "0.1.0"
USAGE = """usage: virtkit-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [ARGS]

commands: create, start, run, state, kill, delete, exec, list, ps, pause, resume, spec, features
"""
# per verb: flags that take a value, boolean flags (aliases map to a canonical name)
_VALUE = {"--bundle": "bundle", "-b": "bundle", "--pid-file": "pid_file", "--console-socket": "console_socket",
          "--preserve-fds": "preserve_fds", "--process": "process", "-p": "process", "--cwd": "cwd",
          "--env": "env", "-e": "env", "--format": "format", "-f": "format", "--user": "user", "-u": "user",
          "--signal": "signal", "--cap": "cap"}
_BOOL = {"--detach": "detach", "-d": "detach", "--no-pivot": "no_pivot", "--force": "force",
         "--all": "all", "-a": "all", "--tty": "tty", "-t": "tty", "--rootless": "rootless",
         "--no-new-keyring": "ignored", "--keep": "ignored", "--no-subreaper": "ignored", "--quiet": "quiet",
         "-q": "quiet", "--systemd-cgroup": "systemd_cgroup"}
_VERBS = ("create", "start", "run", "state", "kill", "delete", "exec", "list", "ps", "pause", "resume", "spec",
          "features")


class Usage(InvalidArgument):
    pass


class Options:
    def __init__(self) -> None:
        self.root = "/run/virtkit-runtime"
        self.log: str | None = None
        self.log_format = "text"
        self.debug = False


def _log(opts: Options, level: str, msg: str) -> None:
    if not opts.log:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if opts.log_format == "json":
        line = fastjson.dumps({"level": level, "msg": msg, "time": now})
    else:
        line = f"time=\"{now}\" level={level} msg={fastjson.dumps(msg)}"
    try:
        with open(opts.log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _parse_globals(argv: list[str], opts: Options) -> list[str]:
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if name in ("--root", "--log", "--log-format", "--criu", "--cgroup-manager", "--rootless"):
            if not eq:
                if i + 1 >= len(argv):
                    raise Usage(f"{name}: needs a value")
                val, i = argv[i + 1], i + 1
            if name == "--root":
                opts.root = val
            elif name == "--log":
                opts.log = val
            elif name == "--log-format":
                if val not in ("text", "json"):
                    raise Usage(f"--log-format: must be text or json (got {val!r})")
                opts.log_format = val
            elif name == "--cgroup-manager" and val != "cgroupfs":
                if val == "systemd":
                    raise Unsupported("--cgroup-manager systemd: virtkit-runtime drives cgroupfs only")
                raise Usage(f"--cgroup-manager: must be cgroupfs or systemd (got {val!r})")
        elif a == "--systemd-cgroup":
            raise Unsupported("--systemd-cgroup: virtkit-runtime drives cgroupfs only")
        elif a == "--debug":
            opts.debug = True
        elif a.startswith("-") and a not in ("-v", "--version", "-h", "--help"):
            raise Usage(f"unknown global flag {a!r}")
        else:
            return argv[i:]
        i += 1
    return []


def _parse_verb(args: list[str], verb: str = "") -> tuple[dict[str, Any], list[str]]:
    flags: dict[str, Any] = {"env": []}
    pos: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            pos.extend(args[i + 1:])
            break
        name, eq, val = a.partition("=")
        if a == "-f" and verb == "delete":
            flags["force"] = True
        elif name in _VALUE:
            if not eq:
                if i + 1 >= len(args):
                    raise Usage(f"{name}: needs a value")
                val, i = args[i + 1], i + 1
            key = _VALUE[name]
            if key == "env":
                flags["env"].append(val)
            else:
                flags[key] = val
        elif a in _BOOL:
            flags[_BOOL[a]] = True
        elif a.startswith("-") and len(a) > 1:
            raise Usage(f"unknown flag {a!r}")
        else:
            pos.append(a)
        i += 1
    return flags, pos


def _one_id(pos: list[str], verb: str) -> str:
    if len(pos) != 1:
        raise Usage(f"{verb}: needs exactly one container id")
    return pos[0]


def _signal(name: str) -> int:
    import signal

    s = name.upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return int(signal.Signals[s])
    except KeyError:
        raise Usage(f"kill: unknown signal {name!r}") from None


def _print_json(obj: Any) -> None:
    import json  # indented as runc prints it; not on the create/start/delete path

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _features() -> dict:
    from virtkit.container import namespaces, rootfs, spec

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": spec.OCI_VERSION, "hooks": list(spec.HOOK_KINDS),
        "mountOptions": sorted(list(rootfs._FLAGS) + list(rootfs.PROPAGATION)),
        "linux": {
            "namespaces": list(namespaces.FLAGS),
            "capabilities": sorted(__import__("virtkit.container.caps", fromlist=["CAPS"]).CAPS),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {"org.virtkit.rootfs.overlay": "supported"},
    }


def _exec_process(rt: Any, cid: str, flags: dict[str, Any], pos: list[str]) -> dict:
    if flags.get("process"):
        try:
            with open(flags["process"]) as f:
                return fastjson.loads(f.read())  # type: ignore[no-any-return]
        except ValueError as exc:
            raise InvalidArgument(f"--process: malformed JSON: {exc}") from None
        except OSError as exc:
            raise InvalidArgument(f"--process: {flags['process']}: {exc.strerror}") from None
    if not pos:
        raise Usage("exec: needs a command (or --process)")
    base = rt._load(cid)[1]["spec"]["process"]
    proc: dict[str, Any] = {"args": pos, "terminal": bool(flags.get("tty")),
                            "env": list(base.get("env") or []) + flags["env"]}
    if flags.get("cwd"):
        proc["cwd"] = flags["cwd"]
    if flags.get("user"):
        u, _, g = flags["user"].partition(":")
        try:
            proc["user"] = {"uid": int(u), "gid": int(g or 0)}
        except ValueError:
            raise Usage(f"--user: want UID[:GID] (got {flags['user']!r})") from None
    return proc


def dispatch(opts: Options, verb: str, flags: dict[str, Any], pos: list[str]) -> int:
    if verb == "spec":
        from virtkit.container.spec import default_spec

        path = os.path.join(flags.get("bundle") or ".", "config.json")
        if os.path.exists(path):
            raise InvalidArgument(f"spec: {path} already exists")
        import json

        with open(path, "w") as f:
            json.dump(default_spec(rootless=bool(flags.get("rootless"))), f, indent=2)
        return 0
    if verb == "features":
        _print_json(_features())
        return 0
    from virtkit.container.runtime import Runtime

    rt = Runtime(opts.root)
    preserve = int(flags.get("preserve_fds") or 0) if str(flags.get("preserve_fds") or "0").isdigit() else -1
    if verb == "create":
        rt.create(_one_id(pos, verb), flags.get("bundle") or ".", pid_file=flags.get("pid_file"),
                  console_socket=flags.get("console_socket"), no_pivot=bool(flags.get("no_pivot")),
                  preserve_fds=preserve)
    elif verb == "start":
        rt.start(_one_id(pos, verb))
    elif verb == "state":
        _print_json(rt.state(_one_id(pos, verb)))
    elif verb == "kill":
        if not pos or len(pos) > 2:
            raise Usage("kill: usage: kill [--all] ID [SIGNAL]")
        rt.kill(pos[0], _signal(pos[1] if len(pos) > 1 else flags.get("signal", "TERM")), all=bool(flags.get("all")))
    elif verb == "delete":
        rt.delete(_one_id(pos, verb), force=bool(flags.get("force")))
    elif verb == "run":
        cid = _one_id(pos, verb)
        kw: dict[str, Any] = {"pid_file": flags.get("pid_file"), "console_socket": flags.get("console_socket"),
                              "no_pivot": bool(flags.get("no_pivot")), "preserve_fds": preserve}
        if flags.get("detach"):
            rt.create(cid, flags.get("bundle") or ".", **kw)
            rt.start(cid)
            return 0
        return rt.run(cid, flags.get("bundle") or ".", **kw)
    elif verb == "exec":
        if not pos:
            raise Usage("exec: needs a container id")
        cid, cmd = pos[0], pos[1:]
        proc = _exec_process(rt, cid, flags, cmd)
        rc = rt.exec(cid, proc, detach=bool(flags.get("detach")), pid_file=flags.get("pid_file"),
                     console_socket=flags.get("console_socket"), preserve_fds=max(preserve, 0))
        return 0 if flags.get("detach") else rc
    elif verb == "list":
        states = rt.list()
        if flags.get("format") == "json":
            _print_json(states)
        elif flags.get("quiet"):
            sys.stdout.write("".join(s["id"] + "\n" for s in states))
        else:
            rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED")]
            rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"]) for s in states]
            w = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                sys.stdout.write("   ".join(c.ljust(w[i]) if i < 4 else c for i, c in enumerate(r)) + "\n")
    elif verb == "ps":
        pids = rt.ps(_one_id(pos, verb))
        if flags.get("format") == "json":
            _print_json(pids)
        else:
            sys.stdout.write("PID\n" + "".join(f"{p}\n" for p in pids))
    elif verb == "pause":
        rt.pause(_one_id(pos, verb))
    elif verb == "resume":
        rt.resume(_one_id(pos, verb))
    return 0


def _fail(opts: Options, msg: str, code: int) -> int:
    sys.stderr.write(f"virtkit-runtime: {msg}\n")
    _log(opts, "error", msg)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = Options()
    try:
        rest = _parse_globals(argv, opts)
        if not rest or rest[0] in ("-h", "--help", "help"):
            sys.stdout.write(USAGE)
            return 0 if rest else 2
        if rest[0] in ("-v", "--version", "version"):
            from virtkit.container.spec import OCI_VERSION

            sys.stdout.write(f"virtkit-runtime version {VERSION}\nspec: {OCI_VERSION}\n")
            return 0
        verb = rest[0]
        if verb not in _VERBS:
            raise Usage(f"unknown command {verb!r}")
        args = rest[1:]
        if verb == "exec":
            # flags stop at the first word after the id: the rest is the command
            flags, pos = _parse_exec(args)
        else:
            flags, pos = _parse_verb(args, verb)
        if flags.get("systemd_cgroup"):
            raise Unsupported("--systemd-cgroup: virtkit-runtime drives cgroupfs only")
        if flags.get("preserve_fds") is not None and not str(flags["preserve_fds"]).isdigit():
            raise Usage(f"--preserve-fds: must be a non-negative integer (got {flags['preserve_fds']!r})")
        return dispatch(opts, verb, flags, pos)
    except Usage as exc:
        return _fail(opts, exc.message + "\n" + USAGE.splitlines()[0], 2)
    except VirtkitError as exc:
        return _fail(opts, exc.message, exc.exit_code if exc.exit_code != 0 else 1)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _fail(opts, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)


def _parse_exec(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    for i, a in enumerate(args):
        if a == "--":
            flags, pos = _parse_verb(args[:i])
            return flags, pos + args[i + 1:]
    # first positional is the id; everything after the second positional begins the command
    idx, seen = 0, 0
    while idx < len(args):
        a = args[idx]
        if a.startswith("-") and len(a) > 1:
            if a.partition("=")[0] in _VALUE and "=" not in a:
                idx += 1
        else:
            seen += 1
            if seen == 2:
                break
        idx += 1
    flags, pos = _parse_verb(args[:idx])
    return flags, pos + args[idx:]


def entry() -> NoReturn:
    code = main()
    # skip interpreter teardown (~8 ms of a ~50 ms cycle): nothing is left to flush but the std streams
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
