"""`virtkit-vmm`: boot a guest with the native VMM from the command line; its exit status is the guest's."""

from __future__ import annotations

import os
import signal
import sys
import threading

from virtkit.vm.kvm.errors import ConfigError, VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from virtkit.vm.kvm.machine import DiskConfig

EXIT_USAGE = 2
EXIT_FAILURE = 1
FORMATS = ("auto", "bzimage", "elf", "flat")


class UsageError(Exception):
    """A bad command line: printed with the usage hint, exit status 2."""


def _size(text: str) -> int:
    # sizes as `virtkit run --memory` takes them: 64M, 1G, 512MiB, bytes
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise UsageError(f"--memory: cannot parse size {text!r} (use e.g. 64M, 1G, 512MiB)") from None
    if value <= 0:
        raise UsageError(f"--memory: {text!r} must be positive")
    return value


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"not an address: {text!r} (use e.g. 0x100000)") from None
    if not 0 <= value < 1 << 52:
        raise UsageError(f"address {text} is outside the guest-physical range")
    return value


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise UsageError(f"not a number: {text!r}") from None


# flag -> (kind, metavar, help). A hand-made parser, not argparse: argparse (with re and gettext) costs ~8 ms
# of a start that is measured against QEMU's.
OPTIONS: dict[str, tuple[str, str, str]] = {
    "--kernel": ("str", "FILE", "kernel image: bzImage, ELF vmlinux (PVH note or 64-bit entry), or flat"),
    "--kernel-format": ("format", "auto|bzimage|elf|flat", "how to load --kernel (default auto)"),
    "--load-addr": ("address", "ADDR", "flat images: guest-physical load address (default 0x100000)"),
    "--entry": ("address", "ADDR", "flat images: entry point (default: the load address)"),
    "--memory": ("size", "SIZE", "guest RAM, e.g. 128M (default 128M)"),
    "--cpus": ("int", "N", "vCPUs (default 1)"),
    "--cmdline": ("str", "STR", "kernel command line"),
    "--initrd": ("str", "FILE", "initial ramdisk"),
    "--disk": ("list", "FILE[,ro]", "virtio-blk disk on a raw file (repeatable)"),
    "--net": ("str", "TAP", "virtio-net on this TAP device"),
    "--mac": ("str", "MAC", "the guest's MAC address"),
    "--rng": ("flag", "", "add a virtio-rng device"),
    "--console": ("flag", "", "add a virtio-console (hvc0); its output joins the serial output"),
    "--cpuid-policy": ("str", "FILE.json", "CPUID policy: vendor, hypervisor_signature, remove_features"),
    "--serial": ("str", "stdio|FILE", "where COM1 goes (default stdio)"),
    "--snapshot-to": ("str", "DIR", "on SIGUSR2 (or an API snapshot with exit) save the machine to DIR, exit 0"),
    "--restore-from": ("str", "DIR", "continue a machine saved with --snapshot-to"),
    "--api-sock": ("str", "PATH", "serve the VMM's HTTP API on this unix socket"),
    "--stats": ("flag", "", "print exit statistics as JSON on stderr at the end"),
}
CONVERT: dict[str, Callable[[str], object]] = {"address": _address, "size": _size, "int": _int, "str": str}


def usage() -> str:
    lines = ["usage: virtkit-vmm --kernel FILE [options] | --restore-from DIR [options]", "",
             "Run a guest on virtkit's own VMM (/dev/kvm); the exit status is the byte the guest writes to port 0xf4.",
             "", "options:"]
    for flag, (_kind, metavar, text) in OPTIONS.items():
        lines.append(f"  {(flag + ' ' + metavar).rstrip():34} {text}")
    return "\n".join(lines)


