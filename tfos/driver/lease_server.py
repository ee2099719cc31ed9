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
        bind = listen_host(host, bind_all)
        self._listener = rdma_comm.listen(
            f"tcp://[{bind}]:0" if ":" in bind else f"tcp://{bind}:0", secret)
        port = self._listener.address.rsplit(":", 1)[1]
        self.address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        threading.Thread(target=self._accept, daemon=True, name="tfos-lease-accept").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except rdma_comm.CommClosed:
                return
            except rdma_comm.CommError as exc:
                if not self._closed.is_set():
                    logger.warning("lease endpoint refused a connection: %s", exc)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="tfos-lease").start()

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
