"""`virtkit-vmm`: boot a guest with the native VMM from the command line; its exit status is the guest's."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.vm.kvm.errors import ConfigError, VmmError

if TYPE_CHECKING:
    from virtkit.vm.kvm.machine import DiskConfig

EXIT_USAGE = 2
EXIT_FAILURE = 1
FORMATS = ("auto", "bzimage", "elf", "flat")


def _size(text: str) -> int:
    from virtkit.core.errors import InvalidArgument
    from virtkit.core.options import parse_size

    try:
        return parse_size(text, "--memory")
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (use e.g. 0x100000)") from None
    if not 0 <= value < 1 << 52:
        raise argparse.ArgumentTypeError(f"address {text} is outside the guest-physical range")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virtkit-vmm", description="Run a guest on virtkit's own VMM (/dev/kvm).")
    p.add_argument("--kernel", required=False, type=Path, help="kernel image (bzImage, ELF vmlinux, or flat)")
    p.add_argument("--kernel-format", default="auto", choices=FORMATS)
    p.add_argument("--load-addr", type=_address, help="flat images: guest-physical load address (0x100000)")
    p.add_argument("--entry", type=_address, help="flat images: entry point (default: the load address)")
    p.add_argument("--memory", type=_size, default=128 << 20, help="guest RAM, e.g. 128M (default 128M)")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--cmdline", default="", help="kernel command line")
    p.add_argument("--initrd", type=Path)
    p.add_argument("--disk", action="append", default=[], metavar="FILE[,ro]", help="virtio-blk disk (repeatable)")
    p.add_argument("--net", metavar="TAP", help="virtio-net on this TAP device")
    p.add_argument("--mac", help="the guest's MAC address (default: derived from the TAP name)")
    p.add_argument("--rng", action="store_true", help="add a virtio-rng device")
    p.add_argument("--cpuid-policy", type=Path, metavar="FILE.json")
    p.add_argument("--serial", default="stdio", metavar="stdio|FILE", help="where COM1 goes (default stdio)")
    p.add_argument("--snapshot-to", type=Path, metavar="DIR",
                   help="on SIGUSR2 (or an API snapshot with exit), save the machine to DIR and exit 0")
    p.add_argument("--restore-from", type=Path, metavar="DIR", help="continue a machine saved with --snapshot-to")
    p.add_argument("--api-sock", type=Path, metavar="PATH", help="serve the VMM's HTTP API on this unix socket")
    p.add_argument("--stats", action="store_true", help="print exit statistics as JSON on stderr at the end")
    return p


def _disks(specs: list[str]) -> list[DiskConfig]:
    from virtkit.vm.kvm.machine import DiskConfig

    disks: list[DiskConfig] = []
    for spec in specs:
        path, _, opts = spec.partition(",")
        if opts not in ("", "ro", "rw"):
            raise ConfigError(f"--disk {spec}: unknown option {opts!r} (only 'ro' or 'rw')")
        disks.append(DiskConfig(Path(path), readonly=opts == "ro"))
    return disks


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.restore_from is None and args.kernel is None:
        parser().error("--kernel is required (or --restore-from DIR)")
    if args.restore_from is not None and args.kernel is not None:
        parser().error("--kernel and --restore-from exclude each other: a snapshot carries its guest")

    from virtkit.vm.kvm.machine import Machine, MachineConfig

    serial_fd: int | None = None
    close_serial = False
    if args.serial == "stdio":
        serial_fd = sys.stdout.fileno()
    else:
        serial_fd = os.open(args.serial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        close_serial = True
    serial_in = sys.stdin.fileno() if args.serial == "stdio" and not sys.stdin.closed and _readable(0) else None
    api = None
    machine = None
    try:
        if args.restore_from is not None:
            machine = Machine.restore(args.restore_from, serial_out=serial_fd, serial_in=serial_in)
        else:
            config = MachineConfig(
                kernel=args.kernel, kernel_format=args.kernel_format, load_addr=args.load_addr, entry=args.entry,
                memory=args.memory, cpus=args.cpus, cmdline=args.cmdline, initrd=args.initrd,
                disks=_disks(args.disk),
                net_tap=args.net, net_mac=args.mac, rng=args.rng,
                cpuid_policy=args.cpuid_policy, serial_out=serial_fd, serial_in=serial_in,
            )
            machine = Machine(config)
        saved = threading.Event()

        def snapshot_and_exit(directory: str) -> None:
            saved.set()
            assert machine is not None
            machine.stop(f"saved to {directory}")

        if args.api_sock is not None:
            from virtkit.vm.kvm.api_server import ApiServer

            api = ApiServer(args.api_sock, machine, snapshot_and_exit)
        if args.snapshot_to is not None:
            target = args.snapshot_to

            def save_and_exit() -> None:
                assert machine is not None
                try:
                    machine.save_snapshot(target)
                except (VmmError, OSError) as exc:
                    print(f"virtkit-vmm: snapshot to {target} failed: {exc}", file=sys.stderr)
                    machine.resume()
                    return
                snapshot_and_exit(str(target))

            def on_usr2(_signum: int, _frame: object) -> None:
                threading.Thread(target=save_and_exit, name="vmm-snapshot", daemon=True).start()
            signal.signal(signal.SIGUSR2, on_usr2)
        signal.signal(signal.SIGTERM, lambda _s, _f: machine.stop("SIGTERM") if machine else None)
        machine.start()
        info = None
        while info is None:
            info = machine.wait(0.5)  # short waits so signal handlers run in the main thread
        if args.stats:
            import json

            print(json.dumps(machine.stats()), file=sys.stderr)
        if saved.is_set():
            return 0
        if info.reason == "exit-port":
            return int(info.status or 0)
        if info.reason in ("shutdown", "reset"):
            return 0
        print(f"virtkit-vmm: {info.message}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if api is not None:
            api.close()
        if machine is not None:
            machine.close()
        if close_serial and serial_fd is not None:
            os.close(serial_fd)


def _readable(fd: int) -> bool:
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    # a terminal, pipe or socket can bring input; /dev/null and files would spin the event loop at EOF
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except VmmError as exc:
        print(f"virtkit-vmm: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.stdout.flush()
    os._exit(main())


if __name__ == "__main__":
    entry()
