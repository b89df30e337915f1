"""Running a test's privileged code in a forked child, so capability and seccomp changes never reach pytest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def in_child(fn: Callable[[], Any]) -> Any:
    """Run fn() in a forked child and return what it returned (JSON through a pipe); its error fails the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - the child must never return into pytest
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result.get("error")
    return result["ok"]
