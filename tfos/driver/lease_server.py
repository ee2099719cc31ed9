"""Where each feed task's chunks go: the driver's lease endpoint (driver side).

A feed task of ``train()`` asks, chunk by chunk, which workers take the rows it holds
(``tfos.core.feed_plan``). That is one small question per chunk, so it has a connection of its
own to this endpoint (``rdma.comm`` over TCP, authenticated with the cluster's secret: about
a tenth of a millisecond a question, where a control-plane gRPC call cost half a millisecond of
the task's CPU). The feed task sends ``Lease`` and, while its rows become columns, the
answer (``Grant``) comes back.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from rdma import comm as rdma_comm
from rdma import peer
from tfos.core import feed_codec
from tfos.core import feed_messages as fm
from tfos.core.errors import ProtocolError
from tfos.core.runtime import listen_host

logger = logging.getLogger(__name__)


class LeaseServer:
    """Answers feed tasks' ``Lease`` messages with ``grant(lease)``, on ``host`` (every
    interface with ``bind_all``); ``address`` is what the feed tasks connect to."""

    def __init__(self, host: str, secret: bytes, grant: Callable[[fm.Lease], fm.Grant],
                 bind_all: bool = False):
        self._grant = grant
        self._closed = threading.Event()
        self._listener = rdma_comm.listen(peer.format_tcp(listen_host(host, bind_all), 0), secret)
        self.address = peer.advertise(self._listener.address, host)
        threading.Thread(target=peer.serve_each,
                         args=(self._listener, self._serve, self._closed, "tfos-lease", logger),
                         daemon=True, name="tfos-lease-accept").start()

    def _serve(self, conn) -> None:
        with conn:
            while not self._closed.is_set():
                try:
                    lease, _ = feed_codec.decode(conn.recv(), (fm.Lease,), "lease")
                except rdma_comm.CommClosed:
                    return
                except (ProtocolError, rdma_comm.CommError) as exc:
                    logger.error("lease connection from %s failed: %s", conn.peer_address, exc)
                    return
                conn.send(feed_codec.encode(self._grant(lease)))

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
