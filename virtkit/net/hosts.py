"""The managed /etc/hosts and /etc/resolv.conf of an instance.

Names resolve through a hosts file per instance that virtkit rewrites whenever a peer joins or leaves the
network: no resolver process per network to start, supervise and clean up, names that keep resolving while
virtkitd is down, and busybox's and glibc's resolvers both read it. (A VM's guest has no file of ours to
rewrite: it asks virtkitd's name server, net.dns, fed from the same membership.) The file is rewritten in
place (same inode), because the instance sees it through a bind mount of that inode.
"""

from __future__ import annotations

import os

HEADER = "# managed by virtkit: rewritten when instances join or leave the network\n"


def render(hostname: str, address: str | None, peers: list[tuple[str, str]], aliases: list[str] | None = None,
           address6: str | None = None) -> str:
    """The hosts file of an instance: itself under `hostname` (and `aliases`: its kernel hostname, kept across a
    rename), then each peer name with its address (IPv4 first, then IPv6: resolvers take the first)."""
    own = " ".join([hostname, *(aliases or [])])
    lines = [HEADER, "127.0.0.1\tlocalhost\n", "::1\tlocalhost ip6-localhost ip6-loopback\n"]
    lines.append(f"{address}\t{own}\n" if address else f"127.0.1.1\t{own}\n")
    if address6:
        lines.append(f"{address6}\t{own}\n")
    for addr, name in sorted(peers, key=lambda p: p[1]):
        if name != hostname and name not in (aliases or []):
            lines.append(f"{addr}\t{name}\n")
    return "".join(lines)


def write_in_place(path: str, content: str) -> None:
    """Overwrite keeping the inode (a rename would leave the instance's bind mount on the old file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        data = content.encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def resolv_conf(host_file: str = "/etc/resolv.conf") -> str:
    """The host's resolvers, less loopback ones (they would mean the instance's own loopback)."""
    try:
        with open(host_file) as f:
            lines = f.readlines()
    except OSError:
        return ""
    keep = [ln for ln in lines if not (ln.split()[:1] == ["nameserver"] and len(ln.split()) > 1
                                       and (ln.split()[1].startswith("127.") or ln.split()[1] == "::1"))]
    return "".join(keep)
