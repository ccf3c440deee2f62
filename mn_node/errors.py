"""One error root for the whole project, with the sysexits code each kind maps to."""

from __future__ import annotations

EX_OK = 0
EX_FAILED = 1  # the command worked, but what it waited for did not succeed (a job that failed)
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_INTERRUPTED = 130  # 128 + SIGINT: the operator pressed Ctrl-C


class MirrorNeuronError(Exception):
    """Root of every error this project raises on purpose.

    ``str(err)`` is one line an operator can act on: what is wrong and how to fix it.
    """

    exit_code = EX_SOFTWARE


class UsageError(MirrorNeuronError):
    exit_code = EX_USAGE


class DataError(MirrorNeuronError):
    """Bad input data (a manifest, a request body)."""

    exit_code = EX_DATAERR


class ConfigError(MirrorNeuronError):
    """Bad or missing configuration; systemd must not restart-loop on it."""

    exit_code = EX_CONFIG


class UnavailableError(MirrorNeuronError):
    """A resource we need is held by someone else or cannot be reached."""

    exit_code = EX_UNAVAILABLE


class TempFailError(MirrorNeuronError):
    exit_code = EX_TEMPFAIL


class LinkError(MirrorNeuronError):
    """A link-level failure: the connection concerned is dropped, nothing else."""

    exit_code = EX_UNAVAILABLE


class ProtocolError(LinkError):
    """Malformed, oversized, tampered or out-of-order input on a link."""


class AuthError(LinkError):
    """The peer could not prove it knows the cookie (or we could not)."""


class VersionError(LinkError):
    """The peer speaks another link protocol version."""


class NotConnected(LinkError):
    """No link to that node right now."""


class CallTimeout(LinkError):
    exit_code = EX_TEMPFAIL


class RemoteError(LinkError):
    """The remote mailbox handler raised; the message is its one-line reason."""


class RedisUnavailable(UnavailableError):
    """Redis cannot be reached or answered with an error."""


class LeaseLost(MirrorNeuronError):
    """A lease holder's token is no longer current (or its local deadline passed)."""

    exit_code = EX_TEMPFAIL


class FencedWriteRefused(LeaseLost):
    """Redis refused a write because the writer's token is not the current one."""
