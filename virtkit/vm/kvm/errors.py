"""Errors of the native VMM: one hierarchy, each naming what is wrong."""

from __future__ import annotations


class VmmError(Exception):
    """Base of every native-VMM error."""


class KvmUnavailable(VmmError):
    """/dev/kvm is missing, unusable, or lacks a capability the VMM needs."""


class ConfigError(VmmError):
    """What the user asked for is invalid (a usage error: virtkit-vmm exits 2)."""


class GuestMemoryError(VmmError):
    """A guest-physical access outside guest RAM (or across a hole)."""


class BootError(ConfigError):
    """The kernel image cannot be loaded as asked (format, size, addresses)."""


class DeviceError(VmmError):
    """A device was driven into an invalid state by the guest or by its configuration."""
