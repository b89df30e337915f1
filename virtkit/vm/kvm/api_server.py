"""The VMM's API socket: a small HTTP/JSON server on a unix socket (state, stats, pause/resume/snapshot/stop)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.vm.kvm.errors import VmmError

if TYPE_CHECKING:
    from virtkit.vm.kvm.machine import Machine

MAX_BODY = 64 * 1024


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    machine: Machine
    on_snapshot_exit: Callable[[str], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        return

    def address_string(self) -> str:
        return "unix"

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        machine = self.server.machine
        if self.path == "/stats":
            self._reply(200, machine.stats())
        elif self.path in ("/", "/vm"):
            stats = machine.stats()
            self._reply(200, {"state": stats["state"], "memory": machine.config.memory,
                              "cpus": machine.config.cpus, "cmdline": machine.cmdline})
        else:
            self._reply(404, {"error": "not_found", "message": f"no resource {self.path}"})

    def do_PUT(self) -> None:  # noqa: N802
        if self.path != "/actions":
            self._reply(404, {"error": "not_found", "message": f"no resource {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ValueError(f"body of {length} bytes (expected 1..{MAX_BODY})")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._reply(400, {"error": "invalid_argument", "message": f"request body: {exc}"})
            return
        action = body.get("action")
        machine = self.server.machine
        try:
            if action == "pause":
                machine.pause()
            elif action == "resume":
                machine.resume()
            elif action == "snapshot":
                directory = body.get("dir")
                if not isinstance(directory, str) or not directory:
                    raise ValueError("snapshot: 'dir' (a directory path) is required")
                machine.save_snapshot(Path(directory))
                if body.get("exit"):
                    self._reply(200, {"result": "saved", "dir": directory})
                    self.server.on_snapshot_exit(directory)
                    return
                if not body.get("keep_paused"):
                    machine.resume()
            elif action == "stop":
                machine.stop("stopped through the API")
            else:
                raise ValueError(f"unknown action {action!r} (pause, resume, snapshot, stop)")
        except ValueError as exc:
            self._reply(400, {"error": "invalid_argument", "message": str(exc)})
            return
        except (VmmError, OSError) as exc:
            self._reply(500, {"error": "vmm_error", "message": str(exc)})
            return
        self._reply(200, {"result": "ok", "state": machine.stats()["state"]})


class ApiServer:
    """Serves one machine on `path` until close(); the socket file is created 0600 and removed on close."""

    def __init__(self, path: str | Path, machine: Machine, on_snapshot_exit: Callable[[str], None]) -> None:
        self.path = str(path)
        if os.path.exists(self.path):
            raise VmmError(f"API socket {self.path} already exists (another virtkit-vmm, or a stale file)")
        old_umask = os.umask(0o177)
        try:
            self._server = _Server(self.path, _Handler)
        except OSError as exc:
            raise VmmError(f"API socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self._server.machine = machine
        self._server.on_snapshot_exit = on_snapshot_exit
        self._thread = threading.Thread(target=self._server.serve_forever, name="vmm-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
