"""The container's side of create and exec: stage 1 (namespaces), stage 2 (PID 1: rootfs, then exec).

Everything stage 2 needs after pivot_root must be imported before it: the host's Python library is not
visible from inside the container. Errors before "ready" travel to the runtime over the sync socket.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py builds enums at import (~3 ms a start)
import _socket  # the C module: socket.py builds enums at import, ~4 ms of every container start
import gc
import os
import struct

from virtkit.container import caps as capsmod
from virtkit.container import fastjson, hooks, rootfs
from virtkit.container import namespaces as ns
from virtkit.container import syscalls as sc
from virtkit.core.errors import SystemFailure, VirtkitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from typing import Any, NoReturn

    from virtkit.container.premount import Premade

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def send(ch: _socket.socket, msg: dict[str, Any]) -> None:
    ch.send(fastjson.dumps(msg).encode())


def recv(ch: _socket.socket) -> dict[str, Any] | None:
    data = ch.recv(1 << 16)
    return fastjson.loads(data) if data else None


def _fail(ch: _socket.socket | None, exc: BaseException) -> NoReturn:
    msg = exc.message if isinstance(exc, VirtkitError) else f"{type(exc).__name__}: {exc}"
    kind = type(exc).__name__ if isinstance(exc, VirtkitError) else "SystemFailure"
    try:
        if ch is None:
            raise OSError
        send(ch, {"type": "error", "message": msg, "kind": kind})
    except OSError:
        try:
            os.write(2, f"virtkit-runtime: {msg}\n".encode())
        except OSError:
            pass
    os._exit(1)


def _expect_ok(ch: _socket.socket) -> None:
    msg = recv(ch)
    if not msg or msg.get("type") != "ok":
        raise SystemFailure("runtime went away during create")


# virtkit.container.console (with termios), imported by preload() when a terminal is asked for: ~0.4 ms of every
# start otherwise
console: Any = None


def preload(spec: dict) -> None:
    """Import what runs after pivot_root/setns now, while the host's library is still reachable (and read what
    does not change: the kernel's last capability)."""
    global console
    capsmod.last_cap()
    if (spec.get("process") or {}).get("terminal") and console is None:
        from virtkit.container import console as console_module

        console = console_module
    if spec.get("linux", {}).get("seccomp"):
        from virtkit.container import seccomp

        # compiled now (or taken from the parent's cache), loaded after pivot_root without libseccomp
        seccomp.compile_bpf(spec["linux"]["seccomp"])
    if (spec.get("hooks") or {}).get("startContainer"):
        import subprocess  # noqa: F401


def stage1(ch: _socket.socket, spec: dict, opts: dict[str, Any]) -> NoReturn:
    """In the runtime's namespaces: join the cgroup, make/join namespaces, fork PID 1, report it."""
    gc.disable()    # a forked copy: a collection would write to (and so copy) every page of the heap
    try:
        _enter(spec, opts)
        flags, joins = opts["ns_flags"], opts["ns_join"]
        user_join = [j for j in joins if j[0] == "user"]
        ns.join(user_join)
        if flags & sc.CLONE_NEWUSER:
            sc.unshare(sc.CLONE_NEWUSER)
            send(ch, {"type": "userns"})
            _expect_ok(ch)
        if flags & sc.CLONE_NEWUSER or user_join:
            _become_ns_root()
        ns.join([j for j in joins if j[0] != "user"])
        sc.unshare(flags & ~sc.CLONE_NEWUSER)
        pid = os.fork()
        if pid == 0:
            stage2(ch, spec, opts)
        send(ch, {"type": "pid", "pid": pid})
    except BaseException as exc:  # noqa: BLE001 - everything must reach the runtime
        _fail(ch, exc)
    os._exit(0)


def _enter(spec: dict, opts: dict[str, Any]) -> None:
    """The container's stdio on 0-2, its cgroup joined (by this process itself, before any cgroup namespace is
    made) and its OOM score, while still on the host's /proc."""
    if opts.get("stdio"):
        for i, fd in enumerate(opts["stdio"]):
            os.dup2(fd, i)
    opts["cgroup"].add_pid(os.getpid())
    set_oom_score_adj(spec["process"])


