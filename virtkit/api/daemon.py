"""virtkitd: serves the API on $VIRTKIT_HOME/virtkitd.sock (mode 0600), one daemon per home."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn


def _reconcile_loop(ctx: object, stop: threading.Event) -> None:
    """Record exits of instances nobody is asking about, so `list` and --rm stay current: every 0.5 s those
    whose driver says an exit may be recorded (a stat each), every 10 s all of them (a dead supervisor, a pause
    made by hand). Looking at every instance each round cost an idle virtkitd ~1% of a CPU per 30 containers."""
    rounds = 0
    while not stop.wait(0.5):
        rounds += 1
        try:
            ctx.instances.reconcile_exited(everything=rounds % 20 == 0)  # type: ignore[attr-defined]
        except Exception as exc:  # keep the loop alive; the next round retries
            print(f"virtkitd: reconcile failed: {exc}", file=sys.stderr, flush=True)


# Threads for the sync endpoints and streams (anyio's pool; its default is 40). A `virtkit run` that streams
# its output, and a `logs -f`, hold one while they wait for more: with 40, the 41st made every other request
# wait until one of them ended. A thread waiting costs its stack's touched pages, a few KiB.
REQUEST_THREADS = 4096


async def _serve(server: uvicorn.Server) -> None:
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
    await server.serve()


def _bind_private(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="virtkitd", description="virtkit daemon")
    parser.add_argument("--home", default=None, help="state directory (default $VIRTKIT_HOME or /var/lib/virtkit)")
    args = parser.parse_args(argv)

    from virtkit.config import Home

    home = Home.from_env(args.home)
    home.ensure()
    lock = open(os.path.join(home.root, "virtkitd.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"virtkitd: another daemon already serves {home.root}", file=sys.stderr)
        sys.exit(1)

    import uvicorn

    from virtkit.api.app import create_app
    from virtkit.api.context import Context
    from virtkit.container.supervisor import ensure_running

    ctx = Context(home)
    ensure_running(home.run_dir, home.runtime_root, os.path.join(home.root, "supervisor.log"))
    app = create_app(ctx)
    # bound here, not by uvicorn, which would chmod a socket it binds to 0666: only root may talk to virtkitd
    sock = _bind_private(home.socket)
    # http and loop left to "auto": httptools and uvloop (dependencies) where installed, h11 and asyncio if not
    config = uvicorn.Config(app, fd=sock.fileno(), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    ctx.shutdown_hook = lambda: setattr(server, "should_exit", True)
    with open(os.path.join(home.run_dir, "virtkitd.pid"), "w") as f:
        f.write(str(os.getpid()))
    stop = threading.Event()
    threading.Thread(target=_reconcile_loop, args=(ctx, stop), daemon=True).start()
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve(server))
    finally:
        stop.set()
        time.sleep(0)
        try:
            os.unlink(home.socket)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
