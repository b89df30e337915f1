"""libnftables (Debian's libnftables1, what `nft` itself is built on) in virtkitd's own process.

Why not `nft -j -f -` per change: an nft process closes its netlink socket when it exits, and that close waits
for nf_tables to finish destroying what the transaction replaced (an RCU grace period): ~15 ms of a ~20 ms run
here, twice per instance (create and rm). One context kept for the process's life never closes its socket;
the same ruleset applies in under 1 ms. JSON in, as `nft -j`; errors come back as nft's own text.
"""

from __future__ import annotations

import ctypes
import threading

NFT_CTX_OUTPUT_JSON = 1 << 4     # libnftables.h: also makes nft_run_cmd_from_buffer read JSON


class LibNft:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        lib.nft_ctx_output_set_flags(self.ctx, lib.nft_ctx_output_get_flags(self.ctx) | NFT_CTX_OUTPUT_JSON)
        self.lock = threading.Lock()          # a context is not safe to share between threads at once

    def run(self, document: str) -> str | None:
        """Apply a JSON document in one transaction; None when it applied, else nft's error text."""
        with self.lock:
            if self.lib.nft_run_cmd_from_buffer(self.ctx, document.encode()) == 0:
                return None
            err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
            return err.decode(errors="replace").strip() or "failed"


_shared: LibNft | None = None
_tried = False
_lock = threading.Lock()


def shared() -> LibNft | None:
    """This process's context, or None where libnftables cannot be loaded (then callers run `nft`)."""
    global _shared, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                _shared = LibNft(ctypes.CDLL("libnftables.so.1"))
            except (OSError, AttributeError):
                _shared = None
        return _shared