def stage2_direct(ch: _socket.socket, spec: dict, opts: dict[str, Any]) -> NoReturn:
    """PID 1 forked straight from the runtime, which unshared only the pid namespace (it applies to children):
    here it joins the cgroup and makes or joins the other namespaces, then goes on as stage2 — stage 1's work
    without a process of its own. Only for containers without a user namespace and not joining a pid one."""
    gc.disable()    # a forked copy: a collection would write to (and so copy) every page of the heap
    try:
        _enter(spec, opts)
        ns.join(opts["ns_join"])
        sc.unshare(opts["ns_flags"] & ~sc.CLONE_NEWPID)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the runtime
        _fail(ch, exc)
    stage2(ch, spec, opts)


def _become_ns_root() -> None:
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:
        pass  # no mapping for 0: stay as we are, the container's user switch decides later


def _loopback_up() -> None:
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", sc.ioctl(s.fileno(), SIOCGIFFLAGS, req, label="SIOCGIFFLAGS lo"))[1]
        sc.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP), label="SIOCSIFFLAGS lo")
    finally:
        s.close()


# -- spares: a container's PID 1 made ahead of time (container/spares.py keeps them) ---------------------------
# What a spare makes before it is taken: nothing in these namespaces depends on the container or goes stale.
SPARE_FLAGS = sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
# What it makes once taken: a mount namespace copied earlier would miss host mounts made since (a volume's
# source), and a cgroup namespace is rooted where its maker stands (the container's cgroup, joined at take).
LATE_FLAGS = sc.CLONE_NEWNS | sc.CLONE_NEWCGROUP
_MAX_GO = 1 << 22
SPARE_NAME = "vk-spare"


