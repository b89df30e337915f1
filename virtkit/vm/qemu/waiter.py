"""The waiter of one VM: starts its QEMU as a child, writes QEMU's pid, and records how QEMU ended.

Why a waiter per VM (and not QEMU's -daemonize alone): only QEMU's parent learns how it ended (exit code or
the signal that killed it), and "killed by SIGKILL" must be reported. The waiter is started detached
(`setsid -f`), so killing or restarting virtkitd leaves it and its QEMU running. It imports only the standard
library: ~9 MB RSS beside QEMU's ~210 MB under TCG.

Usage: python -m virtkit.vm.qemu.waiter VM_DIR   (VM_DIR/run.json holds {"argv": [...]})
Writes VM_DIR/qemu.pid when QEMU runs, VM_DIR/exit.json when it ends:
  {"code": N, "reason": "exited" | "killed by SIGx", "finished_at": T}
"""

from __future__ import annotations

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


def main(vm_dir: str) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(os.path.join(vm_dir, "run.json")) as f:
        argv = json.load(f)["argv"]
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
    _write_atomic(os.path.join(vm_dir, "exit.json"),
                  json.dumps({"code": code, "reason": reason, "finished_at": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
