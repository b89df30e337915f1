"""VM templates: a system image's VM booted once and saved, each later VM of the same machine started from it.

A systemd boot under TCG takes ~20 s here; loading a saved guest takes well under a second. So the first VM of
a configuration boots, and once its guest agent answers, a thread saves it as the template of that
configuration: QMP migrate to a file (the VM stopped for it, as a snapshot does: vm/qemu/snapshot.py), its
overlay copied while migration holds the disk inactive (memory and disk agree), then the VM continues. The
stream is compressed with zstd (its frames carry a checksum) and its sha256 recorded.

A configuration (the template's key) is: the image's manifest digest, memory, vCPUs, accelerator, whether
the VM has a NIC, the machine's device layout (MACHINE) and the QEMU binary's version. A template is used only
where all of these match, no --kernel, no volumes, no guest configuration (--user-data, --ssh-key: a clone
resumes after cloud-init ran) and no --disk-size beyond the image's disk are given, and the user did not say
--no-template; checked again (meta, files, sha256) at each create, and a template that
fails is removed: the VM boots, and is saved as the new template.

A VM made from a template: its own overlay backed by the template's disk (hard-linked into its directory as
template.qcow2, backed in turn by base.raw), and the state linked as template.state.zst. Its first start runs
QEMU with `-incoming` from it (the kernel command line the template booted with, so the machine matches),
continues the guest and gives it its own identity through the agent (vm/qemu/identity.py: hostname, the NIC's
MAC, the leased address, DNS, a new machine-id, fresh entropy, the wall clock). A start that cannot load the
state or apply the identity drops the template and boots the VM afresh on an overlay of the base disk. Later
starts boot.

Files: $VIRTKIT_HOME/vmtemplates/<key>/{template.json, disk.qcow2, base.raw, memory.state.zst}, .lock-<key>
(held while one is saved); vms/<id>/boot.json says how the VM's last start went (`virtkit stats` shows it).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from virtkit.core.errors import SystemFailure, VirtkitError
from virtkit.core.models import Instance
from virtkit.storage import vm_disks
from virtkit.vm.qemu.agent import AgentUnavailable, GuestAgent
from virtkit.vm.qemu.cmdline import qemu_binary
from virtkit.vm.qemu.identity import Identity, apply_identity

if TYPE_CHECKING:
    from virtkit.vm.qemu.snapshot import VmSnapshots

    class _Base(VmSnapshots):
        # what the driver's other parts (access.py, disks.py) give it
        def agent_socket(self, instance: Instance) -> str: ...
        def _started_at(self, instance: Instance) -> float: ...
        def disk_path(self, instance: Instance) -> str: ...
else:
    _Base = object

# the device layout the template's QEMU had (cmdline.build_argv + disks._disk_args): change it with them
MACHINE = "microvm/virtio-mmio: blk(qcow2 over raw), serial port, net; serial console file; v1"
TEMPLATES = "vmtemplates"
META = "template.json"
DISK = "disk.qcow2"
STATE = "memory.state"
ZST = ".zst"
BASE = "base.raw"
VM_DISK = "template.qcow2"            # in the VM's directory
VM_STATE = "template.state"           # (+ ZST) in the VM's directory until its first start
BOOT_FILE = "boot.json"
SAVING = "template-saving"            # in the VM's directory while the saver holds it stopped
SAVE_WAIT = 900.0                     # how long the saver waits for the first VM's agent (a loaded host)
IDENTITY_TIMEOUT = 20.0
SETTLE_WAIT = 120



@functools.cache
def qemu_version() -> str:
    """The QEMU binary's version line (a template saved by another QEMU cannot be loaded)."""
    binary = qemu_binary()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    return f"{out.splitlines()[0] if out else '?'} ({os.stat(binary).st_size} bytes)"


