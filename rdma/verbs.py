"""``rdma://host:port``: the RDMA verbs backend, imported only when that scheme is used.

Importing this module is the check: on a host without an active RDMA port, or without the
compiled verbs extension (``rdma._verbs``, an optional extra), it raises TransportUnavailable
naming what is missing. It never falls back to TCP: a job that asked for RDMA and silently got
TCP would report numbers that are not what was asked for.
"""
from __future__ import annotations

import socket

from rdma import devices
from rdma.errors import TransportUnavailable

_missing = devices.missing_rdma()
if _missing:
    raise TransportUnavailable(
        f"rdma:// on host {socket.gethostname()}: {_missing}. Use tcp:// (or shm:// on one "
        "host) explicitly; tfos never falls back from rdma:// on its own")

try:
    from rdma import _verbs  # the compiled extension (optional extra)
except ImportError as error:
    raise TransportUnavailable(
        f"rdma:// on host {socket.gethostname()}: an RDMA device is present, but the compiled "
        f"verbs extension rdma._verbs is not installed ({error}); build it against "
        "libibverbs (rdma-core) or use tcp://") from None

backend = _verbs.backend
