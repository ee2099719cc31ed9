"""The tfos tensor transport: one comm interface over the schemes tcp://, shm:// and rdma://.

``listen(uri, secret)`` / ``connect(uri, secret, timeout)`` give ``Comm`` objects that carry
whole messages both ways (rdma.comm); ``rdma.peer`` picks the scheme for a peer (same host:
``shm://``, otherwise ``tcp://``) and formats addresses; ``rdma.devices`` tells whether this host
can do RDMA.
"""
from rdma import peer
from rdma.comm import Backend, Comm, CommOptions, Listener, connect, listen, register_backend
from rdma.errors import (AuthFailed, CommClosed, CommError, CommTimeout, ConnectFailed,
                         FrameError, TransportUnavailable)

__all__ = ["peer", "Comm", "Listener", "Backend", "CommOptions", "listen", "connect",
           "register_backend", "CommError", "CommClosed", "CommTimeout", "AuthFailed",
           "FrameError", "ConnectFailed", "TransportUnavailable"]