def parse(argv: list[str]) -> dict[str, object]:
    """argv -> {dest: value}; every default present. Raises UsageError naming the bad flag."""
    args: dict[str, object] = {"kernel": None, "kernel_format": "auto", "load_addr": None, "entry": None,
                               "memory": 128 << 20, "cpus": 1, "cmdline": "", "initrd": None, "disk": [],
                               "net": None, "mac": None, "rng": False, "console": False, "cpuid_policy": None,
                               "serial": "stdio",
                               "snapshot_to": None, "restore_from": None, "api_sock": None, "stats": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag not in OPTIONS:
            raise UsageError(f"unknown argument {arg!r}" if not arg.startswith("--") or flag != arg
                             else f"unknown option {flag}")
        kind, metavar, _ = OPTIONS[flag]
        dest = flag[2:].replace("-", "_")
        if kind == "flag":
            if eq:
                raise UsageError(f"{flag} takes no value")
            args[dest] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(argv):
            value = argv[i + 1]
            i += 2
        else:
            raise UsageError(f"{flag} needs a value ({metavar})")
        try:
            if kind == "list":
                args[dest].append(value)  # type: ignore[attr-defined]
            elif kind == "format":
                if value not in FORMATS:
                    raise UsageError(f"invalid choice {value!r} (choose from {', '.join(FORMATS)})")
                args[dest] = value
            else:
                args[dest] = CONVERT[kind](value)
        except UsageError as exc:
            raise UsageError(f"{flag}: {exc}" if not str(exc).startswith(flag) else str(exc)) from None
    if args["restore_from"] is None and args["kernel"] is None:
        raise UsageError("--kernel is required (or --restore-from DIR)")
    if args["restore_from"] is not None and args["kernel"] is not None:
        raise UsageError("--kernel and --restore-from exclude each other: a snapshot carries its guest")
    return args


def _disks(specs: list[str]) -> list[DiskConfig]:
    from virtkit.vm.kvm.machine import DiskConfig

    disks: list[DiskConfig] = []
    for spec in specs:
        path, _, opts = spec.partition(",")
        if opts not in ("", "ro", "rw"):
            raise ConfigError(f"--disk {spec}: unknown option {opts!r} (only 'ro' or 'rw')")
        disks.append(DiskConfig(path, readonly=opts == "ro"))
    return disks


class _Args:
    def __init__(self, values: dict[str, object]) -> None:
        self.__dict__.update(values)


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    args: Any = _Args(parse(argv))

    from virtkit.vm.kvm.machine import Machine, MachineConfig

    serial_fd: int | None = None
    close_serial = False
    created_serial = False
    if args.serial == "stdio":
        serial_fd = sys.stdout.fileno()
    else:
        # appended to, like a console log: a restored or restarted machine continues the same file
        created_serial = not os.path.exists(args.serial)
        try:
            serial_fd = os.open(args.serial, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise ConfigError(f"--serial {args.serial}: {exc.strerror}") from None
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
                net_tap=args.net, net_mac=args.mac, rng=args.rng, console=args.console,
                cpuid_policy=args.cpuid_policy, serial_out=serial_fd, serial_in=serial_in,
            )
            machine = Machine(config)
    except BaseException:
        if close_serial and serial_fd is not None:
            os.close(serial_fd)
        if created_serial:  # a refused start leaves no file of its own behind
            os.unlink(args.serial)
        raise
    try:
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
        terminated = threading.Event()

        def on_term(_signum: int, _frame: object) -> None:
            terminated.set()
            if machine is not None:
                machine.stop("stopped by SIGTERM")
        signal.signal(signal.SIGTERM, on_term)
        machine.start()
        info = None
        while info is None:
            info = machine.wait(0.5)  # short waits so signal handlers run in the main thread
        if args.stats:
            import json

            print(json.dumps(machine.stats()), file=sys.stderr)
        if saved.is_set():
            return 0
        if terminated.is_set():
            return 128 + signal.SIGTERM
        if info.reason == "exit-port":
            return int(info.status or 0)
        if info.reason in ("shutdown", "reset"):
            # status 0 as for a clean end, but said: a supervisor can tell a reset from the guest's own exit
            print(f"virtkit-vmm: {info.message}", file=sys.stderr)
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
    except UsageError as exc:
        print(f"virtkit-vmm: {exc}\n(see virtkit-vmm --help)", file=sys.stderr)
        return EXIT_USAGE
    except VmmError as exc:
        print(f"virtkit-vmm: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: threads and mappings go with the process


if __name__ == "__main__":
    entry()
