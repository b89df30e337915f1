"""The waiter of one VM: starts its QEMU as a child, writes QEMU's pid, and records how QEMU ended.

Why a waiter per VM (and not QEMU's -daemonize alone): only QEMU's parent learns how it ended (exit code or
the signal that killed it), and "killed by SIGKILL" must be reported. The waiter is started detached
(`setsid -f`), so killing or restarting virtkitd leaves it and its QEMU running. It imports only the standard
library: ~9 MB RSS beside QEMU's ~210 MB under TCG.

Usage: python -m virtkit.vm.qemu.waiter VM_DIR   (VM_DIR/run.json holds {"argv": [...]})
Writes VM_DIR/qemu.pid when QEMU runs, VM_DIR/exit.json when it ends:
  {"code": N, "reason": "exited" | "killed by SIGx", "finished_at": T}
With run.json's "cgroup": {"join": [FILE...], "remove": [DIR...]} (see virtkit.vm.cgroup), the child writes "0"
into each FILE before it execs, so every thread of the VM's process starts inside the VM's cgroup; once the
process is reaped the waiter removes each DIR (before exit.json: a stopped VM has no cgroup left).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _describe(status: int) -> tuple[int, str]:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), "exited"
    sig = os.WTERMSIG(status)
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return 128 + sig, f"killed by {name}"


def _join_cgroups(files: list[str]) -> None:
    """In the child before exec: "0" (this process) into each cgroup file, so every thread starts inside."""
    for path in files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _remove_cgroups(dirs: list[str], timeout: float = 5.0) -> None:
    """rmdir each of the VM's cgroup directories once its process is reaped; EBUSY (the kernel has not let go
    of the exited process yet) is retried until `timeout`, a directory already gone is fine."""
    deadline = time.monotonic() + timeout
    for directory in dirs:
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)


def main(vm_dir: str) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(os.path.join(vm_dir, "run.json")) as f:
        run = json.load(f)
    argv = run["argv"]
    cgroup = run.get("cgroup") or {}
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(os.path.join(vm_dir, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pid = os.fork()
    except OSError as exc:
        _write_atomic(os.path.join(vm_dir, "exit.json"),
                      json.dumps({"code": 127, "reason": f"cannot fork: {exc}", "finished_at": time.time()}))
        return 1
    if pid == 0:
        try:
            os.dup2(devnull, 0)
            os.dup2(err, 1)
            os.dup2(err, 2)
            _join_cgroups(cgroup.get("join") or [])
        except OSError as exc:
            os.write(2, f"cannot join the VM's cgroup: {exc}\n".encode())
            os._exit(127)
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]}: {exc}\n".encode())
        os._exit(127)
    os.close(devnull)
    os.close(err)
    _write_atomic(os.path.join(vm_dir, "qemu.pid"), str(pid))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code, reason = _describe(status)
    _remove_cgroups(cgroup.get("remove") or [])
    _write_atomic(os.path.join(vm_dir, "exit.json"),
                  json.dumps({"code": code, "reason": reason, "finished_at": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
