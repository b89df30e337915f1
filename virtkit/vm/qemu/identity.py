"""A VM loaded from a template becomes its own machine: identity applied through its guest agent.

Everything the template's guest knew of the VM it was saved from is replaced: hostname (/proc, /etc/hostname,
/etc/hosts), the NIC's MAC (set in the guest: virtio-net's control queue, VIRTIO_NET_CTRL_MAC_ADDR_SET, passes it
on to QEMU's device, so QEMU and the bridge see it too), the leased address and default route, the DNS server,
/etc/machine-id, the kernel's RNG (random bytes mixed in: clones must not share a random state) and the wall
clock (the guest's clock went on from the moment of the save).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from virtkit.core.errors import SystemFailure
from virtkit.vm.qemu.agent import GuestAgent

# Run by the guest's agent as sh -c IDENTITY_SH virtkit-identity NAME ADDR GW DNS MAC OLDMAC MACHINE_ID EPOCH
# SEED. Three processes in all (sh, date, one `ip -batch`): under TCG each exec costs ~0.1 s, so files are
# written with the shell's builtins; SEED (random hex) is mixed into the kernel's RNG, so each VM made from
# one template has its own random state.
IDENTITY_SH = r"""set -u
name=$1 addr=$2 gw=$3 dns=$4 mac=$5 old=$6 mid=$7 now=$8 seed=$9
printf '%s' "$seed" >/dev/urandom
echo "$name" >/proc/sys/kernel/hostname
echo "$name" >/etc/hostname
echo "$mid" >/etc/machine-id
dev=
for d in /sys/class/net/*; do
  read -r t <"$d/type" 2>/dev/null || continue
  [ "$t" = 1 ] || continue
  read -r a <"$d/address"
  if [ -z "$dev" ] || [ "$a" = "$old" ]; then dev=${d##*/}; fi
done
[ -n "$dns" ] && echo "nameserver $dns" >/etc/resolv.conf
{
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
  if [ -n "$addr" ]; then printf '%s\t%s\n' "${addr%/*}" "$name"; else printf '127.0.1.1\t%s\n' "$name"; fi
} >/etc/hosts
date -s "@$now" >/dev/null || exit 9
if [ -n "$dev" ] && [ -n "$mac" ]; then
  {
    echo "link set dev $dev address $mac"
    echo "link set dev $dev up"
    echo "addr flush dev $dev scope global"
    echo "neigh flush dev $dev"
    [ -n "$addr" ] && echo "addr add $addr dev $dev"
    [ -n "$addr" ] && [ -n "$gw" ] && echo "route replace default via $gw dev $dev"
  } | ip -batch - || exit 10
fi
exit 0
"""


@dataclass(frozen=True)
class Identity:
    hostname: str
    address: str = ""          # ADDR/PREFIX
    gateway: str = ""
    dns: str = ""
    mac: str = ""              # the VM's own
    old_mac: str = ""          # the template's: picks the interface


def apply_identity(agent: GuestAgent, ident: Identity) -> None:
    """One guest-exec of IDENTITY_SH; SystemFailure with the script's stderr when it fails."""
    args = [ident.hostname, ident.address, ident.gateway, ident.dns, ident.mac, ident.old_mac, uuid.uuid4().hex,
            f"{time.time():.6f}", os.urandom(64).hex()]
    err: list[bytes] = []
    rc = agent.run(["/bin/sh", "-c", IDENTITY_SH, "virtkit-identity", *args], on_stderr=err.append)
    if rc != 0:
        raise SystemFailure(f"giving the VM its identity failed (exit {rc}): "
                            f"{b''.join(err).decode(errors='replace').strip()[-300:]}")