def name_this_process(name: str) -> None:
    """What ps shows for this process (its comm: 15 bytes at most)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except OSError:     # a name is a courtesy to whoever reads ps
        pass


def spare(ch: _socket.socket, flags: int, cgroup: str | None = None) -> NoReturn:
    """A spare's PID 1, forked by the spare maker straight into a new pid namespace as the supervisor's child
    (spares.py): join the spare's own cgroup if it has one, make its other namespaces, report, then wait to be
    taken ("go": the container's spec, options and fds) and go on as stage2. It exits when its supervisor goes
    away (EOF)."""
    gc.disable()    # a forked copy: a collection would write to (and so copy) every page of the heap
    try:
        keep = ch.fileno()
        # the supervisor's fds (other containers' pipes and logs, its listener) must not live on in a spare
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        # made while the supervisor is idle, but then virtkitd is busy ending the container that ran before:
        # a spare takes only CPU time nobody else wants until it is taken (set back once it is)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        name_this_process(SPARE_NAME)     # what ps shows while it waits; its exec names it again
        early = flags & ~sc.CLONE_NEWPID
        host_cgroupns = -1
        if cgroup is not None:
            from virtkit.container.cgroups import manager_for

            manager_for(cgroup).add_pid(os.getpid())     # single-threaded: "0" into each hierarchy's tasks
            # that cgroup becomes its container's (renamed): its cgroup namespace is made now, rooted there, and
            # left for the host's again if it is not (the fd to go back by)
            host_cgroupns = os.open("/proc/self/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
            early |= sc.CLONE_NEWCGROUP
        sc.unshare(early)
        os.setsid()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        os.umask(0)
    except BaseException as exc:  # noqa: BLE001
        _fail(ch, exc)
    try:
        send(ch, {"type": "ready"})
    except OSError:     # dropped before it was ready
        os._exit(0)
    try:
        if flags & sc.CLONE_NEWNET:
            _loopback_up()
        rootfs.learn_cgroup_hierarchies()     # for its /sys/fs/cgroup, read now rather than once taken
        capsmod.last_cap()
        premade = _premount(early | sc.CLONE_NEWPID)
    except BaseException as exc:  # noqa: BLE001
        _fail(ch, exc)
    try:
        data, anc, _flags, _addr = ch.recvmsg(_MAX_GO, _socket.CMSG_SPACE(5 * 4))
    except OSError:     # its supervisor went away (or dropped it) without a word: nothing to report, nobody to tell
        data = b""
    if not data:
        os._exit(0)
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        fds: list[int] = []
        for level, kind, cdata in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(cdata) // 4}i", cdata[:len(cdata) - len(cdata) % 4])
        msg = fastjson.loads(data)
        spec = msg["spec"]
        for i in range(3):
            os.dup2(fds[i], i)
            os.close(fds[i])
        from virtkit.container.cgroups import manager_for

        # its cgroup namespace, made early, stays where the cgroup it waited in becomes the container's
        own_cgroupns = host_cgroupns >= 0 and not msg["join_cgroup"] and msg["flags"] & sc.CLONE_NEWCGROUP
        if host_cgroupns >= 0:
            if not own_cgroupns:
                sc.setns(host_cgroupns, sc.CLONE_NEWCGROUP, label="the host's cgroup namespace")
                if premade is not None:
                    premade.drop("cgroup")
            os.close(host_cgroupns)
        # itself (v1: its one thread, without the threadgroup lock a move by pid takes), before its cgroup namespace;
        # not when it waited in a cgroup of its own, which its taker renamed to the container's
        if msg["join_cgroup"]:
            manager_for(msg["cgroup"]).add_pid(os.getpid())
        set_oom_score_adj(spec["process"])
        fifo_fd = fds[3] if msg["fifo"] else -1
        if msg["join_net"]:
            netns = fds[4 if msg["fifo"] else 3]
            sc.setns(netns, sc.CLONE_NEWNET, label="network namespace")
            os.close(netns)
            if premade is not None:
                premade.drop("sysfs")       # its own network namespace's, not the one joined
        late = msg["flags"] & LATE_FLAGS & ~(sc.CLONE_NEWCGROUP if own_cgroupns else 0)
        if late:
            sc.unshare(late)
        if msg.get("seccomp") is not None:
            from virtkit.container import seccomp

            seccomp.remember(spec["linux"]["seccomp"], bytes.fromhex(msg["seccomp"]), msg["seccomp_flags"])
        opts = {"ns_flags": msg["flags"], "ns_join": [("network", -1)] if msg["join_net"] else [],
                "bundle": msg["bundle"], "console_socket": msg["console_socket"], "no_pivot": msg["no_pivot"],
                "preserve_fds": 0, "fifo_fd": fifo_fd, "hook_state": msg["hook_state"], "premade": premade,
                "cgroup_later": msg["cgroup_later"]}
    except BaseException as exc:  # noqa: BLE001
        _fail(ch, exc)
    stage2(ch, spec, opts, made=True)


def _premount(flags: int) -> Premade | None:
    """The usual mounts made ahead (container/premount.py), or None where this kernel cannot (no new mount API):
    the container's are then made when it is taken, as a forked one's are."""
    from virtkit.container.premount import Premade

    try:
        return Premade.make(flags)
    except (SystemFailure, OSError):
        return None


def stage2(ch: _socket.socket, spec: dict, opts: dict[str, Any], made: bool = False) -> NoReturn:
    """PID 1 of the container: build its world, say ready, wait for start, then exec the process.
    `made`: a spare's, whose session, dumpable flag, umask and loopback are set already."""
    proc = spec["process"]
    linux = spec.get("linux", {})
    flags = opts["ns_flags"]
    joined = {t for t, _ in opts["ns_join"]}
    try:
        if not made:
            os.setsid()
            sc.prctl(sc.PR_SET_DUMPABLE, 0)
            os.umask(0)
        preload(spec)
        if flags & sc.CLONE_NEWNET and not made:
            _loopback_up()
        ctx = {"userns": bool(flags & sc.CLONE_NEWUSER) or "user" in joined,
               "netns": bool(flags & sc.CLONE_NEWNET) or "network" in joined,
               "cgroupns": bool(flags & sc.CLONE_NEWCGROUP)}
        root = spec["root"]["path"]
        # the host's /proc/self/fd, kept for reopening the exec fifo's O_PATH fd after pivot_root/chroot:
        # the container may have no /proc of its own (no mount namespace, or no proc mount); no fifo (fd -1):
        # create and start are one, the process follows at once
        fifo_fd = opts["fifo_fd"]
        fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if fifo_fd >= 0 else -1
        premade = opts.get("premade")
        if flags & sc.CLONE_NEWNS:
            rootfs.setup_root(spec, root)
            rootfs.mount_all(spec, root, opts["bundle"], ctx, premade)
        if premade is not None:
            premade.close()         # what the container did not take
        hk = spec.get("hooks") or {}
        if hk.get("prestart") or hk.get("createRuntime"):
            send(ch, {"type": "hooks"})
            _expect_ok(ch)
        hooks.run_hooks(hk.get("createContainer"), opts["hook_state"] | {"pid": os.getpid()}, "createContainer")
        csock = console.connect(opts["console_socket"]) if proc.get("terminal") and opts["console_socket"] else None
        if proc.get("terminal") and csock is None:
            raise SystemFailure("process.terminal is set but no --console-socket was given")
        if flags & sc.CLONE_NEWNS:
            rootfs.pivot(root, opts["no_pivot"])
        else:
            os.chroot(root)
            os.chdir("/")
        if spec.get("hostname"):
            sc.sethostname(spec["hostname"])
        if spec.get("domainname"):
            sc.setdomainname(spec["domainname"])
        if flags & sc.CLONE_NEWNS:
            rootfs.finalize(spec)
        set_rlimits(proc)
        if csock is not None:
            _take_terminal(csock, proc)
        env = _env(proc)
        _require_executable(proc, env)
        if opts.get("cgroup_later"):
            _expect_ok(ch)      # its cgroup is the container's now, with its limits: the process may run
        send(ch, {"type": "ready"})
        ch.close()
    except BaseException as exc:  # noqa: BLE001
        _fail(ch, exc)
    try:
        if fifo_fd >= 0:
            # blocks until `start` opens the fifo for reading (runc's exec.fifo)
            fd = os.open(str(fifo_fd), os.O_WRONLY | os.O_CLOEXEC, dir_fd=fd_dir)
            os.write(fd, b"0")
            os.close(fd)
            os.close(fifo_fd)
            os.close(fd_dir)
        hooks.run_hooks(hk.get("startContainer"), opts["hook_state"] | {"pid": os.getpid(), "status": "running"},
                        "startContainer")
        finish(proc, linux, opts["preserve_fds"], env)
    except BaseException as exc:  # noqa: BLE001
        _fail(None, exc)


def _env(proc: dict) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in proc.get("env") or [])
    env.setdefault("HOME", "/root" if proc.get("user", {}).get("uid", 0) == 0 else "/")
    return env