def _key(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


_hashed: dict[tuple[str, int, int, int], str] = {}


def _sha256(path: str) -> str:
    """The file's sha256; remembered per (path, inode, size, mtime) in this process: each create checks the
    template, and hashing its ~35 MB costs ~0.1 s here. Any write to the file changes its mtime."""
    st = os.stat(path)
    sig = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if sig not in _hashed:
        _hashed[sig] = _sha256_now(path)
    return _hashed[sig]


def _sha256_now(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _suffix(state: str) -> str:
    return ZST if state.endswith(ZST) else ""


def _guest_params(params: list[str]) -> dict[str, str]:
    """virtkit.hostname=... and the like, from a kernel command line list."""
    return dict(p.removeprefix("virtkit.").split("=", 1) for p in params if p.startswith("virtkit.") and "=" in p)


class VmTemplates(_Base):
    _savers: dict[str, threading.Thread] = {}

    def templates_root(self) -> str:
        return os.path.join(self.home.root, TEMPLATES)

    def _template_dir(self, key: str) -> str:
        return os.path.join(self.templates_root(), key)

    # -- create ---------------------------------------------------------------------------------------
    def _plan_template(self, instance: Instance, plan: dict[str, Any]) -> dict[str, Any]:
        """Whether this VM starts from a template: {"template": {"use", "key", "doc", "why", ...}}."""
        spec = instance.spec or {}
        disk = plan.get("disk") or {}
        why = None
        if spec.get("template") is False:
            why = "--no-template given"
        elif plan.get("kernel"):
            why = "a kernel of the user's (--kernel)"
        elif spec.get("cloud_init"):
            why = "guest configuration given (--user-data, --ssh-key): cloud-init applies it at the first boot"
        elif not disk or disk["size"] != disk["base_size"]:
            why = "a root disk bigger than the image's (--disk-size)"
        if why:
            return {"template": {"use": False, "why": why}}
        doc = {"image": disk["image_digest"], "memory_mib": plan["memory_mib"], "vcpus": plan["vcpus"],
               "accel": plan["accel"], "net": bool(plan.get("net")), "machine": MACHINE, "qemu": qemu_version(),
               "disk_size": disk["size"]}
        key = _key(doc)
        meta = self._valid_template(key, doc)
        if meta is None:
            return {"template": {"use": False, "key": key, "doc": doc,
                                 "why": "no template of this image and machine yet (this VM is saved as the "
                                        "template once its agent answers)"}}
        return {"template": {"use": True, "key": key, "doc": doc, "params": meta["params"], "mac": meta["mac"],
                             "state": meta["state"], "state_sha256": meta["state_sha256"]}}

    def _valid_template(self, key: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """The template's meta when it is whole and of this configuration; a damaged one is removed."""
        tdir = self._template_dir(key)
        try:
            with open(os.path.join(tdir, META)) as f:
                meta = dict(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._drop_template(key, f"unreadable meta: {exc}")
            return None
        problem = None
        try:
            state = os.path.join(tdir, meta["state"])
            missing = [n for n in (DISK, BASE) if not os.path.isfile(os.path.join(tdir, n))]
            if meta["doc"] != doc:
                problem = "made for another configuration"
            elif missing:
                problem = f"its {missing[0]} is missing"
            elif os.path.getsize(state) != meta["state_size"] or _sha256(state) != meta["state_sha256"]:
                problem = "its memory file does not match its checksum"
        except (OSError, KeyError, TypeError) as exc:
            problem = f"incomplete: {exc}"
        if problem:
            self._drop_template(key, problem)
            return None
        return meta

    def _drop_template(self, key: str, why: str) -> None:
        import logging

        logging.getLogger(__name__).warning("VM template %s removed: %s", key[:12], why)
        tdir = self._template_dir(key)
        gone = os.path.join(self.templates_root(), f".gone-{key}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(tdir, gone)        # at once: no create links half of a template being removed
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _install_from_template(self, plan: dict[str, Any], vdir: str) -> bool:
        """The VM's overlay on the template's disk and the template's state, linked in; False (and the plan
        says why) when the template went away meanwhile."""
        t = plan["template"]
        tdir = self._template_dir(t["key"])
        try:
            os.link(os.path.join(tdir, DISK), os.path.join(vdir, VM_DISK))
            os.link(os.path.join(tdir, t["state"]), os.path.join(vdir, VM_STATE + _suffix(t["state"])))
        except OSError:
            for name in (VM_DISK, VM_STATE, VM_STATE + ZST):
                try:
                    os.unlink(os.path.join(vdir, name))
                except FileNotFoundError:
                    pass
            plan["template"] = {**t, "use": False, "why": "the template was removed while this VM was made"}
            return False
        vm_disks.create_overlay(os.path.join(vdir, "disk.qcow2"), VM_DISK, plan["disk"]["size"], "qcow2")
        return True

    # -- start ----------------------------------------------------------------------------------------
    def _template_state(self, instance: Instance) -> str | None:
        for name in (VM_STATE + ZST, VM_STATE):
            if os.path.exists(path := self._file(instance, name)):
                return path
        return None

    def _template_args(self, instance: Instance) -> list[str]:
        state = self._template_state(instance)
        if state is None:
            return []
        return ["-incoming", f"exec:{'zstd -dcq' if state.endswith(ZST) else 'cat'} {shlex.quote(state)}"]

    def _boot_params(self, instance: Instance, plan: dict[str, Any]) -> list[str]:
        """The kernel command line of this start: the template's when the guest is loaded from it."""
        if self._template_state(instance):
            return list(plan["template"]["params"])
        return list(plan["params"])

    def restore(self, instance: Instance, src: str) -> None:
        """A restored disk (and memory) replaces what the template would have given the first start."""
        super().restore(instance, src)
        self._unlink_state(instance)

    def start(self, instance: Instance) -> int:
        if self._process_pid(instance) is not None or self._template_state(instance) is None:
            t0 = time.monotonic()
            pid = int(super().start(instance))
            self._boot_record(instance, "boot", time.monotonic() - t0)
            self._maybe_save_template(instance)
            return pid
        t0 = time.monotonic()
        phases: dict[str, float] = {}
        try:
            self._check_state(instance)
            pid = int(super().start(instance))
            phases["launched"] = time.monotonic() - t0
            self._finish_resume(instance)
            phases["loaded"] = time.monotonic() - t0
            agent = GuestAgent(self.agent_socket(instance), name=instance.name, timeout=IDENTITY_TIMEOUT)
            agent.ping()
            phases["agent"] = time.monotonic() - t0          # running, and its agent answers
            self._apply_identity(instance, agent)
        except (VirtkitError, OSError) as exc:
            why = getattr(exc, "message", None) or str(exc)
            self._kill_process(instance)
            self._drop_template(self.info(instance)["template"]["key"], f"a VM could not start from it: {why}")
            self._boot_without_template(instance, why)
            return self.start(instance)
        self._boot_record(instance, "template", time.monotonic() - t0, phases)
        self._unlink_state(instance)            # used once: later starts boot
        return pid

    def _check_state(self, instance: Instance) -> None:
        """The template's memory file as it was checked at create (it may have changed since: a VM made with
        `create` can start much later). A zstd frame's checksum is only read at its end, after QEMU has taken
        the pages, so a damaged stream could otherwise load. (Remembered per inode and mtime: ~0.1 s only when
        the file changed, or in a new daemon.)"""
        state = self._template_state(instance)
        expected = (self.info(instance).get("template") or {}).get("state_sha256")
        if state is not None and expected and _sha256(state) != expected:
            raise SystemFailure("its memory file no longer matches the template's checksum")

    def _unlink_state(self, instance: Instance) -> None:
        for name in (VM_STATE, VM_STATE + ZST):
            try:
                os.unlink(self._file(instance, name))
            except FileNotFoundError:
                pass

    def _boot_without_template(self, instance: Instance, why: str) -> None:
        """A fresh overlay on the base disk, and the plan says the VM boots."""
        plan = self.info(instance)
        vdir = self.vm_dir(instance)
        self._unlink_state(instance)
        for name in ("disk.qcow2", VM_DISK):
            try:
                os.unlink(os.path.join(vdir, name))
            except FileNotFoundError:
                pass
        vm_disks.create_overlay(os.path.join(vdir, "disk.qcow2"), BASE, plan["disk"]["size"])
        plan["template"] = {**plan["template"], "use": False, "why": f"the template could not be used ({why})"}
        with open(os.path.join(vdir, "vm.json"), "w") as f:
            json.dump(plan, f)

    def _apply_identity(self, instance: Instance, agent: GuestAgent) -> None:
        plan = self.info(instance)
        own = _guest_params(plan["params"])
        net = plan.get("net") or {}
        apply_identity(agent, Identity(hostname=own.get("hostname", instance.name), address=own.get("ip", ""),
                                       gateway=own.get("gw", ""), dns=own.get("dns", ""), mac=net.get("mac", ""),
                                       old_mac=plan["template"].get("mac") or ""))
        with open(self._file(instance, "agent-seen"), "w") as f:
            f.write(repr(self._started_at(instance)))

    def _boot_record(self, instance: Instance, mode: str, seconds: float,
                     phases: dict[str, float] | None = None) -> None:
        t = self.info(instance).get("template") or {}
        rec = {"mode": mode, "seconds": round(seconds, 3), "template": (t.get("key") or "")[:12] or None,
               "why": None if mode == "template" else t.get("why"),
               "phases": {k: round(v, 3) for k, v in (phases or {}).items()}}
        with open(self._file(instance, BOOT_FILE), "w") as f:
            json.dump(rec, f)

    def boot_info(self, instance: Instance) -> dict[str, Any]:
        """How the VM's last start went: {"mode": "template"|"boot", "seconds", "template", "why"}."""
        try:
            with open(self._file(instance, BOOT_FILE)) as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return {}

    # -- save -----------------------------------------------------------------------------------------
    def _held_by_saver(self, instance: Instance) -> bool:
        """The VM is stopped only for a moment, by the template's saver (not paused by the user). A saver
        that died meanwhile (virtkitd killed) holds nothing: the VM shows as paused, and resume continues it."""
        from virtkit.images._fsutil import pid_alive

        try:
            with open(self._file(instance, SAVING)) as f:
                return bool(pid_alive(int(f.read().strip())))
        except (OSError, ValueError):
            return False

    def _maybe_save_template(self, instance: Instance) -> None:
        """After a boot of a VM that could have a template and has none: save it once its agent answers."""
        t = self.info(instance).get("template") or {}
        if not t.get("key") or t.get("use") or not (self.info(instance).get("system")):
            return
        if self._valid_template(t["key"], t["doc"]) is not None:
            return
        thread = threading.Thread(target=self._save_quietly, args=(instance, t["key"], t["doc"]), daemon=True,
                                  name=f"vm-template-{instance.name}")
        VmTemplates._savers[instance.id] = thread
        thread.start()

    def wait_template_saved(self, instance: Instance, timeout: float) -> bool:
        """Until the saver started for this VM ends (tests, bench); True when none runs any more."""
        thread = VmTemplates._savers.get(instance.id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _save_quietly(self, instance: Instance, key: str, doc: dict[str, Any]) -> None:
        import logging

        try:
            self._save_template(instance, key, doc)
        except (VirtkitError, OSError) as exc:
            logging.getLogger(__name__).warning("VM %s: no template saved: %s", instance.name,
                                                getattr(exc, "message", exc))
        finally:
            VmTemplates._savers.pop(instance.id, None)

    def _save_template(self, instance: Instance, key: str, doc: dict[str, Any]) -> None:
        from virtkit.vm.qemu.snapshot import _compress

        root = self.templates_root()
        os.makedirs(root, mode=0o700, exist_ok=True)
        lock = os.open(os.path.join(root, f".lock-{key}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        tmp = None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return                      # another VM of this configuration is being saved
            if self._valid_template(key, doc) is not None:
                return
            started = self._started_at(instance)
            agent = GuestAgent(self.agent_socket(instance), name=instance.name)
            deadline = time.monotonic() + SAVE_WAIT
            while True:
                if self._process_pid(instance) is None or self._started_at(instance) != started:
                    return                  # stopped (or restarted) before its agent answered
                try:
                    agent.wait_ready(5.0)
                    break
                except AgentUnavailable:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.5)
            # a settled guest: each VM made from it has no boot work left (bounded: a unit may never settle)
            agent.run(["timeout", str(SETTLE_WAIT), "systemctl", "is-system-running", "--wait"])
            plan = self.info(instance)
            tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{os.getpid()}-")
            marker = self._file(instance, SAVING)
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            try:
                self._save_running(instance, tmp, self.disk_path(instance))
            finally:
                os.unlink(marker)
            _compress(os.path.join(tmp, STATE))
            state = STATE + ZST if os.path.exists(os.path.join(tmp, STATE + ZST)) else STATE
            os.link(self._file(instance, BASE), os.path.join(tmp, BASE))
            os.chmod(os.path.join(tmp, DISK), 0o444)
            meta = {"doc": doc, "params": plan["params"], "mac": (plan.get("net") or {}).get("mac"),
                    "state": state, "state_size": os.path.getsize(os.path.join(tmp, state)),
                    "state_sha256": _sha256(os.path.join(tmp, state)), "from": instance.name,
                    "created_at": time.time()}
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f)
            try:
                os.rename(tmp, self._template_dir(key))
                tmp = None
            except OSError:
                pass                        # one is there already
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            os.close(lock)


def collect_templates(root: str, keep: set[str]) -> list[str]:
    """Remove the templates (under `root`) of images that are gone (manifest digest not in `keep`), and what
    a saver killed midway left (.tmp-PID-* of a dead PID, .gone-*). Returns the keys removed. An image store
    GC hook, as the base disks' (storage/vm_disks.py)."""
    from virtkit.images._fsutil import pid_alive

    removed = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    for entry in entries:
        path = os.path.join(root, entry)
        if entry.startswith(".gone-") or (entry.startswith(".tmp-") and not _alive(entry, pid_alive)):
            shutil.rmtree(path, ignore_errors=True)
            continue
        if entry.startswith("."):
            continue
        try:
            with open(os.path.join(path, META)) as f:
                image = json.load(f)["doc"]["image"]
        except (OSError, ValueError, KeyError, TypeError):
            continue             # being saved, or damaged: the next create's check removes it
        if image not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(entry)
    return removed


def _alive(entry: str, pid_alive: Any) -> bool:
    try:
        pid = int(entry.split("-")[1])
    except (IndexError, ValueError):
        return False
    return pid == os.getpid() or bool(pid_alive(pid))
