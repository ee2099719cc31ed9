"""Errors of the tensor transport (both ends of every comm: feeder, TF node, anyone).

Every failure of a comm derives from :class:`CommError`. Messages name the address involved and
what to check. Caller mistakes (a malformed URI, an unknown option, a buffer that is not
C-contiguous) raise ``ValueError``/``TypeError`` instead: they are bugs, not transport failures.
"""
from __future__ import annotations


class CommError(Exception):
    """Base class of every transport failure."""


class CommClosed(CommError):
    """The connection is gone: closed by either side, reset, or the peer process died."""


class CommTimeout(CommError):
    """A bounded wait ran out (connect, handshake, backpressure on send, nothing to receive)."""


class AuthFailed(CommError):
    """The handshake failed: different secrets, a peer that is not a tfos comm, or garbage."""


class FrameError(CommError):
    """Bytes that break the framing rules, or a message too large for a limit or a buffer."""


class ConnectFailed(CommError):
    """Nothing accepts connections at the address (refused, no socket file, unreachable)."""


class TransportUnavailable(CommError):
    """The scheme exists but cannot work on this host (``rdma://`` with no RDMA device)."""
