"""Seccomp for the container process: OCI linux.seccomp validation, the default profile, loading.

Filters are built with libseccomp through the `pyseccomp` ctypes binding, imported lazily so
that code paths without seccomp do not pay for it.
"""

from __future__ import annotations

import errno
import os
import types

from virtkit.core.errors import InvalidArgument, SystemFailure, Unsupported

_F = "linux.seccomp"

ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
OPS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
       "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
ARCHES = {"SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
          "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64", "SCMP_ARCH_MIPS": "MIPS",
          "SCMP_ARCH_MIPS64": "MIPS64", "SCMP_ARCH_MIPS64N32": "MIPS64N32", "SCMP_ARCH_MIPSEL": "MIPSEL",
          "SCMP_ARCH_MIPSEL64": "MIPSEL64", "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32",
          "SCMP_ARCH_PPC": "PPC", "SCMP_ARCH_PPC64": "PPC64", "SCMP_ARCH_PPC64LE": "PPC64LE",
          "SCMP_ARCH_S390": "S390", "SCMP_ARCH_S390X": "S390X", "SCMP_ARCH_RISCV64": "RISCV64"}
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": "CTL_TSYNC", "SECCOMP_FILTER_FLAG_LOG": "CTL_LOG",
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW": "CTL_SSB"}

_seccomp: types.ModuleType | None = None


def _lib() -> types.ModuleType:
    """Import pyseccomp without ctypes.util.

    pyseccomp only uses ctypes.util.find_library at import, and importing ctypes.util pulls in
    subprocess/shutil (~10 ms, on every container start). A stand-in that names the sonames
    serves the import; the real module is used if it was already loaded or the sonames fail.
    """
    global _seccomp
    if _seccomp is None:
        import ctypes
        import sys

        stub = None
        if "ctypes.util" not in sys.modules:
            try:
                ctypes.CDLL("libseccomp.so.2")
                known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
                stub = types.ModuleType("ctypes.util")
                stub.find_library = known.get  # type: ignore[attr-defined]
                sys.modules["ctypes.util"] = stub
                ctypes.util = stub  # type: ignore[attr-defined]
            except OSError:
                stub = None
        try:
            import pyseccomp
        except (OSError, RuntimeError) as exc:
            raise Unsupported(f"seccomp: libseccomp is not usable here: {exc}") from exc
        finally:
            if stub is not None:
                del sys.modules["ctypes.util"]
                del ctypes.util  # type: ignore[attr-defined]
        _seccomp = pyseccomp
    return _seccomp


_numbers: dict[str, int] = {}


def _resolve(name: str) -> int:
    """The native syscall number of `name` (-1: unknown), remembered: a profile names ~400 on every create."""
    number = _numbers.get(name)
    if number is None:
        sc = _lib()
        number = _numbers[name] = sc.resolve_syscall(sc.Arch.NATIVE, name)
    return number


def validate(profile: dict | None) -> None:
    if profile is None:
        return
    if not isinstance(profile, dict):
        raise InvalidArgument(f"{_F}: must be an object")
    default = profile.get("defaultAction")
    if default not in ACTIONS:
        raise InvalidArgument(f"{_F}.defaultAction: unknown action {default!r}")
    for i, arch in enumerate(profile.get("architectures") or []):
        if arch not in ARCHES:
            raise InvalidArgument(f"{_F}.architectures[{i}]: unknown architecture {arch!r}")
    for i, flag in enumerate(profile.get("flags") or []):
        if flag not in FLAGS:
            raise InvalidArgument(f"{_F}.flags[{i}]: unknown or unsupported flag {flag!r}")
    for key in ("defaultErrnoRet",):
        value = profile.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 4096):
            raise InvalidArgument(f"{_F}.{key}: must be an errno number 0..4095 (got {value!r})")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidArgument(f"{_F}.syscalls: must be a list")
    for i, entry in enumerate(syscalls):
        _validate_entry(entry, f"{_F}.syscalls[{i}]")


def _validate_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{where}: must be an object")
    names = entry.get("names")
    if not isinstance(names, list) or not names:
        raise InvalidArgument(f"{where}.names: must be a non-empty list of syscall names")
    for name in names:
        if not isinstance(name, str) or _resolve(name) == -1:
            raise InvalidArgument(f"{where}.names: unknown syscall {name!r}")
    if entry.get("action") not in ACTIONS:
        raise InvalidArgument(f"{where}.action: unknown action {entry.get('action')!r}")
    ret = entry.get("errnoRet")
    if ret is not None and (isinstance(ret, bool) or not isinstance(ret, int) or not 0 <= ret < 4096):
        raise InvalidArgument(f"{where}.errnoRet: must be an errno number 0..4095 (got {ret!r})")
    args = entry.get("args") or []
    if not isinstance(args, list) or len(args) > 6:
        raise InvalidArgument(f"{where}.args: must be a list of at most 6 conditions")
    for j, arg in enumerate(args):
        if not isinstance(arg, dict):
            raise InvalidArgument(f"{where}.args[{j}]: must be an object")
        if arg.get("op") not in OPS:
            raise InvalidArgument(f"{where}.args[{j}].op: unknown operator {arg.get('op')!r}")
        index = arg.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 5:
            raise InvalidArgument(f"{where}.args[{j}].index: must be 0..5 (got {index!r})")
        for key in ("value", "valueTwo"):
            value = arg.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << 64):
                raise InvalidArgument(f"{where}.args[{j}].{key}: must be an unsigned 64-bit integer")