def lookup(cmd: str, env: dict[str, str]) -> str | None:
    """The file execvpe would run, looked up inside the container's filesystem."""
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) else None
    for d in env.get("PATH", os.defpath).split(":"):
        p = os.path.join(d or ".", cmd)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def set_oom_score_adj(proc: dict) -> None:
    """process.oomScoreAdj, set while still on the host's /proc; children inherit it."""
    adj = proc.get("oomScoreAdj")
    if adj is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(adj))
    except OSError as exc:
        raise SystemFailure(f"process.oomScoreAdj {adj}: {exc.strerror}") from exc


# linux/resource.h: the resource module is an extension whose loading costs ~0.3 ms of every start
RLIMITS = {"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
           "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
           "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14,
           "RLIMIT_RTTIME": 15}


def set_rlimits(proc: dict) -> None:
    for r in proc.get("rlimits") or []:
        try:
            sc.setrlimit(RLIMITS[r["type"]], r["soft"], r["hard"])
        except (OSError, OverflowError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise SystemFailure(f"process.rlimits {r['type']}: {why}") from exc


def _take_terminal(csock: _socket.socket, proc: dict) -> None:
    """A pty from the container's devpts: the master goes to the console socket, the slave becomes our tty."""
    master, slave, name = console.open_pty(proc.get("consoleSize"))
    console.send_master(csock, master, name)
    os.close(master)
    csock.close()
    console.become_tty(slave)


def _require_executable(proc: dict, env: dict[str, str]) -> None:
    if lookup(proc["args"][0], env) is None:
        raise SystemFailure(f"exec: {proc['args'][0]!r}: executable file not found in $PATH")


def drop_privileges(proc: dict, linux: dict) -> bool:
    """umask, cwd, then the user and capabilities of `proc` (and its seccomp filter when that must go in while
    CAP_SYS_ADMIN is still held). Returns whether the filter is in already."""
    user = proc.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    os.umask(user.get("umask", 0o022))
    cwd = proc.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise SystemFailure(f"process.cwd {cwd!r}: {exc.strerror}") from exc
    profile = linux.get("seccomp")
    # Without no_new_privs the kernel only lets a process holding CAP_SYS_ADMIN install a filter, so it goes in
    # now, before privileges drop (runc's order); every call made after this is on the default allowlist.
    early_seccomp = bool(profile) and not proc.get("noNewPrivileges")
    if early_seccomp:
        from virtkit.container import seccomp

        seccomp.load(profile)
    caps = proc.get("capabilities") or {}
    capsmod.drop_bounding(caps)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    groups = list(user.get("additionalGids") or [])
    try:
        os.setgroups(groups)
    except OSError as exc:
        if groups:
            raise SystemFailure(f"process.user.additionalGids: setgroups: {exc.strerror}") from exc
    sc.setresgid(gid, gid, gid)
    sc.setresuid(uid, uid, uid)
    capsmod.apply(caps)
    if proc.get("noNewPrivileges"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    return early_seccomp


def finish(proc: dict, linux: dict, preserve_fds: int, env: dict[str, str],
           seccomp_loaded: bool | None = None) -> NoReturn:
    """Process attributes in the order the kernel needs them, then execve; never returns.

    `seccomp_loaded` is None when privileges are still to be dropped here, else what drop_privileges returned.
    """
    if seccomp_loaded is None:
        # fds go before any filter: a profile that refuses close_range would turn the closing below into a
        # million filtered close() calls
        _close_fds(preserve_fds)
        seccomp_loaded = drop_privileges(proc, linux)
    else:
        _close_fds(preserve_fds)
    for sig in range(1, signal.NSIG):
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    profile = linux.get("seccomp")
    if profile and not seccomp_loaded:
        from virtkit.container import seccomp

        seccomp.load(profile)
    try:
        # execve of the path found in the container's PATH: os.execvpe would import `warnings`, which a process
        # past pivot_root cannot load when Python runs without site (the -IS launcher)
        os.execve(lookup(proc["args"][0], env) or proc["args"][0], proc["args"], env)
    except OSError as exc:
        raise SystemFailure(f"exec {proc['args'][0]!r}: {exc.strerror}") from exc


def _close_fds(preserve_fds: int) -> None:
    """CVE-2024-21626: no host fd may reach the container process; LISTEN_FDS-style fds 3.. are kept."""
    for fd in range(3, 3 + preserve_fds):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    os.closerange(3 + preserve_fds, 1 << 20)


def exec_child(ch: _socket.socket, pid: int, proc: dict, linux: dict, opts: dict[str, Any]) -> NoReturn:
    """Join the container (cgroup, namespaces), fork into its pid namespace, run `proc` there."""
    gc.disable()    # a forked copy: a collection would write to (and so copy) every page of the heap
    try:
        if opts.get("stdio"):
            for i, fd in enumerate(opts["stdio"]):
                os.dup2(fd, i)
        if opts.get("cgroup") is not None:
            opts["cgroup"].add_pid(os.getpid())
        set_oom_score_adj(proc)
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        preload({"linux": linux, "process": proc})
        csock = console.connect(opts["console_socket"]) if proc.get("terminal") else None
        if proc.get("terminal") and csock is None:
            raise SystemFailure("a terminal needs --console-socket")
        fds = []
        for typ in ns.PROC_NAMES:
            if ns.host_differs(pid, typ):
                fds.append((typ, os.open(f"/proc/{pid}/ns/{ns.PROC_NAMES[typ]}", os.O_RDONLY | os.O_CLOEXEC)))
        root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        ns.join(fds)
        if not any(t == "mount" for t, _ in fds):
            os.fchdir(root_fd)
            os.chroot(".")
        os.close(root_fd)
        set_rlimits(proc)
        env = _env(proc)
        # Privileges drop here, before the fork into the container's pid namespace: from the moment it exists,
        # the child is visible to the container (and traceable where it was granted CAP_SYS_PTRACE), so it must
        # hold nothing the container's own processes do not.
        seccomp_loaded = drop_privileges(proc, linux)
        child = os.fork()
        if child == 0:
            if proc.get("terminal"):
                os.setsid()
            if csock is not None:
                _take_terminal(csock, proc)
            _require_executable(proc, env)
            send(ch, {"type": "ready"})
            ch.close()
            finish(proc, linux, opts["preserve_fds"], env, seccomp_loaded)
        send(ch, {"type": "pid", "pid": child})
        if csock is not None:
            csock.close()
    except BaseException as exc:  # noqa: BLE001
        _fail(ch, exc)
    ch.close()
    if opts["detach"]:
        os._exit(0)
    for fd in (0, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))

