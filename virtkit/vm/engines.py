"""The InstanceDriver of type "vm": hands each call to the engine the instance was created with (spec["engine"]).

Nothing above this module knows which engine runs a VM. Instances made before engines existed have no
spec["engine"]: they are QEMU's.
"""

from __future__ import annotations

from typing import Any

from virtkit.config import Home
from virtkit.core.driver import ExitStatus
from virtkit.core.errors import InvalidArgument, Unsupported
from virtkit.core.models import Instance
from virtkit.vm.process import VmProcessDriver

DEFAULT_ENGINE = "qemu"


class VmEngines:
    type = "vm"

    def __init__(self, home: Home, images: Any) -> None:
        from virtkit.vm.kvm.driver import NativeDriver
        from virtkit.vm.qemu.driver import QemuDriver

        self.engines: dict[str, VmProcessDriver] = {"qemu": QemuDriver(home, images),
                                                    "native": NativeDriver(home, images)}

    def engine(self, instance: Instance) -> VmProcessDriver:
        name = (instance.spec or {}).get("engine") or DEFAULT_ENGINE
        try:
            return self.engines[name]
        except KeyError:
            raise InvalidArgument(f"engine: unknown VM engine {name!r} (known: {', '.join(self.engines)})") from None

    def create(self, instance: Instance) -> None:
        self.engine(instance).create(instance)

    def start(self, instance: Instance) -> int:
        return self.engine(instance).start(instance)

    def stop(self, instance: Instance, timeout: float) -> None:
        self.engine(instance).stop(instance, timeout)

    def kill(self, instance: Instance, signal: int) -> None:
        self.engine(instance).kill(instance, signal)

    def pause(self, instance: Instance) -> None:
        self.engine(instance).pause(instance)

    def resume(self, instance: Instance) -> None:
        self.engine(instance).resume(instance)

    def delete(self, instance: Instance) -> None:
        self.engine(instance).delete(instance)

    def status(self, instance: Instance) -> str:
        return self.engine(instance).status(instance)

    def exit_status(self, instance: Instance) -> ExitStatus | None:
        return self.engine(instance).exit_status(instance)

    def stats(self, instance: Instance) -> dict[str, Any]:
        return self.engine(instance).stats(instance)

    def log_path(self, instance: Instance) -> str:
        return self.engine(instance).log_path(instance)

    def watch(self, instance: Instance) -> Any:
        return self.engine(instance).watch(instance)

    def output_filter(self, instance: Instance) -> Any:
        return self.engine(instance).output_filter(instance)

    def info(self, instance: Instance) -> dict[str, Any]:
        return self.engine(instance).info(instance)

    def exec_argv(self, instance: Instance, command: list[str], *, tty: bool, env: list[str],
                  console_socket: str | None = None) -> list[str]:
        return self.engine(instance).exec_argv(instance, command, tty=tty, env=env, console_socket=console_socket)

    def open_console(self, instance: Instance) -> int:
        engine = self.engine(instance)
        if not hasattr(engine, "open_console"):
            raise Unsupported(f"console: the {instance.spec.get('engine')} engine's serial console takes no input; "
                              f"`virtkit logs -f {instance.name}` shows its output")
        return int(engine.open_console(instance))

    def snapshot(self, instance: Instance, dest: str) -> int:
        return self.engine(instance).snapshot(instance, dest)

    def restore(self, instance: Instance, src: str) -> None:
        self.engine(instance).restore(instance, src)

    def export_changes(self, instance: Instance, tar_path: str) -> None:
        self.engine(instance).export_changes(instance, tar_path)

    def update_cpu(self, instance: Instance, live: bool) -> None:
        self.engine(instance).update_cpu(instance, live)
