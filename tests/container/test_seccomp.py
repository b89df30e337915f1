"""Seccomp: profile validation, and the default and custom profiles loaded for real in forked children."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from tests.container.forked import in_child
from virtkit.container import seccomp
from virtkit.core.errors import InvalidArgument

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading without no_new_privs needs CAP_SYS_ADMIN")




@pytest.mark.parametrize("profile, needle", [
    ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "SCMP_ARCH_Z80"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["not_a_syscall"], "action": "SCMP_ACT_ERRNO"}]},
     "not_a_syscall"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_MAYBE"}]},
     "SCMP_ACT_MAYBE"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]},
     "SCMP_CMP_ABOUT"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}, "SECCOMP_FILTER_FLAG_FAST"),
])
def test_validate_names_the_problem(profile, needle):
    with pytest.raises(InvalidArgument, match=needle):
        seccomp.validate(profile)


def test_default_profile_is_valid_and_consistent():
    profile = seccomp.default_profile()
    seccomp.validate(profile)
    allowed = {n for entry in profile["syscalls"] if entry["action"] == "SCMP_ACT_ALLOW" for n in entry["names"]}
    assert not allowed & seccomp.BLOCKED_BY_DEFAULT
    assert {"mount", "kexec_load", "init_module", "unshare", "setns", "bpf", "reboot"} <= seccomp.BLOCKED_BY_DEFAULT
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"


def test_none_is_a_noop():
    seccomp.validate(None)
    seccomp.load(None)


@pytest.mark.root
@needs_root
def test_default_profile_blocks_and_allows():
    def child():
        seccomp.load(seccomp.default_profile())
        libc = ctypes.CDLL(None, use_errno=True)

        def err(res):
            return ctypes.get_errno() if res == -1 else 0

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
        out = {
            "mount": err(libc.mount(b"none", b"/nonexistent", b"tmpfs", 0, None)),
            "clock_settime": err(libc.clock_settime(0, ctypes.byref(Timespec(0, 0)))),
            "unshare_user": err(libc.unshare(0x10000000)),
            "kexec_load": err(libc.syscall(246, 0, 0, 0, 0)),
            "init_module": err(libc.syscall(175, 0, 0, b"")),
            "clone_newuser": err(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)),
        }
        # ordinary work still goes through
        fd = os.open("/proc/self/status", os.O_RDONLY)
        out["read"] = len(os.read(fd, 100)) > 0
        os.close(fd)
        out["getpid"] = os.getpid() > 0
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        out["fork_exec"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return out

    got = in_child(child)
    for name in ("mount", "clock_settime", "unshare_user", "kexec_load", "init_module", "clone_newuser"):
        assert got[name] == errno.EPERM, (name, got)
    assert got["read"] and got["getpid"] and got["fork_exec"] == 0


@pytest.mark.root
@needs_root
def test_custom_profile_errno_ret():
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]}

    def child():
        seccomp.load(profile)
        try:
            os.getcwd()
        except OSError as exc:
            return exc.errno
        return 0

    assert in_child(child) == errno.ENOSYS


@pytest.mark.root
@needs_root
def test_arg_conditions_on_one_syscall():
    # personality(0xFFFFFFFF) is a query; anything else is refused unless listed
    def child():
        seccomp.load(seccomp.default_profile())
        libc = ctypes.CDLL(None, use_errno=True)
        query = libc.personality(ctypes.c_ulong(0xFFFFFFFF))
        bad = libc.personality(ctypes.c_ulong(0x0040000))  # ADDR_NO_RANDOMIZE
        return [query >= 0, bad, ctypes.get_errno()]

    assert in_child(child) == [True, -1, errno.EPERM]


BUSYBOX = "/usr/bin/busybox"


@pytest.mark.root
@needs_root
@pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox not installed")
def _busybox_sh_under_default_profile(script: str) -> tuple[int, bytes]:
    """busybox sh -c SCRIPT in a forked child that loaded the default profile; its exit code and stdout."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 1)
            seccomp.load(seccomp.default_profile())
            os.execv(BUSYBOX, ["busybox", "sh", "-c", script])
        finally:
            os._exit(127)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.parametrize("script", [
    "ls / >/dev/null; echo ok",
    "id >/dev/null && ps >/dev/null && cat /proc/self/status >/dev/null && sleep 0.01 && echo ok",
    "top -b -n 1 >/dev/null && echo ok",
])
def test_busybox_runs_under_default_profile(script):
    code, out = _busybox_sh_under_default_profile(script)
    assert code == 0
    assert out.strip().endswith(b"ok")


@pytest.mark.root
@needs_root
@pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox not installed")
def test_busybox_httpd_and_wget_under_default_profile(tmp_path):
    import random
    (tmp_path / "index.html").write_text("virtkit-page\n")
    port = random.randint(20000, 60000)
    script = (f"busybox httpd -f -p 127.0.0.1:{port} -h {tmp_path} & p=$!; sleep 0.3; "
              f"busybox wget -q -O - http://127.0.0.1:{port}/; rc=$?; kill $p; wait $p; exit $rc")
    code, out = _busybox_sh_under_default_profile(script)
    assert code == 0
    assert b"virtkit-page" in out
