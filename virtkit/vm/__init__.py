"""Virtual machines: each instance its own kernel. Engines: `qemu` (QEMU over QMP)."""