def _action(sc: types.ModuleType, name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return sc.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return sc.KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return sc.KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return sc.TRAP
    if name == "SCMP_ACT_TRACE":
        return sc.TRACE(errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_LOG":
        return sc.LOG
    raise InvalidArgument(f"{_F}: unsupported action {name!r}")


def build(profile: dict) -> object:
    """A pyseccomp SyscallFilter for a validated profile (not loaded)."""
    sc = _lib()
    default = _action(sc, profile["defaultAction"], profile.get("defaultErrnoRet"))
    filt = sc.SyscallFilter(default)
    # OCI keeps no_new_privs separate (process.noNewPrivileges); the caller sets it or keeps
    # CAP_SYS_ADMIN until load, as runc does.
    filt.set_attr(sc.Attr.CTL_NNP, 0)
    # the syscall numbers as a binary tree, not a list: loading the filter (the kernel runs it for each number to
    # learn which are always allowed) took 86 us against 225 here, and a call's check is no slower
    try:
        filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    except (OSError, AttributeError):   # libseccomp before 2.5: the list
        pass
    for flag in profile.get("flags") or []:
        filt.set_attr(getattr(sc.Attr, FLAGS[flag]), 1)
    native = sc.system_arch()
    for arch in profile.get("architectures") or []:
        number = getattr(sc.Arch, ARCHES[arch])
        if number != native:
            try:
                filt.add_arch(number)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
    for entry in profile.get("syscalls") or []:
        action = _action(sc, entry["action"], entry.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses rules that repeat the default (EACCES); they change nothing
        conds = [sc.Arg(a["index"], getattr(sc, OPS[a["op"]]), a.get("value", 0), a.get("valueTwo", 0))
                 for a in entry.get("args") or []]
        indexes = [a["index"] for a in entry.get("args") or []]
        # Conditions on distinct arguments AND together; several on one argument are alternatives.
        groups = [conds] if len(set(indexes)) == len(indexes) else [[c] for c in conds]
        for name in entry["names"]:
            number = _resolve(name)
            for group in groups:
                try:
                    filt.add_rule(action, number, *group)
                except OSError as exc:
                    # A name this arch lacks (a 32-bit-only call) is a no-op, as in runc.
                    if exc.errno in (errno.EDOM, errno.EINVAL) and number < 0:
                        continue
                    raise SystemFailure(f"seccomp: adding a rule for {name} failed: {exc.strerror}") from exc
    return filt


# Compiled programs by profile digest. A process that compiles before forking (the supervisor, the runtime's
# parent side) hands its children a ready program: libseccomp then never runs on the container's start path.
_compiled: dict[str, tuple[bytes, int]] = {}
# The last profile object looked up and its program: one start asks for the same (unchanged) dict up to three
# times (the runtime before forking, stage 2, the load), and its digest costs ~0.4 ms each time.
_last: tuple[dict | None, tuple[bytes, int] | None] = (None, None)

_FLAG_BITS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}


def remember(profile: dict, prog: bytes, flags: int) -> None:
    """Take `prog` as the program of this profile object (compiled by the process that sent both)."""
    global _last
    _last = (profile, (prog, flags))


# changes with how build() compiles, so that a program cached by an earlier build is not taken for its own
_BUILD = "tree-1"


def _digest(profile: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256((_BUILD + json.dumps(profile, sort_keys=True)).encode()).hexdigest()


def compile_bpf(profile: dict, cache_dir: str | None = None) -> tuple[bytes, int]:
    """The classic-BPF program and seccomp(2) flags for a profile: from memory, from `cache_dir`, or built.

    Built programs are written to `cache_dir` (when given) so that the next process need not build them.
    """
    global _last
    if _last[0] is profile and _last[1] is not None:
        return _last[1]
    key = _digest(profile)
    hit = _compiled.get(key)
    if hit is not None:
        _last = (profile, hit)
        return hit
    flags = 0
    for flag in profile.get("flags") or []:
        flags |= _FLAG_BITS.get(flag, 0)
    path = os.path.join(cache_dir, key + ".bpf") if cache_dir else None
    prog = b""
    if path:
        try:
            with open(path, "rb") as f:
                prog = f.read()
        except OSError:
            prog = b""
    if not prog or len(prog) % 8:
        validate(profile)
        filt = build(profile)
        import tempfile

        with tempfile.TemporaryFile() as tmp:
            filt.export_bpf(tmp)  # type: ignore[attr-defined]
            tmp.seek(0)
            prog = tmp.read()
        if path:
            try:
                os.makedirs(cache_dir, mode=0o700, exist_ok=True)  # type: ignore[arg-type]
                tmp_path = f"{path}.{os.getpid()}.tmp"
                with open(tmp_path, "wb") as f:
                    f.write(prog)
                os.rename(tmp_path, path)
            except OSError:
                pass  # a cache we cannot write only costs the next start its build
    _compiled[key] = (prog, flags)
    _last = (profile, (prog, flags))
    return prog, flags


def load_bpf(prog: bytes, flags: int = 0) -> None:
    """Install a compiled program with seccomp(2) (SECCOMP_SET_MODE_FILTER)."""
    from virtkit.container import syscalls as sc

    try:
        sc.seccomp_filter(prog, flags)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EACCES:
            hint = " (set no_new_privs first, or load while CAP_SYS_ADMIN is still held)"
        raise SystemFailure(f"seccomp: loading the filter failed: {exc.strerror}{hint}") from None


def load(profile: dict | None, cache_dir: str | None = None) -> None:
    """Install the profile's filter in this process (and its future children); None does nothing."""
    if profile is None:
        return
    prog, flags = compile_bpf(profile, cache_dir)
    load_bpf(prog, flags)


# --- the default profile ---------------------------------------------------------------------
# An allowlist in the spirit of Docker's default: what ordinary programs call. Names a kernel or
# arch lacks are skipped at build time. Anything not listed fails with EPERM.
# A word list reads better than 350 quoted names.
_ALLOWED = """
accept accept4 access alarm arch_prctl bind brk cachestat capget capset chdir chmod chown chown32
chroot clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd
eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat get_mempolicy get_robust_list
get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid
getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname
getsockopt gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64
io_setup io_submit io_uring_enter io_uring_register io_uring_setup ioctl ioprio_get ioprio_set ipc
kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mmap2 modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock
munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
pidfd_getfd pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64
ptrace pwrite64 pwritev pwritev2 read readahead readdir readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn
rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send
sendfile sendfile64 sendmmsg sendmsg sendto set_robust_list set_thread_area set_tid_address
setdomainname setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
sethostname setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32 setxattr shmat shmctl
shmdt shmget shutdown sigaction sigaltstack signal signalfd signalfd4 sigpending sigprocmask
sigreturn sigsuspend socketcall socketpair splice stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork
vmsplice wait4 waitid waitpid write writev
""".split()  # noqa: SIM905

# Named here so docs and tests can rely on them; the allowlist simply leaves them out.
BLOCKED_BY_DEFAULT: frozenset[str] = frozenset("""
acct add_key adjtimex bpf clock_adjtime clock_settime create_module delete_module finit_module
fanotify_init fsconfig fsmount fsopen fspick get_kernel_syms init_module iopl ioperm kcmp
kexec_file_load kexec_load keyctl lookup_dcookie mbind migrate_pages mount mount_setattr
move_mount move_pages nfsservctl open_by_handle_at open_tree perf_event_open pivot_root
process_vm_readv process_vm_writev query_module quotactl quotactl_fd reboot request_key
set_mempolicy set_mempolicy_home_node setns settimeofday stime swapoff swapon syslog umount umount2
unshare uselib userfaultfd vhangup vm86 vm86old _sysctl sysfs
""".split())  # noqa: SIM905

# Namespace-creating clone flags (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
_CLONE_NS_FLAGS = 0x7E020000
_AF_VSOCK = 40
# personality(2) values that only pick an ABI flavour: PER_LINUX, PER_LINUX32, UNAME26 and the query.
_SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_NATIVE_ARCHES = {"x86_64": ["SCMP_ARCH_X86_64"], "aarch64": ["SCMP_ARCH_AARCH64"]}


def default_profile() -> dict:
    """virtkit's default OCI seccomp profile (a fresh dict each call; callers may extend it)."""
    def rule(names: list[str], action: str = "SCMP_ACT_ALLOW", **extra: object) -> dict:
        return {"names": names, "action": action, **extra}

    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        # Native only: every extra arch roughly doubles build+load time (~2 ms -> ~8 ms for three),
        # and a syscall from another ABI (int 0x80) then meets libseccomp's bad-arch kill.
        "architectures": _NATIVE_ARCHES.get(os.uname().machine, []),
        "syscalls": [
            rule(list(_ALLOWED)),
            rule(["clone"], args=[{"index": 0, "value": _CLONE_NS_FLAGS, "valueTwo": 0,
                                   "op": "SCMP_CMP_MASKED_EQ"}]),
            # glibc falls back to clone(2) on ENOSYS, where the flags can be checked.
            rule(["clone3"], "SCMP_ACT_ERRNO", errnoRet=errno.ENOSYS),
            rule(["socket"], args=[{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}]),
            *[rule(["personality"], args=[{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}])
              for v in _SAFE_PERSONALITIES],
        ],
    }


__all__ = ["BLOCKED_BY_DEFAULT", "build", "default_profile", "load", "validate"]
