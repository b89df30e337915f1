"""The one exception tree of virtkit; the API maps it to HTTP, the CLI to messages and exit codes."""

from __future__ import annotations


class VirtkitError(Exception):
    """Base of every error virtkit raises on purpose.

    `code` is a stable machine-readable name, `http_status` what the API answers,
    `exit_code` what the CLI exits with.
    """

    code = "internal"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class InvalidArgument(VirtkitError):
    """Bad input from the user: names the field and the reason."""

    code = "invalid_argument"
    http_status = 400
    exit_code = 2


class NotFound(VirtkitError):
    code = "not_found"
    http_status = 404


class AlreadyExists(VirtkitError):
    code = "already_exists"
    http_status = 409


class InvalidState(VirtkitError):
    """The operation is not allowed in the object's current state (e.g. exec into a stopped instance)."""

    code = "invalid_state"
    http_status = 409


class InUse(VirtkitError):
    code = "in_use"
    http_status = 409


class UnsafeArchive(InvalidArgument):
    """An image layer tries to write outside its root, plant a device node, or similar."""

    code = "unsafe_archive"


class IntegrityError(VirtkitError):
    """Stored content does not match its digest."""

    code = "integrity_error"
    http_status = 500


class Unsupported(VirtkitError):
    """The host or this build cannot do what was asked (e.g. systemd cgroups, missing kernel feature)."""

    code = "unsupported"
    http_status = 501


class SystemFailure(VirtkitError):
    """A syscall, process or kernel interface failed; the message names what and why."""

    code = "system_failure"
    http_status = 500


class DaemonUnavailable(VirtkitError):
    code = "daemon_unavailable"
    http_status = 503


ERRORS_BY_CODE: dict[str, type[VirtkitError]] = {
    cls.code: cls
    for cls in (
        VirtkitError, InvalidArgument, NotFound, AlreadyExists, InvalidState, InUse,
        UnsafeArchive, IntegrityError, Unsupported, SystemFailure, DaemonUnavailable,
    )
}


def from_dict(data: dict[str, str]) -> VirtkitError:
    """Rebuild the error the daemon raised from its JSON body (used by the SDK)."""
    cls = ERRORS_BY_CODE.get(data.get("error", ""), VirtkitError)
    return cls(data.get("message", "unknown error"))
