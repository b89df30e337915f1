"""The minimal guest's initramfs: a newc cpio (written here) of busybox, the virtio modules and an /init.

The /init loads the modules, mounts proc/sys/dev, starts the guest agent (vkagent, when the archive has it),
runs the command passed base64-encoded on the kernel command line (`virtkit.cmd=`, a shell-quoted string;
chrooted into the VM's root disk when it has one: guestroot.py),
prints EXIT_MARKER with its status on the console and powers off. An ACPI power button press (QMP
system_powerdown) sends the command's process group SIGTERM (SIGKILL 5 s later), so a stop ends through the
same path. The archive is uncompressed: under TCG, decompressing it costs more than reading it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from base64 import b64encode

from virtkit.vm.qemu import guestroot
from virtkit.vm.qemu.kernel import Kernel, cache_dir

EXIT_MARKER = "virtkit-exit-status:"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run && mount -t devpts devpts /dev/pts
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
[ -x /sbin/vkagent ] && /sbin/vkagent </dev/null >/run/vkagent.log 2>&1 &
hostname "$(sed -n 's/.*virtkit.hostname=\([^ ]*\).*/\1/p' /proc/cmdline)" 2>/dev/null
ip link set lo up
addr=$(sed -n 's/.*virtkit.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$addr" ]; then
  ip link set eth0 up && ip addr add "$addr" dev eth0
  gw=$(sed -n 's/.*virtkit.gw=\([^ ]*\).*/\1/p' /proc/cmdline)
  [ -n "$gw" ] && ip route add default via "$gw"
fi
printf '127.0.0.1\tlocalhost\n%s\t%s\n' "${addr%/*}" "$(hostname)" >/etc/hosts
[ -n "$addr" ] || printf '127.0.0.1\tlocalhost %s\n' "$(hostname)" >/etc/hosts
dns=$(sed -n 's/.*virtkit.dns=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$dns" ] && echo "nameserver $dns" >/etc/resolv.conf
cmd=$(sed -n 's/.*virtkit.cmd=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
[ -n "$cmd" ] || cmd=sh
for e in /sys/class/input/event*; do
  if grep -q "Power Button" "$e/device/name" 2>/dev/null; then
    (head -c 1 "/dev/input/${e##*/}" >/dev/null
     while [ ! -s /run/child ]; do sleep 0.1; done
     c=$(cat /run/child); kill -TERM -$c && sleep 5 && kill -KILL -$c) &
  fi
done
. /@DISKS@
setsid $chroot /bin/sh -c "$cmd" </dev/console >/dev/console 2>&1 &
child=$!
echo $child >/run/child
wait $child
rc=$?
echo "@MARKER@ $rc" >/dev/console
sync
poweroff -f
"""


def init_script() -> str:
    return INIT.replace("@MARKER@", EXIT_MARKER).replace("@DISKS@", guestroot.SCRIPT_PATH)


def command_param(command: list[str]) -> str:
    """The kernel command line parameter carrying the command (base64: no spaces or quotes to escape)."""
    return "virtkit.cmd=" + b64encode(shlex.join(command).encode()).decode()


class Cpio:
    """A newc ("070701") archive writer."""

    def __init__(self, f: object) -> None:
        self.f = f
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        w = self.f.write  # type: ignore[attr-defined]
        w(hdr + namez)
        w(b"\0" * (-(len(hdr) + len(namez)) % 4))
        w(data)
        w(b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, 0o020000 | perm, 0, 0, 1, 0, 0, 0, 0, major, minor, len(namez), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        self.f.write(hdr + namez + b"\0" * (-(len(hdr) + len(namez)) % 4))  # type: ignore[attr-defined]

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def build(kernel: Kernel, busybox: str, agent: str | None = None) -> str:
    """The initramfs for `kernel`, cached by its inputs; returns its path. `agent`: the guest agent binary
    (vkagent, its path names its source hash), started by /init when there."""
    h = hashlib.sha256(init_script().encode())
    h.update(guestroot.DISKS_SH.encode())
    h.update(kernel.vmlinux.encode())
    h.update(busybox.encode())
    if agent:
        h.update(b"agent:" + agent.encode())
    for m in kernel.modules:
        h.update(m.encode())
    out_dir = os.path.join(cache_dir(), "initramfs")
    path = os.path.join(out_dir, f"{kernel.release}-{h.hexdigest()[:16]}.cpio")
    if os.path.exists(path):
        return path
    os.makedirs(out_dir, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".new-")
    try:
        with os.fdopen(fd, "wb") as f:
            c = Cpio(f)
            for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "root", "tmp", "run",
                      "etc", "lib", "lib/modules", "mnt"):
                c.dir(d)
            c.chardev("dev/console", 5, 1)
            c.chardev("dev/null", 1, 3, 0o666)
            with open(busybox, "rb") as b:
                c.file("bin/busybox", b.read(), 0o755)
            c.symlink("bin/sh", "busybox")
            if agent:
                with open(agent, "rb") as a:
                    c.file("sbin/vkagent", a.read(), 0o755)
            c.file("init", init_script().encode(), 0o755)
            c.dir("lib/virtkit")
            c.file(guestroot.SCRIPT_PATH, guestroot.DISKS_SH.encode())
            c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            c.file("etc/group", b"root:x:0:\n")
            names = []
            for m in kernel.modules:
                with open(m, "rb") as mf:
                    c.file(f"lib/modules/{os.path.basename(m)}", mf.read())
                names.append(os.path.basename(m))
            c.file("lib/modules/order", ("\n".join(names) + "\n").encode())
            c.close()
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
