"""The tfos error hierarchy (every side: driver, executor task, TF node).

Every error tfos raises derives from :class:`TfosError`. Messages say what failed, where, and
what to do about it; node failures carry the node's identity and the tail of its log.
"""
from __future__ import annotations


class TfosError(Exception):
    """Base class of every error raised by tfos."""


class ConfigError(TfosError, ValueError):
    """An argument or setting is invalid; the message quotes the bad value and the fix."""


class PreflightError(TfosError):
    """The Spark application cannot host the requested cluster (checked before launch)."""


class ReservationTimeout(TfosError):
    """Not every node registered with the driver before the reservation deadline."""


class ClusterFailed(TfosError):
    """The cluster stopped because of a failure; ``failures`` lists them, root cause first."""

    def __init__(self, message: str, failures: tuple["NodeFailed", ...] = ()):
        super().__init__(message)
        self.failures = failures


class NodeFailed(TfosError):
    """A TF node exited with an error, was killed, or stopped answering."""

    def __init__(self, node: str, host: str, reason: str, exit_code: int | None = None,
                 log_tail: tuple[str, ...] = ()):
        self.node = node
        self.host = host
        self.reason = reason
        self.exit_code = exit_code
        self.log_tail = tuple(log_tail)
        tail = "\n".join(f"    {line}" for line in self.log_tail) or "    (no output)"
        # Without a host, ``node`` names what failed for every node (the node stage's job).
        where = f"node {node} on host {host}" if host else node
        super().__init__(f"{where} failed: {reason}\n  last lines of its output:\n{tail}")


class ShutdownTimeout(TfosError):
    """Nodes were still running when ``shutdown`` reached its timeout; they were stopped."""


class AuthenticationError(TfosError):
    """A control message did not carry a valid signature of the cluster's secret."""


class FeedUsageError(TfosError, ValueError):
    """A DataFeed was used in a way that cannot work (wrong result count, unknown column...)."""


class ProtocolError(TfosError):
    """A control message could not be decoded (wrong version, type or shape)."""


class DriverUnreachable(TfosError):
    """A node task could not talk to the driver's control service."""


class FeedDataError(TfosError, ValueError):
    """A row of the fed data cannot be turned into a column (raised in a feed task, naming the
    partition, the row and the column)."""


class FeedFailed(TfosError):
    """A TF node refused or dropped a feed task's data."""


class FeedError(TfosError):
    """A node's feed cannot deliver data (a record larger than the buffer, nothing arriving)."""


class FeedJobFailed(TfosError):
    """A Spark feed job of ``train()`` failed for a reason other than the cluster stopping."""


class TFRecordError(TfosError):
    """A TFRecord file is corrupt or truncated (the message names the file and byte offset)."""
